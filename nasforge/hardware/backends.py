"""The built-in backends, registered by name: ``torch`` (eager CPU), ``torch:parallel``
(TorchScript with the independent ops of a cell forked onto torch's inter-op threads),
``onnxruntime`` and ``onnxruntime:parallel`` (CPU execution provider, sequential or parallel
execution mode) and ``cuda`` (CUDA events).

Which backends really overlap branches: ``torch:parallel`` does (two independent 3-conv
branches ran 1.99x faster than one after the other on 2 cores). onnxruntime's parallel
mode does not on CPU since 1.14 (microsoft/onnxruntime#16158: two 8 ms branches took 16.2 ms),
so it is kept for completeness and measured, not assumed (:attr:`LatencyTable.parallel_speedup`).

The interface, the registry and :class:`BackendSpec` live in
:mod:`nasforge.hardware.backend_base` and are re-exported here; a new backend is a
:class:`Backend` subclass and one :func:`register_backend` call.
"""

from __future__ import annotations

import atexit
import copy
import functools
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from nasforge.hardware.backend_base import (
    Backend,
    BackendError,
    BackendSpec,
    Runner,
    Samples,
    as_backend,
    example_input,
    get_backend,
    list_backends,
    make_runner,
    pinned_threads,
    prepare_model,
    register_backend,
    threads_pinned,
)
from nasforge.hardware.onnx import export_onnx, ort_session, ort_session_options
from nasforge.nn.cells import enable_branch_forks

__all__ = [
    "Backend",
    "BackendError",
    "BackendSpec",
    "CudaBackend",
    "OnnxRuntimeBackend",
    "Runner",
    "Samples",
    "TorchBackend",
    "TorchParallelBackend",
    "as_backend",
    "cuda_available",
    "ensure_interop_threads",
    "example_input",
    "export_onnx_bytes",
    "get_backend",
    "list_backends",
    "make_runner",
    "ort_session_options",
    "pinned_threads",
    "prepare_model",
    "register_backend",
    "threads_pinned",
    "trace_with_forks",
]


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


class TorchBackend(Backend):
    """``torch``: the prepared module, eager, on the CPU, ``spec.threads`` intra-op threads."""

    def make_runner(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        batch_size: int,
        spec: BackendSpec,
        name: str = "",
    ) -> Runner:
        prepared = self.prepare(model, spec)
        x = example_input(input_shape, batch_size)
        return _TorchRunner(lambda: prepared(x), name)

    def single_threaded(self, spec: BackendSpec) -> bool:
        return spec.threads == 1


class TorchParallelBackend(TorchBackend):
    """``torch:parallel``: traced to TorchScript with every cell's ops forked onto
    ``spec.threads`` inter-op threads (see :func:`trace_with_forks`)."""

    overlaps_branches = True
    chains_entries = True  # a lone fork pays for waking a pool thread (see entries.py)

    def make_runner(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        batch_size: int,
        spec: BackendSpec,
        name: str = "",
    ) -> Runner:
        x = example_input(input_shape, batch_size)
        traced = trace_with_forks(self.prepare(model, spec), x, spec.threads)
        return _TorchRunner(lambda: traced(x), name)

    def single_threaded(self, spec: BackendSpec) -> bool:
        return False


class OnnxRuntimeBackend(Backend):
    """``onnxruntime``: exported with :func:`~nasforge.hardware.onnx.export_onnx` (fixed batch)
    and run in a session from :func:`~nasforge.hardware.onnx.ort_session` (threads pinned,
    spinning off unless ``spec.allow_spinning``). Registered twice: sequential and parallel
    execution mode."""

    # The graph optimiser changes layouts at a graph's edges and fuses ops into neighbours,
    # so a lone layer misleads; see entries.py.
    chains_entries = True

    def export(
        self, model: nn.Module, input_shape: Sequence[int], batch_size: int, spec: BackendSpec
    ) -> bytes:
        """ONNX bytes of the prepared ``model`` at a fixed batch size."""
        return export_onnx(self.prepare(model, spec), input_shape, batch_size=batch_size)

    def session_runner(
        self,
        onnx_bytes: bytes,
        input_shape: Sequence[int],
        batch_size: int,
        spec: BackendSpec,
        name: str = "",
    ) -> Runner:
        """A runner on a fresh session of already exported ``onnx_bytes``."""
        sess = ort_session(onnx_bytes, spec)
        feeds = {sess.get_inputs()[0].name: example_input(input_shape, batch_size).numpy()}
        run = sess.run
        return Runner(lambda: run(None, feeds), name)

    def make_runner(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        batch_size: int,
        spec: BackendSpec,
        name: str = "",
    ) -> Runner:
        return self.session_runner(
            self.export(model, input_shape, batch_size, spec), input_shape, batch_size, spec, name
        )

    def runner_factory(
        self,
        build: Callable[[], nn.Module],
        input_shape: Sequence[int],
        batch_size: int,
        spec: BackendSpec,
    ) -> Callable[[], Runner]:
        """Exports once, on the first visit; every visit opens a fresh session."""
        exported: list[bytes] = []

        def make() -> Runner:
            if not exported:
                exported.append(self.export(build(), input_shape, batch_size, spec))
            return self.session_runner(exported[0], input_shape, batch_size, spec)

        return make

    def single_threaded(self, spec: BackendSpec) -> bool:
        return spec.threads == 1 and not spec.parallel


def cuda_available() -> bool:
    return torch.cuda.is_available()


class CudaBackend(Backend):
    """``cuda``: the prepared module on the first CUDA device, timed with CUDA events."""

    is_gpu = True

    def make_runner(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        batch_size: int,
        spec: BackendSpec,
        name: str = "",
    ) -> Runner:
        if not cuda_available():
            raise BackendError("backend cuda: no CUDA device is available on this machine")
        prepared = self.prepare(model, spec).cuda()
        xc = example_input(input_shape, batch_size).cuda()
        return _CudaRunner(lambda: prepared(xc), name)

    def single_threaded(self, spec: BackendSpec) -> bool:
        return False


def export_onnx_bytes(
    model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, opset: int = 17
) -> bytes:
    """Old name of :func:`~nasforge.hardware.onnx.export_onnx` at a fixed batch size."""
    return export_onnx(model, input_shape, batch_size=batch_size, opset=opset)


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
    ensure_interop_threads(threads)
    _drain_pool_at_exit()
    model = copy.deepcopy(model).eval()
    enable_branch_forks(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, x, check_trace=False)


register_backend("torch", TorchBackend, aliases=("cpu",))
register_backend("torch:parallel", TorchParallelBackend)
register_backend("onnxruntime", OnnxRuntimeBackend, aliases=("ort", "onnx"))
register_backend("onnxruntime:parallel", OnnxRuntimeBackend)
register_backend("cuda", CudaBackend, aliases=("gpu",))
