"""Backends a latency is measured on: ``torch`` (eager CPU), ``torch:parallel`` (TorchScript
with the independent ops of a cell forked onto torch's inter-op threads), ``onnxruntime`` (CPU
execution provider, sequential or parallel execution mode) and ``cuda`` (CUDA events).

Which backends really overlap branches: ``torch:parallel`` does (two independent 3-conv
branches ran 1.99x faster than one after the other on 2 cores). onnxruntime's parallel
mode does not on CPU since 1.14 (microsoft/onnxruntime#16158: two 8 ms branches took 16.2 ms),
so it is kept for completeness and measured, not assumed (:attr:`LatencyTable.parallel_speedup`).

A backend turns a model into a :class:`Runner`: an object that runs the model ``n`` times and
returns the ``n`` times in milliseconds. The timing harness (:mod:`nasforge.hardware.timing`)
only ever talks to runners, so every backend gets the same warm-up, interleaving, outlier
handling and statistics.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import io
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nasforge.errors import NasforgeError

BACKENDS = ("torch", "onnxruntime", "cuda")
EXECUTION_MODES = ("sequential", "parallel")
_ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "gpu": "cuda", "cpu": "torch"}


class BackendError(NasforgeError):
    """A backend name or option is invalid, or the backend is not available here."""


@dataclass(frozen=True)
class BackendSpec:
    """Where and how a model is timed.

    Args:
        name: ``torch``, ``onnxruntime`` or ``cuda``.
        threads: threads pinned for the measurement (intra-op threads in sequential mode;
            inter-op threads in parallel mode, where each op then runs on one thread so that
            independent branches run side by side).
        execution_mode: ``sequential`` or ``parallel`` (``torch`` and ``onnxruntime``).
        fold_bn: fold batch norm into the preceding conv before timing (what is deployed;
            the onnxruntime exporter folds it anyway).
        allow_spinning: onnxruntime only. Spinning idle threads steal cores from whatever
            else runs, so it is off unless asked for.
    """

    name: str = "torch"
    threads: int = 1
    execution_mode: str = "sequential"
    fold_bn: bool = True
    allow_spinning: bool = False

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise BackendError(
                f"backend: unknown backend {self.name!r}; expected one of {', '.join(BACKENDS)}"
            )
        if self.execution_mode not in EXECUTION_MODES:
            raise BackendError(
                f"backend.execution_mode: {self.execution_mode!r} is not one of "
                f"{', '.join(EXECUTION_MODES)}"
            )
        if self.execution_mode == "parallel" and self.name == "cuda":
            raise BackendError(
                "backend.execution_mode: 'parallel' exists for torch and onnxruntime, not cuda"
            )
        if int(self.threads) < 1:
            raise BackendError(f"backend.threads: must be >= 1, got {self.threads}")

    @classmethod
    def parse(cls, text: str, threads: int = 1) -> BackendSpec:
        """``torch``, ``torch:parallel``, ``onnxruntime``, ``onnxruntime:parallel`` (also
        ``ort``), ``cuda``."""
        name, _, mode = str(text).strip().lower().partition(":")
        name = _ALIASES.get(name, name)
        return cls(name=name, threads=threads, execution_mode=mode or "sequential")

    @property
    def label(self) -> str:
        """``torch``, ``torch:parallel``, ``onnxruntime``, ``onnxruntime:parallel`` or ``cuda``."""
        return f"{self.name}:parallel" if self.execution_mode == "parallel" else self.name

    @property
    def parallel(self) -> bool:
        return self.execution_mode == "parallel"

    @property
    def single_threaded(self) -> bool:
        """All work runs on the calling thread, so its CPU time is the compute latency."""
        return self.name != "cuda" and self.threads == 1 and not self.parallel

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threads": self.threads,
            "execution_mode": self.execution_mode,
            "fold_bn": self.fold_bn,
            "allow_spinning": self.allow_spinning,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackendSpec:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def as_backend(backend: str | BackendSpec, threads: int | None = None) -> BackendSpec:
    """Accept a spec or a name (``threads`` defaults to torch's current count for names)."""
    if isinstance(backend, BackendSpec):
        return backend
    return BackendSpec.parse(
        backend, threads=threads if threads is not None else torch.get_num_threads()
    )


# -- runners ------------------------------------------------------------------------------------
Samples = tuple[list[float], list[float]]  # (wall ms, CPU ms of the calling thread) per call


class Runner:
    """Runs one prepared model; :meth:`run` times ``n`` calls.

    Returns two lists in milliseconds: wall-clock time and the calling thread's CPU time per
    call (CPU time is ``nan`` where work runs elsewhere, e.g. on a GPU). Subclasses override
    :meth:`run` where wall-clock time is wrong (CUDA). ``close`` frees what the runner holds
    (sessions, device memory).
    """

    def __init__(self, fn: Callable[[], Any], name: str = "") -> None:
        self._fn = fn
        self.name = name

    def run(self, n: int) -> Samples:
        fn, wall, cpu = self._fn, time.perf_counter, time.thread_time
        walls, cpus = [], []
        for _ in range(n):
            c0 = cpu()
            t0 = wall()
            fn()
            t1 = wall()
            c1 = cpu()
            walls.append((t1 - t0) * 1e3)
            cpus.append((c1 - c0) * 1e3)
        return walls, cpus

    def close(self) -> None:
        self._fn = _noop


def _noop() -> None:
    return None


class _TorchRunner(Runner):
    def run(self, n: int) -> Samples:
        with torch.inference_mode():
            return super().run(n)


class _CudaRunner(Runner):
    """Times with CUDA events recorded around each call; synchronises once per batch of calls."""

    def run(self, n: int) -> Samples:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        with torch.inference_mode():
            for s, e in zip(starts, ends):
                s.record()
                self._fn()
                e.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)], [float("nan")] * n

    def close(self) -> None:
        super().close()
        torch.cuda.empty_cache()


