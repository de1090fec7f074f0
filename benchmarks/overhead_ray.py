"""The Ray rows of ``benchmarks/overhead.py``: what a Ray cluster costs per trial, and what a
second node buys.

Two measurements, both through the real executors (``make_executor``, the payloads the search
loop submits, :func:`~nasforge.experiment.executors.evaluate_payload` in the workers) and a
real multi-node Ray cluster on this machine (:class:`nasforge.testing.raycluster.
LocalRayCluster`: a head and worker nodes started with ``ray start`` on loopback addresses):

1. **Per-trial overhead** of the ``process`` pool and of the ``ray`` executor (a 2-node
   cluster of 1 CPU each) on trivial trials: an instant evaluator (``bench_instant``,
   registered below and loaded in every worker as a config ``plugins:`` module), ``workers``
   trials in flight as the loop keeps them. After a warm-up (workers started, nasforge
   imported, evaluator built: a one-off per worker, reported as ``startup s``), overhead per
   trial = wall / trials - mean evaluation time / workers: the wall time the executor adds to
   a search per trial.
   **Target: Ray < 50 ms per trial.** The cheapest real trial here (the train evaluator on
   digits, 1 epoch) takes seconds, so 50 ms keeps Ray's bookkeeping (task submission, the
   payload through the object store, scheduling, the result back to the driver) near 1 % of a
   trial; a process pool's few ms are the baseline beside it.
2. **Throughput with 1 vs 2 nodes**: trials that each do the same fixed CPU work
   (``bench_work``: a pure-Python loop of a fixed number of iterations, ~0.8 s on one core,
   0.4 s with ``--quick``; no threads), 2 in flight (``workers: 2``), on
   ``LocalRayCluster(nodes=1)`` and ``nodes=2``, 1 CPU per node; the runs go 2, 1, 1, 2 nodes
   (2, 1 with ``--quick``), each on a fresh cluster, so a load drifting over the minutes of
   the benchmark weighs on both sizes alike. The host has 2 cores shared with the Ray
   daemons (GCS, raylets) and the driver, so 2 nodes can at best double 1 node; **target
   >= 1.6x**. A ratio above 2 says the host's other load changed between the runs.

Both figures are per-trial times on a shared host: a 1-minute load above this benchmark's own
2 worker threads by more than half the cores marks them unstable (never met).

Run through ``python benchmarks/overhead.py`` (``--quick`` for fewer trials, ``--ray-only``
for these rows alone).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from goals import busy as host_busy
from goals import goal, load1

from nasforge.evaluators import Evaluator, EvaluatorContext, Result, register_evaluator
from nasforge.experiment.config import parse_config
from nasforge.experiment.executors import Executor, make_executor
from nasforge.space import Arch, SearchSpace
from nasforge.spaces import create_space

#: this module's import name: the configs list it in ``plugins:`` so every worker (pool
#: process or Ray worker; both get the driver's script folder on sys.path) registers the
#: evaluators below before it builds one
PLUGIN = "overhead_ray"
#: iterations of ``bench_work``'s loop (its default): the same CPU work in every trial, ~0.4 s
#: on one core of this host (the benchmark runs twice this, half with ``--quick``)
WORK_ITERATIONS = 9_000_000
SPACE = {"name": "mobile", "options": {"stages": [[8, 1, 2], [16, 1, 2]]}}
#: target of the per-trial overhead of the Ray executor, and of the 2-node speed-up
RAY_OVERHEAD_TARGET_S = 0.050
TWO_NODE_TARGET = 1.6


def _node() -> str:
    """The Ray node this trial runs on (its node id's head), else the host name (a pool)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return str(ray.get_runtime_context().get_node_id())[:12]
    return os.uname().nodename


class InstantEvaluator(Evaluator):
    """A score from a hash of the arch: no training, microseconds."""

    def produces(self) -> frozenset[str]:
        return frozenset({"val_acc"})

    def evaluate(self, arch: Arch, budget: Any = None, reporter: Any = None) -> Result:
        t0 = time.perf_counter()
        h = int(hashlib.sha256(arch.key.encode()).hexdigest()[:8], 16)
        cost = time.perf_counter() - t0
        return Result({"val_acc": (h % 10_000) / 10_000}, cost, {"node": _node()})


class FixedWorkEvaluator(InstantEvaluator):
    """The instant score after a fixed amount of single-threaded CPU work."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def evaluate(self, arch: Arch, budget: Any = None, reporter: Any = None) -> Result:
        t0, c0 = time.perf_counter(), time.process_time()
        x = 0
        for i in range(self.iterations):
            x += i * i
        res = super().evaluate(arch, budget, reporter)
        info = {**res.info, "cpu_s": time.process_time() - c0, "work": x & 1}
        return Result(res.metrics, time.perf_counter() - t0, info)


def _instant(context: EvaluatorContext, **options: Any) -> Evaluator:
    return InstantEvaluator()


def _work(context: EvaluatorContext, iterations: int = WORK_ITERATIONS, **_: Any) -> Evaluator:
    return FixedWorkEvaluator(int(iterations))


register_evaluator("bench_instant", _instant, "instant hash score (benchmark)", needs_data=False)
register_evaluator("bench_work", _work, "fixed CPU work, then a hash score", needs_data=False)


@dataclass(frozen=True)
class Batch:
    """One timed batch of trials through an executor."""

    trials: int
    wall_s: float
    eval_s: list[float]
    cpu_s: list[float]
    nodes_seen: list[str]

    @property
    def mean_eval_s(self) -> float:
        return sum(self.eval_s) / max(1, len(self.eval_s))

    @property
    def mean_cpu_s(self) -> float:
        """The evaluations' own CPU time: below :attr:`mean_eval_s` when the trials waited
        for a core (other work, or two trials on one core)."""
        return sum(self.cpu_s) / max(1, len(self.cpu_s))


def config_json(evaluator: str, trials: int, workers: int, options: dict[str, Any]) -> str:
    """The validated config a search would send its workers, as the loop serialises it."""
    cfg = parse_config(
        {
            "name": "overhead",
            "plugins": [PLUGIN],
            "evaluator": {"kind": evaluator, "options": options},
            "space": SPACE,
            "strategy": {"name": "random"},
            "objective": {"kind": "accuracy"},
            "search": {"trials": trials, "workers": workers},
        }
    )
    return json.dumps(cfg.model_dump(mode="json"))


def payloads(cfg_json: str, space: SearchSpace, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` payloads shaped as the search loop's (config, arch, run dir, trial id)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        {
            "config_json": cfg_json,
            "arch_json": space.sample(rng).to_json(),
            "run_dir": None,
            "trial_id": i + 1,
        }
        for i in range(n)
    ]


def drive(executor: Executor, batch: list[dict[str, Any]], in_flight: int) -> Batch:
    """Run ``batch`` keeping ``in_flight`` trials submitted, as the search loop does.

    Raises:
        RuntimeError: a trial failed (the benchmark's evaluators never fail: a failure is an
            executor or cluster problem, and its figures would mean nothing).
    """
    todo = list(batch)
    pending: set[Future] = set()
    evals: list[float] = []
    cpus: list[float] = []
    seen: list[str] = []
    t0 = time.perf_counter()
    while todo or pending:
        while todo and len(pending) < in_flight:
            pending.add(executor.submit(todo.pop(0)))
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            res = fut.result()
            if not res.get("ok"):
                raise RuntimeError(f"a benchmark trial failed: {res.get('error', '')[:300]}")
            evals.append(float(res["cost_seconds"]))
            info = res.get("info") or {}
            cpus.append(float(info.get("cpu_s", 0.0)))
            seen.append(str(info.get("node", "?")))
    return Batch(len(batch), time.perf_counter() - t0, evals, cpus, seen)


def _space() -> SearchSpace:
    return create_space(SPACE["name"], (3, 32, 32), 10, **SPACE["options"])  # type: ignore[arg-type]


@dataclass(frozen=True)
class OverheadRow:
    executor: str
    trials: int
    workers: int
    startup_s: float
    batch: Batch

    @property
    def overhead_s(self) -> float:
        b = self.batch
        return b.wall_s / b.trials - b.mean_eval_s / self.workers


def measure_overhead(
    name: str, make: Callable[[], Executor], trials: int, workers: int
) -> OverheadRow:
    """Per-trial overhead of the executor ``make()`` builds, on instant trials (warm-up
    excluded: ``4 * workers`` trials first, so every worker has built its evaluator)."""
    space = _space()
    cfg = config_json("bench_instant", trials, workers, {})
    t0 = time.perf_counter()
    executor = make()
    try:
        drive(executor, payloads(cfg, space, 4 * workers, seed=1), workers)
        startup = time.perf_counter() - t0
        batch = drive(executor, payloads(cfg, space, trials, seed=2), workers)
    finally:
        executor.shutdown()
    return OverheadRow(name, trials, workers, startup, batch)


def measure_throughput(executor: Executor, trials: int, workers: int, iterations: int) -> Batch:
    """Fixed-work trials, ``workers`` in flight (a warm-up of ``2 * workers`` trials first
    builds every worker's evaluator outside the timed batch)."""
    space = _space()
    cfg = config_json("bench_work", trials, workers, {"iterations": iterations})
    drive(executor, payloads(cfg, space, 2 * workers, seed=3), workers)
    return drive(executor, payloads(cfg, space, trials, seed=4), workers)


def ray_driver(spec: dict[str, Any]) -> dict[str, Any]:
    """The Ray measurements of one cluster, in this process as its driver (run by
    :func:`on_cluster` in a subprocess with the cluster's environment: Ray reads its auth
    token once per process, and a real search's driver is its own process too)."""
    workers, address = int(spec["workers"]), str(spec["address"])
    out: dict[str, Any] = {}
    if spec.get("instant_trials"):
        make = lambda: make_executor("ray", workers, 1, address)  # noqa: E731
        row = measure_overhead(f"ray, {spec['nodes']} nodes", make, spec["instant_trials"], workers)
        out["overhead"] = asdict(row)
    executor = make_executor("ray", workers, 1, address)
    try:
        batch = measure_throughput(executor, spec["work_trials"], workers, spec["iterations"])
    finally:
        executor.shutdown()
    out["throughput"] = asdict(batch)
    return out


def on_cluster(nodes: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Start a ``nodes``-node cluster (1 CPU per node), run :func:`ray_driver` against it in
    a driver subprocess, stop the cluster; the driver's results.

    Raises:
        RuntimeError: the driver failed (its output's tail in the message).
    """
    from nasforge.testing.raycluster import LocalRayCluster

    with LocalRayCluster(nodes=nodes, cpus_per_node=1, object_store_mb=100) as cluster:
        spec = {**spec, "nodes": nodes, "address": cluster.address}
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--driver", json.dumps(spec)],
            env=cluster.driver_env(),
            capture_output=True,
            text=True,
            timeout=1800,
        )
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not results:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"the Ray driver on {nodes} node(s) failed:\n{tail}")
    return dict(json.loads(results[-1].removeprefix(RESULT)))


def _batch(d: dict[str, Any]) -> Batch:
    return Batch(**d)


def _merged(batches: list[Batch]) -> Batch:
    """The runs of one cluster size as one batch (trials and wall summed)."""
    return Batch(
        sum(b.trials for b in batches),
        sum(b.wall_s for b in batches),
        [x for b in batches for x in b.eval_s],
        [x for b in batches for x in b.cpu_s],
        [x for b in batches for x in b.nodes_seen],
    )


def run(quick: bool = False) -> list[bool]:
    """Measure and print the Ray rows and their ``GOAL`` lines; the goals' verdicts."""
    try:
        import ray  # noqa: F401 - only whether it is installed
    except ImportError:
        print("ray is not installed (pip install 'nasforge[ray]'): Ray rows skipped")
        return []
    workers = 2
    trials = 60 if quick else 300
    # the throughput runs, in this order: 2, 1, 2 nodes... A B B A cancels a load that
    # drifts linearly over the runs (other work starting or ending on a shared host)
    order = (2, 1) if quick else (2, 1, 1, 2)
    work_trials = 8 if quick else 10
    iterations = WORK_ITERATIONS if quick else 2 * WORK_ITERATIONS
    spec = {"workers": workers, "work_trials": work_trials, "iterations": iterations}
    loads = [load1()]
    print(
        f"\nRay: per-trial overhead on instant trials ({trials} trials, {workers} in flight, "
        "after a warm-up), process pool vs a 2-node Ray cluster (1 CPU per node, loopback)"
    )
    proc_row = measure_overhead(
        "process pool", lambda: make_executor("process", workers, 1), trials, workers
    )
    runs = [
        on_cluster(n, {**spec, "instant_trials": trials if i == 0 else 0})
        for i, n in enumerate(order)
    ]
    loads.append(load1())
    o = runs[0]["overhead"]
    ray_row = OverheadRow(
        o["executor"], o["trials"], o["workers"], o["startup_s"], _batch(o["batch"])
    )
    print(
        f"{'executor':16s} {'trials':>7s} {'startup s':>10s} {'wall s':>8s} "
        f"{'eval ms/trial':>14s} {'overhead ms/trial':>18s} {'nodes used':>11s}"
    )
    for r in (proc_row, ray_row):
        b = r.batch
        print(
            f"{r.executor:16s} {r.trials:7d} {r.startup_s:10.2f} {b.wall_s:8.2f} "
            f"{b.mean_eval_s * 1e3:14.3f} {r.overhead_s * 1e3:18.2f} "
            f"{len(set(b.nodes_seen)):11d}"
        )
    print(
        f"\nRay: throughput of fixed-work trials ({iterations:,} loop iterations each, "
        f"{work_trials} trials a run, {workers} in flight; runs in the order "
        f"{', '.join(map(str, order))} nodes, each on a fresh cluster), 1 vs 2 nodes of 1 CPU; "
        "the host's 2 cores also run the Ray daemons and the driver, so 2 nodes at best "
        "double 1"
    )
    batches = [_batch(r["throughput"]) for r in runs]
    tput = {n: _merged([b for b, m in zip(batches, order) if m == n]) for n in (1, 2)}
    print(
        f"{'run':14s} {'trials':>7s} {'wall s':>8s} {'trials/s':>9s} {'eval s':>7s} "
        f"{'eval cpu s':>11s} {'nodes used':>11s}"
    )
    # node ids differ between clusters: nodes are counted within each run
    used = [len(set(b.nodes_seen)) for b in batches]
    rows = [
        (f"{i + 1}: {n} node{'s' * (n > 1)}", b, u)
        for i, (n, b, u) in enumerate(zip(order, batches, used))
    ]
    rows += [
        (f"all {n} node{'s' * (n > 1)}", tput[n], max(u for u, m in zip(used, order) if m == n))
        for n in (1, 2)
    ]
    for label, b, u in rows:
        print(
            f"{label:14s} {b.trials:7d} {b.wall_s:8.2f} {b.trials / b.wall_s:9.3f} "
            f"{b.mean_eval_s:7.2f} {b.mean_cpu_s:11.2f} {u:11d}"
        )
    print("(eval s above eval cpu s: the trials waited for a core)")
    busy = host_busy(loads, own_threads=workers)
    if busy:
        print(f"host busy (load {max(loads):.1f}): Ray figures are marked unstable")
    speedup = (tput[2].trials / tput[2].wall_s) / (tput[1].trials / tput[1].wall_s)
    return [
        goal(
            "ray overhead",
            ray_row.overhead_s < RAY_OVERHEAD_TARGET_S,
            f"{ray_row.overhead_s * 1e3:.1f} ms/trial, process pool "
            f"{proc_row.overhead_s * 1e3:.1f} ms/trial",
            f"< {RAY_OVERHEAD_TARGET_S * 1e3:.0f} ms/trial",
            busy,
        ),
        goal(
            "ray 2-node throughput",
            speedup >= TWO_NODE_TARGET,
            f"{speedup:.2f}x of 1 node",
            f">= {TWO_NODE_TARGET}x of 1 node",
            busy,
        ),
    ]


#: the prefix of the driver subprocess's result line
RESULT = "RAY-RESULT "

if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer trials, lighter work")
    ap.add_argument("--driver", help=argparse.SUPPRESS)  # internal: one cluster's driver
    args = ap.parse_args()
    if args.driver:
        print(RESULT + json.dumps(ray_driver(json.loads(args.driver))), flush=True)
    else:
        run(args.quick)
