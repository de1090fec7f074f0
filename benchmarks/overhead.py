"""Search-loop overhead: ask + tell + store per trial, with an instant evaluator.

Runs nasforge's per-trial bookkeeping exactly as the experiment loop does it (ask, duplicate
check in the store, insert running trial, record result, tell, count finished, save elapsed
time) on a real SQLite (WAL) store in a temp folder, for 10,000 trials on the `mobile`
space. Beside it, in the same process: Optuna's ask/tell on its SQLite storage with the same
space flattened to suggest_* calls. Optuna's per-trial cost grows with the study size, so
its number for fewer trials is a lower bound for 10,000.

Then the Ray rows (``benchmarks/overhead_ray.py``, its docstring says how and why): per-trial
overhead of the ``ray`` executor on a real 2-node Ray cluster on this machine vs the ``process``
pool on trivial trials, and the throughput of fixed-work trials with 1 vs 2 nodes.

    python benchmarks/overhead.py [--trials 10000] [--optuna-trials 500] [--quick]
                                  [--no-ray | --ray-only]

Ends with one ``GOAL`` line per goal (< 1 ms per trial, >= 20x cheaper than Optuna; Ray
overhead < 50 ms per trial, 2 nodes >= 1.6x the throughput of 1), each with the host, marked
unstable when other work shared the cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from goals import busy as host_busy
from goals import goal  # benchmarks/goals.py: the script's folder is on sys.path
from overhead_ray import run as ray_rows

from nasforge.experiment.loop import LoopBook
from nasforge.experiment.store import FINISHED, TrialStore
from nasforge.hardware import host_info
from nasforge.space import Categorical, Int
from nasforge.spaces import create_space
from nasforge.strategies import EvolutionStrategy, RandomStrategy


def instant_metrics(arch, rng: np.random.Generator) -> dict[str, float]:
    return {"val_acc": float(rng.random()), "latency_ms": float(rng.random() * 3)}


def nasforge_loop(strategy, store: TrialStore, trials: int) -> float:
    """The experiment loop's per-trial work (loop.py: the search loop), evaluator replaced."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    book = LoopBook(store)
    for _ in range(trials):
        arch = strategy.ask(1)[0]
        if book.seen(arch.key):
            strategy.tell(arch, book.score_of(arch.key))
            continue
        tid = store.add_trial(arch)
        metrics = instant_metrics(arch, rng)
        score = metrics["val_acc"]
        store.finish_trial(tid, "complete", metrics, score, 0.0)
        book.add(arch.key, score)
        strategy.tell(arch, score)
        book.save_elapsed(time.perf_counter() - t0)
    return (time.perf_counter() - t0) / trials


def optuna_loop(space, path: Path, trials: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{path}", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    rng = np.random.default_rng(0)
    dims = space.dimensions()
    t0 = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        values: dict[str, object] = {}
        for d in dims:
            if not d.active(values):
                continue
            if isinstance(d, Int):
                values[d.label] = trial.suggest_int(d.label, d.low, d.high)
            elif isinstance(d, Categorical):
                values[d.label] = trial.suggest_categorical(d.label, list(d.choices))
        study.tell(trial, instant_metrics(values, rng)["val_acc"])
    return (time.perf_counter() - t0) / trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--optuna-trials", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="1,000 and 100 trials, fewer Ray trials")
    rows_ap = ap.add_mutually_exclusive_group()
    rows_ap.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    rows_ap.add_argument("--ray-only", action="store_true", help="only the Ray rows")
    args = ap.parse_args()
    hw = host_info()
    print(f"machine: {hw['cpu']}, {hw['cores']} cores, python {hw['python']}, torch {hw['torch']}")
    if args.quick:
        args.trials, args.optuna_trials = min(args.trials, 1000), min(args.optuna_trials, 100)
    if not args.ray_only:
        loop_rows(args)
    if not args.no_ray:
        ray_rows(args.quick)


def loop_rows(args: argparse.Namespace) -> None:
    """The search loop's own bookkeeping per trial, nasforge vs Optuna, and its goals."""
    space = create_space("mobile", (1, 28, 28), 10)
    print(
        f"space: mobile ({len(space.dimensions())} dimensions); instant evaluator; "
        "SQLite WAL stores in a temp dir"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in (("random", RandomStrategy), ("evolution", EvolutionStrategy)):
            with TrialStore(Path(tmp) / f"{name}.db") as store:
                per = nasforge_loop(cls(space, seed=0), store, args.trials)
                n = store.count(FINISHED)
            rows.append((f"nasforge {name}", args.trials, n, per))
        try:
            per_opt = optuna_loop(space, Path(tmp) / "optuna.db", args.optuna_trials)
            rows.append(
                ("optuna RandomSampler, SQLite", args.optuna_trials, args.optuna_trials, per_opt)
            )
        except ImportError:
            per_opt = None
            print("optuna is not installed: baseline skipped")
    print(f"\n{'loop':32s} {'trials':>8s} {'stored':>8s} {'ms/trial':>10s}")
    for name, n, stored, per in rows:
        print(f"{name:32s} {n:8d} {stored:8d} {per * 1e3:10.3f}")
    # a per-trial cost is only a figure when the host was not busy while it was measured
    busy = host_busy([os.getloadavg()[0]], own_threads=1)
    if busy:
        print(f"host busy (load {os.getloadavg()[0]:.1f}): figures are marked unstable")
    for name, _, _, per in rows[:2]:
        short = name.removeprefix("nasforge ")
        goal(f"{short} loop under 1 ms/trial", per < 1e-3, f"{per * 1e3:.3f} ms", "< 1 ms", busy)
        if per_opt is not None:
            ratio = per_opt / per
            goal(
                f"{short} >= 20x cheaper than Optuna", ratio >= 20, f"{ratio:.1f}x", ">= 20x", busy
            )


if __name__ == "__main__":
    main()