def example_input(input_shape: Sequence[int], batch_size: int, seed: int = 0) -> torch.Tensor:
    """The seeded random input every backend times with."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *[int(s) for s in input_shape], generator=gen)


def prepare_model(model: nn.Module, spec: BackendSpec) -> nn.Module:
    """Eval mode and (if ``spec.fold_bn``) a BN-folded copy; the caller's model is not mutated."""
    from nasforge.nn.fuse import fuse_bn

    if spec.fold_bn:
        return fuse_bn(model)
    model = copy.deepcopy(model)
    return model.eval()


def export_onnx_bytes(
    model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, opset: int = 17
) -> bytes:
    """Serialise ``model`` (eval mode) to ONNX with the TorchScript exporter, in memory."""
    x = example_input(input_shape, batch_size)
    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                buf,  # type: ignore[arg-type]
                input_names=["x"],
                output_names=["y"],
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    return buf.getvalue()


def ort_session_options(spec: BackendSpec) -> Any:
    """Session options for ``spec``: threads pinned, spinning off, execution mode set."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if spec.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if spec.parallel:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        so.inter_op_num_threads = spec.threads
        so.intra_op_num_threads = 1
    else:
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = spec.threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def cuda_available() -> bool:
    return torch.cuda.is_available()


def make_runner(
    model: nn.Module | None,
    input_shape: Sequence[int],
    batch_size: int,
    spec: BackendSpec,
    onnx_bytes: bytes | None = None,
    name: str = "",
) -> Runner:
    """Prepare ``model`` on ``spec``'s backend and return its :class:`Runner`.

    For onnxruntime, ``onnx_bytes`` (from :func:`export_onnx_bytes` on the prepared model) may
    be passed to skip the export; ``model`` may then be ``None``.

    Raises:
        BackendError: the backend is not usable here (no onnxruntime, no CUDA).
    """
    if spec.name == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(
                "backend onnxruntime: the onnxruntime package is not installed"
            ) from None
        if onnx_bytes is None:
            if model is None:
                raise ValueError("make_runner needs a model or onnx_bytes")
            onnx_bytes = export_onnx_bytes(prepare_model(model, spec), input_shape, batch_size)
        sess = ort.InferenceSession(
            onnx_bytes, ort_session_options(spec), providers=["CPUExecutionProvider"]
        )
        feeds = {sess.get_inputs()[0].name: example_input(input_shape, batch_size).numpy()}
        run = sess.run
        return Runner(lambda: run(None, feeds), name)
    if model is None:
        raise ValueError("make_runner needs a model for the torch and cuda backends")
    prepared = prepare_model(model, spec)
    x = example_input(input_shape, batch_size)
    if spec.name == "cuda":
        if not cuda_available():
            raise BackendError("backend cuda: no CUDA device is available on this machine")
        prepared = prepared.cuda()
        xc = x.cuda()
        return _CudaRunner(lambda: prepared(xc), name)
    if spec.parallel:
        traced = trace_with_forks(prepared, x, spec.threads)
        return _TorchRunner(lambda: traced(x), name)
    return _TorchRunner(lambda: prepared(x), name)


def ensure_interop_threads(n: int) -> int:
    """Size torch's inter-op pool (which runs forked branches) to ``n`` threads.

    torch lets the pool be sized once per process, before its first use; a later, different
    request is a :class:`BackendError` that says how to get the size wanted.
    """
    have = torch.get_num_interop_threads()
    if have == n:
        return have
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:
        raise BackendError(
            f"backend torch:parallel: torch's inter-op pool already has {have} "
            f"threads in this process and cannot be resized to {n}; use "
            f"threads={have}, or measure in a fresh process"
        ) from None
    return torch.get_num_interop_threads()


@functools.cache
def _drain_pool_at_exit() -> None:
    """Give the inter-op threads a moment at exit (registered once).

    A pool thread drops its finished task *after* the task's future completes; the task holds
    tensors, and dropping one that Python also references takes the GIL. If the interpreter
    is already finalizing, CPython ends that thread inside a noexcept destructor and the
    process aborts ("terminate called without an active exception", seen in 1 of 3 exits of
    a script that forks on torch 2.13). Sleeping 50 ms at exit, before finalization, lets the
    threads finish dropping their tasks.
    """
    atexit.register(time.sleep, 0.05)


def trace_with_forks(model: nn.Module, x: torch.Tensor, threads: int) -> nn.Module:
    """``model`` traced to TorchScript with every cell's ops forked (see
    :func:`nasforge.nn.cells.enable_branch_forks`); the forks run on ``threads`` inter-op
    threads. A model without cells is traced as is (nothing to overlap)."""
    from nasforge.nn.cells import enable_branch_forks

    ensure_interop_threads(threads)
    _drain_pool_at_exit()
    model = copy.deepcopy(model).eval()
    enable_branch_forks(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, x, check_trace=False)


@contextlib.contextmanager
def pinned_threads(spec: BackendSpec) -> Iterator[int]:
    """Pin torch's intra-op threads to ``spec.threads`` for the block (to 1 in parallel mode,
    where ``spec.threads`` is the inter-op pool); yields the intra-op count."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1 if spec.parallel else spec.threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(prev)
