"""The backend interface and its registry: what a latency target must provide, by name.

A backend turns a model into a :class:`Runner`: an object that runs the model ``n`` times and
returns the ``n`` times in milliseconds. The timing harness (:mod:`nasforge.hardware.timing`)
only ever talks to runners, so every backend gets the same warm-up, interleaving, outlier
handling and statistics.

A new target is one :class:`Backend` subclass and one :func:`register_backend` call; a
:class:`BackendSpec` (and so every config, table and CLI option) then accepts its name. The
built-in backends (``torch``, ``torch:parallel``, ``onnxruntime``, ``onnxruntime:parallel``,
``cuda``) are registered by :mod:`nasforge.hardware.backends`, which importing
:mod:`nasforge.hardware` always does first.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import difflib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nasforge.errors import NasforgeError, RegistrationError
from nasforge.nn.fuse import fuse_bn

#: modes a backend name may carry after a colon (``torch:parallel``)
SEQUENTIAL = "sequential"
Samples = tuple[list[float], list[float]]  # (wall ms, CPU ms of the calling thread) per call


class BackendError(NasforgeError):
    """A backend name or option is invalid, or the backend is not available here."""


# -- runners ------------------------------------------------------------------------------------
class Runner:
    """Runs one prepared model; :meth:`run` times ``n`` calls.

    Returns two lists in milliseconds: wall-clock time and the calling thread's CPU time per
    call (CPU time is ``nan`` where work runs elsewhere, e.g. on a GPU). Subclasses override
    :meth:`run` where wall-clock time is wrong (CUDA). ``close`` frees what the runner holds
    (sessions, device memory); the harness calls it once, after the last :meth:`run`.
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


def example_input(input_shape: Sequence[int], batch_size: int, seed: int = 0) -> torch.Tensor:
    """The seeded random input every backend times with."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *[int(s) for s in input_shape], generator=gen)


def prepare_model(model: nn.Module, spec: BackendSpec) -> nn.Module:
    """Eval mode and (if ``spec.fold_bn``) a BN-folded copy; the caller's model is not mutated."""
    if spec.fold_bn:
        return fuse_bn(model)
    return copy.deepcopy(model).eval()


# -- the interface ------------------------------------------------------------------------------
class Backend(abc.ABC):
    """A target that latency is measured on (modelled on Optuna's ``BaseSampler``).

    The harness uses a backend in this order, for every measurement:

    1. :meth:`single_threaded` when the clock is chosen
       (:meth:`~nasforge.hardware.timing.TimingConfig.resolve_clock`), before anything runs;
    2. :meth:`make_runner` once per model to time (or :meth:`runner_factory` once per model
       that is re-built on every visit, as latency-table entries are), inside
       :func:`pinned_threads`;
    3. ``Runner.run`` many times, interleaved with other models' runners, then ``close``.

    Subclasses implement the two abstract methods and may override the hooks
    (:meth:`prepare`, :meth:`runner_factory`, :meth:`check_spec`) and the class attributes.
    A backend holds no per-measurement state: one instance serves every :class:`BackendSpec`
    that names it (the spec carries threads and options).

    Attributes:
        name: the registered name (set by :func:`register_backend`).
        is_gpu: work runs on a CUDA device; the GPU's name then belongs to a table's identity.
        overlaps_branches: independent ops of a cell run side by side, each forked (table
            entries of cell ops are then timed forked, as the network runs them).
        chains_entries: table entries are timed as marginal costs in a chain of copies by
            default (``context="auto"``), because a lone layer is misleading here.
    """

    name: str = ""
    is_gpu: bool = False
    overlaps_branches: bool = False
    chains_entries: bool = False

    @abc.abstractmethod
    def make_runner(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        batch_size: int,
        spec: BackendSpec,
        name: str = "",
    ) -> Runner:
        """Prepare ``model`` (not mutated) for this target and return its runner.

        Called once per model about to be timed, with torch's threads already pinned for
        ``spec``; the runner feeds :func:`example_input` of ``(batch_size, *input_shape)``.

        Raises:
            BackendError: the backend is not usable on this machine (library, device).
        """

    @abc.abstractmethod
    def single_threaded(self, spec: BackendSpec) -> bool:
        """Whether all work of one call runs on the calling thread under ``spec``.

        Called when the clock is chosen: exactly then the calling thread's CPU time is the
        compute latency (immune to other tenants), so ``clock="auto"`` uses it and
        ``clock="cpu"`` is allowed; otherwise the wall clock is used.
        """

    def clock(self, spec: BackendSpec, requested: str) -> str:
        """The clock used for ``requested`` (``auto``, ``wall`` or ``cpu``) on ``spec``.

        Raises:
            BackendError: ``cpu`` was requested where work leaves the calling thread.
        """
        cpu_valid = self.single_threaded(spec)
        if requested == "cpu" and not cpu_valid:
            raise BackendError(
                f"timing.clock: 'cpu' needs one thread on the calling thread; "
                f"{spec.label} with {spec.threads} thread(s) uses the wall clock"
            )
        if requested == "auto":
            return "cpu" if cpu_valid else "wall"
        return requested

    def prepare(self, model: nn.Module, spec: BackendSpec) -> nn.Module:
        """Hook: the module this backend runs for ``model`` (default: eval-mode copy, BN folded
        if ``spec.fold_bn``). ``model`` must not be mutated."""
        return prepare_model(model, spec)

    def runner_factory(
        self,
        build: Callable[[], nn.Module],
        input_shape: Sequence[int],
        batch_size: int,
        spec: BackendSpec,
    ) -> Callable[[], Runner]:
        """Hook: a function making a fresh runner per harness visit of the model ``build``
        makes (used for table entries, timed without holding all of them at once).

        Called once per model; the default builds the model afresh on every visit. A backend
        with an expensive compile step (onnxruntime's export) does that step once here.
        """
        return lambda: self.make_runner(build(), input_shape, batch_size, spec)

    def check_spec(self, spec: BackendSpec) -> None:
        """Hook: called when a :class:`BackendSpec` naming this backend is made; raise
        :class:`BackendError` naming the field for options the backend cannot honour
        (default: every option is accepted)."""
        return None


