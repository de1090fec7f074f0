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

    ``payload["dataset_ref"]`` (the ray executor's) is the driver's dataset in Ray's object
    store: the evaluator is built with it instead of loading the data here.

    ``payload["budget"]`` (a multi-fidelity trial: ``{"epochs", "data_fraction"}``) reaches
    the evaluator as a :class:`~nasforge.evaluators.base.Fidelity`; without it the
    evaluator's own default budget applies.

    ``payload["live"]`` (with ``"trial_id"`` and ``"run_dir"``) gives the evaluator a
    :class:`~nasforge.experiment.live_curves.LiveCurveReporter`: each finished epoch is
    appended to ``<run>/live/<trial_id>.jsonl`` while the trial trains, for the dashboard.
    Where the run directory is not reachable (a Ray worker on another node) nothing is
    written and the trial's curve shows when it finishes.

    The evaluator (dataset, space) is built once per process and cached. Exceptions become
    ``{"ok": False, "error": ...}`` so the search records the trial as failed and goes on.
    """
    import time

    from nasforge.evaluators.base import Fidelity
    from nasforge.experiment.config import parse_config
    from nasforge.experiment.live_curves import evaluate_with, payload_reporter
    from nasforge.experiment.setup import build_run, make_evaluator
    from nasforge.space import Arch

    t0 = time.perf_counter()
    try:
        key = payload["config_json"] + "|" + str(payload.get("run_dir"))
        ev = _EVALUATORS.get(key)
        if ev is None:
            cfg = parse_config(__import__("json").loads(payload["config_json"]))
            ref = payload.get("dataset_ref")  # the ray executor's: the driver's dataset
            run_dir = payload.get("run_dir")
            objects = None
            if ref is not None:
                import ray

                run_dir = node_run_dir(run_dir)
                objects = build_run(cfg, run_dir, dataset=ray.get(ref))
            ev = make_evaluator(cfg, run_dir, objects)
            _EVALUATORS.clear()
            _EVALUATORS[key] = ev
        arch = Arch.from_json(payload["arch_json"])
        # a multi-fidelity trial's budget (epochs, data fraction); inline, process and ray alike
        budget = payload.get("budget")
        fidelity: Any = Fidelity(**budget) if budget else None  # Evaluator.evaluate's budget
        # the loop's "live": each finished epoch goes to <run>/live/<trial>.jsonl for the
        # dashboard (only where the run directory is reachable from this process)
        result = evaluate_with(ev, arch, fidelity, payload_reporter(payload))
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


def node_run_dir(run_dir: str | None) -> str | None:
    """The run directory a Ray worker's evaluator uses: the run's own when it is on this
    machine (the driver's host, or a shared file system), else a directory of this node's
    own (its latency lock: trials on one node time one at a time), so a worker on another
    host never makes the driver's paths."""
    import hashlib
    import tempfile
    from pathlib import Path

    if run_dir is None or Path(run_dir).is_dir():
        return run_dir
    tag = hashlib.sha1(run_dir.encode()).hexdigest()[:12]  # noqa: S324 - a name, not security
    local = Path(tempfile.gettempdir()) / f"nasforge-run-{tag}"
    local.mkdir(parents=True, exist_ok=True)
    return str(local)


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
    """Trials as Ray tasks on the cluster at ``address`` (``auto``: the cluster this machine
    belongs to; ``None``: a local Ray started for the run).

    The task options and the data come from the config (the one source): ``config_json``
    (the payloads' config) prepares them before the first trial, else the first payload does:
    each task asks for ``search.ray_num_cpus`` CPUs (default ``latency.threads``) and
    ``search.ray_num_gpus`` GPUs; Ray re-runs a task whose node or worker process died up to
    ``search.ray_max_retries`` times, never one whose trial failed on its own
    (``retry_exceptions=False``; :func:`evaluate_payload` returns a trial's error as data
    anyway). The driver loads the dataset once and puts it in the object store once; every
    payload carries its ``ObjectRef``, so a worker process fetches it from the object store
    (a worker on another host needs no data files) and builds its evaluator with it.

    Results come back to the driver, which writes the store; a result's ``worker`` is
    ``<node ip>:<pid>``. A task lost for good (its node died more often than the retries
    allow, the task was cancelled) becomes a failed trial with a one-line error naming the
    loss. The driver disconnects at the end only from a Ray it connected to itself
    (``ray.shutdown()``: a local Ray it started stops, a cluster keeps running).
    """

    def __init__(
        self,
        workers: int = 1,
        address: str | None = None,
        threads: int = 1,
        config_json: str | None = None,
        dataset: Any = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "search.executor: 'ray' needs the ray package (pip install 'nasforge[ray]')"
            ) from None
        self.workers = workers
        self.threads = threads
        self.address = address
        self._connected = False
        if not ray.is_initialized():
            _ray_connect(address)
            self._connected = True
        self._config_json: str | None = None
        self._dataset = dataset  # the driver's loaded dataset: put as it is, not loaded again
        self._remote: Any = None
        self._dataset_ref: Any = None
        self._retries = 0
        self._running: dict[Any, Future] = {}  # ObjectRef -> the future the loop waits on
        if config_json is not None:
            try:
                self._prepare(config_json)
            except BaseException:
                self._release()
                raise

    def _prepare(self, config_json: str) -> None:
        """The task options and the dataset's ObjectRef for this config (once per config)."""
        if config_json == self._config_json:
            return
        import json

        import ray

        from nasforge.experiment.config import parse_config
        from nasforge.experiment.setup import make_dataset, uses_data

        cfg = parse_config(json.loads(config_json))
        search = cfg.search
        cpus = search.ray_num_cpus if search.ray_num_cpus is not None else cfg.latency.threads
        _check_feasible(cpus, search.ray_num_gpus)
        self._retries = search.ray_max_retries
        self._remote = ray.remote(
            num_cpus=cpus,
            num_gpus=search.ray_num_gpus,
            max_retries=search.ray_max_retries,
            retry_exceptions=False,
        )(_ray_evaluate)
        if uses_data(cfg):
            data = self._dataset if self._dataset is not None else make_dataset(cfg)
            self._dataset_ref = ray.put(data)
        else:
            self._dataset_ref = None
        self._dataset = None  # in the object store now; the driver need not keep a reference
        self._config_json = config_json

    def submit(self, payload: dict[str, Any]) -> Future:
        self._prepare(payload["config_json"])
        ref = self._remote.remote({**payload, "dataset_ref": self._dataset_ref}, self.threads)
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        self._running[ref] = fut
        retries = self._retries

        def done(ray_fut: Future) -> None:
            try:
                out = ray_fut.result()
            except BaseException as exc:  # noqa: BLE001 - a lost task is the trial's failure
                out = {"ok": False, "error": ray_loss_message(exc, retries), "cost_seconds": 0.0}
            self._running.pop(ref, None)
            if not fut.done():
                fut.set_result(out)

        ref.future().add_done_callback(done)
        return fut

    def shutdown(self) -> None:
        """The loop has every result: disconnect from a Ray this executor connected to."""
        self._release()

    def terminate(self) -> None:
        """Cancel the running tasks (Ray kills their worker processes), then disconnect."""
        import ray

        for ref in list(self._running):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - a finished or lost task needs no cancelling
                pass
        self._running = {}
        self._release()

    def _release(self) -> None:
        import ray

        self._dataset_ref = None
        self._config_json = None
        if self._connected and ray.is_initialized():
            ray.shutdown()
        self._connected = False


def _check_feasible(cpus: float, gpus: float) -> None:
    """A task no alive node can hold would wait forever: refuse it, naming the field."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not nodes or any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    short_gpu = not any(r.get("GPU", 0) >= gpus for r in nodes)
    field = "search.ray_num_gpus" if short_gpu else "search.ray_num_cpus"
    have = ", ".join(f"{r.get('CPU', 0):g} CPU + {r.get('GPU', 0):g} GPU" for r in nodes)
    raise ConfigError(
        f"{field}: each trial asks Ray for {cpus:g} CPU(s) and {gpus:g} GPU(s) but no node of "
        f"the cluster has that many (its nodes: {have}); the trials would wait forever"
    )


def _ray_evaluate(payload: dict[str, Any], threads: int) -> dict[str, Any]:
    """A Ray task: :func:`evaluate_payload` with the worker's torch threads; ``worker``
    names the node (its IP) and the process."""
    import ray
    import torch

    torch.set_num_threads(threads)
    out = evaluate_payload(payload)
    out["worker"] = f"{ray.util.get_node_ip_address()}:{os.getpid()}"
    return out


def ray_loss_message(exc: BaseException, retries: int) -> str:
    """One line for a trial whose Ray task ended without a result."""
    name = type(exc).__name__
    first = _first_line(exc)
    if name == "TaskCancelledError":
        return f"ray task cancelled ({name}): {first}"
    if name in ("NodeDiedError", "WorkerCrashedError", "OwnerDiedError", "ObjectLostError"):
        return (
            f"ray node or worker lost ({name}) after {retries} retries "
            f"(search.ray_max_retries): {first}"
        )
    return f"ray task failed ({name}): {first}"


def _ray_connect(address: str | None) -> None:
    """``ray.init`` at ``address``; no cluster there -> :class:`ConfigError` naming
    ``search.ray_address`` (ray.init would wait for minutes on an address nobody answers,
    so the head's port is tried first)."""
    import logging
    import socket

    import ray

    field = "search.ray_address"
    if address is not None:
        try:  # "auto" -> the address of this machine's cluster (RAY_ADDRESS, Ray's temp dir)
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address(address)
        except ConnectionError as exc:
            raise ConfigError(f"{field}: {address!r}: {_first_line(exc)}") from None
        except Exception:  # noqa: BLE001 - Ray's private helper moved: ray.init decides
            target = None
        if target:
            host, _, port = target.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=10).close()
            except OSError as exc:
                raise ConfigError(
                    f"{field}: no Ray cluster answers at {address} ({target}: {exc}); start "
                    "its head with `ray start --head` or fix the address"
                ) from None
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except Exception as exc:  # noqa: BLE001 - any failure to reach Ray is a config problem
        where = (
            f"{field}: cannot connect to the Ray cluster at {address}"
            if address
            else ("search.executor: cannot start a local Ray")
        )
        raise ConfigError(f"{where}: {type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message, cut after a whole sentence within ``limit``."""
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    if len(line) <= limit:
        return line
    cut = line.rfind(". ", 0, limit)
    return line[: cut + 1] if cut > 0 else line[:limit] + "..."


def make_executor(
    kind: str,
    workers: int,
    threads: int,
    ray_address: str | None = None,
    config_json: str | None = None,
    dataset: Any = None,
) -> Executor:
    """The executor ``kind``; ``config_json`` (the payloads' config) lets the ray executor
    check its task resources and put the dataset in the object store before the first
    trial (otherwise at the first submit); ``dataset``: that config's dataset, already loaded
    by the driver (put as it is; otherwise the ray executor loads it)."""
    if kind == "inline":
        return InlineExecutor(threads)
    if kind == "process":
        return ProcessExecutor(workers, threads)
    if kind == "ray":
        return RayExecutor(workers, ray_address, threads, config_json, dataset)
    raise ConfigError(f"search.executor: expected inline, process or ray, got {kind!r}")
