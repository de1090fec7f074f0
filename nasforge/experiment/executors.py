"""Where trials run: ``inline`` (this process), ``process`` (a local pool, the default),
``ray`` (tasks on a Ray cluster). All take a picklable payload and return futures.

Workers never write the store: they return results to the one process that holds the run's
lock. No worker outlives its run: :meth:`Executor.terminate` stops running trials at once
(SIGINT/SIGTERM to the search), pool workers ignore SIGINT (a Ctrl-C in a terminal reaches
the whole process group; the main process decides) and, on Linux, are killed by the kernel
when the main process dies, even by ``kill -9``.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from nasforge.errors import ConfigError, TrainingDiverged

_EVALUATORS: dict[str, Any] = {}


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux); exit now if the
    parent is already gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):  # no prctl: the pool's own shutdown still applies
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _init_worker(threads: int, parent_pid: int | None = None) -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    torch.set_num_threads(threads)


def evaluate_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Evaluate one trial; runs in whichever process the executor chose.

    ``payload["budget"]`` (a multi-fidelity trial: ``{"epochs", "data_fraction"}``) reaches
    the evaluator as a :class:`~nasforge.evaluators.base.Fidelity`; without it the
    evaluator's own default budget applies.

    The evaluator (dataset, space) is built once per process and cached. Exceptions become
    ``{"ok": False, "error": ...}`` so the search records the trial as failed and goes on.
    """
    import time

    from nasforge.evaluators.base import Fidelity
    from nasforge.experiment.config import parse_config
    from nasforge.experiment.setup import make_evaluator
    from nasforge.space import Arch

    t0 = time.perf_counter()
    try:
        key = payload["config_json"] + "|" + str(payload.get("run_dir"))
        ev = _EVALUATORS.get(key)
        if ev is None:
            cfg = parse_config(__import__("json").loads(payload["config_json"]))
            ev = make_evaluator(cfg, payload.get("run_dir"))
            _EVALUATORS.clear()
            _EVALUATORS[key] = ev
        arch = Arch.from_json(payload["arch_json"])
        # a multi-fidelity trial's budget (epochs, data fraction); inline, process and ray alike
        budget = payload.get("budget")
        fidelity: Any = Fidelity(**budget) if budget else None  # Evaluator.evaluate's budget
        result = ev.evaluate(arch, fidelity)
        return {
            "ok": True,
            "metrics": result.metrics,
            "cost_seconds": result.cost_seconds,
            "info": result.info,
            "worker": f"{os.uname().nodename}:{os.getpid()}",
        }
    except TrainingDiverged as exc:
        error = f"TrainingDiverged: {exc}"
    except MemoryError:
        error = "MemoryError: out of memory while evaluating"
    except RuntimeError as exc:
        msg = str(exc)
        error = ("out of memory: " if "out of memory" in msg.lower() else "RuntimeError: ") + msg[
            :2000
        ]
    except Exception as exc:  # noqa: BLE001 - any failure of a candidate is recorded, not raised
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"[:4000]
    return {
        "ok": False,
        "error": error,
        "cost_seconds": time.perf_counter() - t0,
        "worker": f"{os.uname().nodename}:{os.getpid()}",
    }


class Executor:
    """``submit(payload) -> Future`` of :func:`evaluate_payload`'s dict; ``shutdown()``."""

    workers = 1

    def submit(self, payload: dict[str, Any]) -> Future:
        raise NotImplementedError

    def restart(self) -> None:
        """Recover after a worker died (out of memory, killed)."""

    def shutdown(self) -> None:
        """Wait for running trials, then release the workers (the normal end of a search)."""

    def terminate(self) -> None:
        """Stop at once: running trials are abandoned and the workers are gone on return
        (called when the search is interrupted)."""
        self.shutdown()


class InlineExecutor(Executor):
    """Trials in this process, one at a time, with the workers' torch thread count.

    The thread count is pinned around each trial (and restored) because this process may
    have torch's default of one thread per core, which on a busy host trains several times
    slower than one thread (two threads wait at each barrier for the one that was preempted).
    """

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def submit(self, payload: dict[str, Any]) -> Future:
        import torch

        fut: Future = Future()
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            fut.set_result(evaluate_payload(payload))
        finally:
            torch.set_num_threads(prev)
        return fut


class ProcessExecutor(Executor):
    """A local pool of spawned processes (fork is unsafe with torch's threads)."""

    def __init__(self, workers: int = 1, threads: int = 1) -> None:
        self.workers = workers
        self.threads = threads
        self._pool = self._make()

    def _make(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads, os.getpid()),
        )

    def pids(self) -> list[int]:
        """The worker processes' PIDs (for tests and diagnostics)."""
        procs = getattr(self._pool, "_processes", None) or {}
        return [p.pid for p in procs.values() if p.pid is not None]

    def submit(self, payload: dict[str, Any]) -> Future:
        return self._pool.submit(evaluate_payload, payload)

    def restart(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._make()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def terminate(self) -> None:
        procs = list((getattr(self._pool, "_processes", None) or {}).values())
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(10)
        # the pool notices its dead workers; this joins its manager thread and queues
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor(Executor):
    """Trials as Ray tasks on the cluster at ``address`` (``None`` starts a local one)."""

    def __init__(self, workers: int = 1, address: str | None = None, threads: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "search.executor: 'ray' needs the ray package (pip install 'nasforge[ray]')"
            ) from None
        self.workers = workers
        if not ray.is_initialized():
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
            )
        self._remote = ray.remote(num_cpus=threads)(evaluate_payload)
        self._refs: list[Any] = []

    def submit(self, payload: dict[str, Any]) -> Future:
        ref = self._remote.remote(payload)
        self._refs = [r for r in self._refs if not _ray_done(r)] + [ref]
        return ref.future()

    def shutdown(self) -> None:
        pass

    def terminate(self) -> None:
        """Cancel the running tasks (their worker processes are killed by Ray)."""
        import ray

        for ref in self._refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - a finished or lost task needs no cancelling
                pass
        self._refs = []


def _ray_done(ref: Any) -> bool:
    import ray

    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


def make_executor(
    kind: str, workers: int, threads: int, ray_address: str | None = None
) -> Executor:
    if kind == "inline":
        return InlineExecutor(threads)
    if kind == "process":
        return ProcessExecutor(workers, threads)
    if kind == "ray":
        return RayExecutor(workers, ray_address, threads)
    raise ConfigError(f"search.executor: expected inline, process or ray, got {kind!r}")