# -- registry -----------------------------------------------------------------------------------
_REGISTRY: dict[str, Backend] = {}
_ALIASES: dict[str, str] = {}
_NAME = re.compile(r"[a-z0-9_-]+(:[a-z0-9_-]+)?")


def _canonical(name: str) -> str:
    base, sep, mode = str(name).strip().lower().partition(":")
    base = _ALIASES.get(base, base)
    return f"{base}{sep}{mode}" if mode and mode != SEQUENTIAL else base


def register_backend(
    name: str,
    backend: Backend | type[Backend],
    *,
    aliases: Sequence[str] = (),
    replace: bool = False,
) -> Backend:
    """Make ``backend`` selectable as ``name`` everywhere a backend is named.

    Args:
        name: ``base`` or ``base:mode`` (e.g. ``torch:parallel``), lower case; the part after
            the colon becomes :attr:`BackendSpec.execution_mode`.
        backend: a :class:`Backend` instance, or a subclass constructible without arguments.
        aliases: other names of the base (``ort`` for ``onnxruntime``).
        replace: allow replacing a backend registered under the same name.

    Returns:
        The registered instance (its ``name`` set to ``name``).

    Raises:
        RegistrationError: ``backend`` is not a Backend, the name is malformed, or taken.
    """
    key = str(name).strip().lower()
    base, _, mode = key.partition(":")
    if not _NAME.fullmatch(key) or mode == SEQUENTIAL:
        raise RegistrationError(
            f"register_backend: name {name!r} must be 'base' or 'base:mode' "
            "(letters, digits, '_' or '-')"
        )
    instance = backend() if isinstance(backend, type) else backend
    if not isinstance(instance, Backend):
        raise RegistrationError(
            f"register_backend {key!r}: {backend!r} is not a nasforge.hardware.Backend "
            "(subclass it and implement make_runner and single_threaded)"
        )
    if key in _REGISTRY and not replace:
        raise RegistrationError(
            f"register_backend: {key!r} is already registered; pass replace=True to replace it"
        )
    instance.name = key
    _REGISTRY[key] = instance
    for alias in aliases:
        _ALIASES[str(alias).strip().lower()] = base
    return instance


def list_backends() -> list[str]:
    """Registered backend names, sorted (``torch``, ``torch:parallel``, ...)."""
    return sorted(_REGISTRY)


def _unknown(name: str, known: Sequence[str], what: str = "backend") -> BackendError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return BackendError(f"{what}: unknown backend {name!r}{hint}; registered: {', '.join(known)}")


def get_backend(name: str) -> Backend:
    """The backend registered as ``name`` (aliases and ``:sequential`` accepted).

    Raises:
        BackendError: nothing is registered under that name (lists what is).
    """
    key = _canonical(name)
    try:
        return _REGISTRY[key]
    except KeyError:
        raise _unknown(str(name), list_backends()) from None


# -- specs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendSpec:
    """Where and how a model is timed.

    Args:
        name: a registered backend's base name (``torch``, ``onnxruntime``, ``cuda``, or one
            a plugin registered).
        threads: threads pinned for the measurement (intra-op threads in sequential mode;
            inter-op threads in parallel mode, where each op then runs on one thread so that
            independent branches run side by side).
        execution_mode: ``sequential`` or the part after the colon of a registered name
            (``parallel`` for ``torch:parallel`` and ``onnxruntime:parallel``).
        fold_bn: fold batch norm into the preceding conv before timing (what is deployed;
            the onnxruntime exporter folds it anyway).
        allow_spinning: onnxruntime only. Spinning idle threads steal cores from whatever
            else runs, so it is off unless asked for.

    Raises:
        BackendError: the name or mode is not registered, or ``threads < 1`` (names the field).
    """

    name: str = "torch"
    threads: int = 1
    execution_mode: str = SEQUENTIAL
    fold_bn: bool = True
    allow_spinning: bool = False

    def __post_init__(self) -> None:
        known = list_backends()
        bases = sorted({k.partition(":")[0] for k in known})
        if self.name not in bases:
            raise _unknown(self.name, known)
        if self.label not in _REGISTRY:
            modes = [k for k in known if k.partition(":")[0] == self.name]
            raise BackendError(
                f"backend.execution_mode: {self.execution_mode!r} is not available for "
                f"{self.name}; registered: {', '.join(modes)}"
            )
        if int(self.threads) < 1:
            raise BackendError(f"backend.threads: must be >= 1, got {self.threads}")
        self.backend.check_spec(self)

    @classmethod
    def parse(cls, text: str, threads: int = 1) -> BackendSpec:
        """Any registered name: ``torch``, ``torch:parallel``, ``onnxruntime``,
        ``onnxruntime:parallel`` (also ``ort``), ``cuda``, or a plugin's."""
        name, _, mode = str(text).strip().lower().partition(":")
        name = _ALIASES.get(name, name)
        return cls(name=name, threads=threads, execution_mode=mode or SEQUENTIAL)

    @property
    def label(self) -> str:
        """The registered name: ``torch``, ``torch:parallel``, ``onnxruntime``, ...."""
        if self.execution_mode == SEQUENTIAL:
            return self.name
        return f"{self.name}:{self.execution_mode}"

    @property
    def backend(self) -> Backend:
        """The registered :class:`Backend` this spec names."""
        return get_backend(self.label)

    @property
    def parallel(self) -> bool:
        """Parallel execution mode: one thread per op, ``threads`` ops side by side."""
        return self.execution_mode == "parallel"

    @property
    def is_gpu(self) -> bool:
        """The backend runs on a CUDA device (see :attr:`Backend.is_gpu`)."""
        return self.backend.is_gpu

    @property
    def single_threaded(self) -> bool:
        """All work runs on the calling thread, so its CPU time is the compute latency."""
        return self.backend.single_threaded(self)

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


def make_runner(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    spec: BackendSpec,
    name: str = "",
) -> Runner:
    """``spec``'s backend's runner for ``model`` (see :meth:`Backend.make_runner`)."""
    return spec.backend.make_runner(model, input_shape, batch_size, spec, name)


@contextlib.contextmanager
def threads_pinned(threads: int) -> Iterator[int]:
    """Pin torch's intra-op threads to ``threads`` for the block; yields the count set."""
    prev = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(prev)


@contextlib.contextmanager
def pinned_threads(spec: BackendSpec) -> Iterator[int]:
    """Pin torch's intra-op threads to ``spec.threads`` for the block (to 1 in parallel mode,
    where ``spec.threads`` is the inter-op pool); yields the intra-op count."""
    with threads_pinned(1 if spec.parallel else spec.threads) as n:
        yield n
