"""Search strategies on NAS-Bench-201 (CIFAR-10), from the shared table; baselines in the same run.

Protocol (printed with the results):
  * signal: the 200-epoch validation accuracy ``c10_valid_acc_200`` (what strategies are told);
  * budgets: 50, 100 and 150 queries (one query = one table lookup). Strategies never see the
    budget, so one run of 150 queries per seed is read at its first 50 / 100 / 150 queries;
  * reported: mean ± std over seeds of the TEST accuracy ``c10_test_acc_200`` of the arch with the
    best validation accuracy among the queries (first found on ties);
  * archs are keyed canonically (isomorphic cells share a key, 5,044 keys), so no strategy pays
    twice for one function; a query returns the table row of the arch as asked;
  * random search and plain regularized evolution run in the same invocation as baselines.

Hardware-aware part: for every ``lat_ms_<device>`` column and a latency limit at the 25th / 50th /
75th percentile of that device's latencies, strategies maximise the constraint objective
(:class:`nasforge.objectives.Objective` ``kind="constraint"``: validation accuracy if the latency
is within the limit, else a heavy penalty) for 100 queries. Regret = best test accuracy of any arch
within the limit (oracle) minus the test accuracy of the arch found (best objective). "floor" is
the regret of the arch with the best validation accuracy within the limit (a perfect search on
the validation signal), i.e. the part of the regret no search on this signal can remove. Two
modes: "bb" (black box: the latency is only revealed by the query's score) and "filt" (the
strategy's ``constraint`` reads the measured latency before asking, as a latency table or
predictor allows in practice; accuracy queries are still what is counted).

    python benchmarks/nb201.py            # full: 100 seeds, hardware part with 10 seeds
    python benchmarks/nb201.py --quick    # ~2-3 minutes: 15 seeds, hardware part with 3 seeds
    python benchmarks/nb201.py --strategies predictor:top_k=3 random --seeds 20 --no-hw
"""

from __future__ import annotations

import os

# One BLAS / OpenMP thread per worker process: the models here are tiny, and threads only
# fight over the cores the worker processes already use (set before numpy is imported).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import csv
import json
import multiprocessing as mp
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nasforge.evaluators.table import (
    NB201_DEVICES,
    TableEvaluator,
    nb201_cifar10_spec,
    shared_data_dir,
)
from nasforge.objectives import Objective
from nasforge.space import SearchSpace
from nasforge.spaces.nb201 import NB201Space
from nasforge.strategies import Strategy, create_strategy

BUDGETS = (50, 100, 150)
HW_BUDGET = 100
PERCENTILES = (25, 50, 75)

#: strategy specs of the main table: label -> (registry name, options). Tuned settings; the
#: same classes and defaults work on any space (nothing here is NB201-specific code).
DEFAULT_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("random", {}),
    "evolution (REA)": ("evolution", {"population": 20, "tournament": 5}),
    "predictor (GP-EI)": ("predictor", {}),
    "local (first-impr.)": ("local", {"mode": "first", "warmup": 10}),
    "reinforce": ("reinforce", {}),
    "optuna (TPE)": ("optuna", {"sampler": "tpe"}),
}
HW_SPECS = ("random", "evolution (REA)", "predictor (GP-EI)")


# -- one search run (in a worker process) -----------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _setup() -> tuple[SearchSpace, TableEvaluator]:
    if "space" not in _WORKER:
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
        _WORKER["space"] = NB201Space()
        _WORKER["table"] = TableEvaluator(nb201_cifar10_spec(device=None))
    return _WORKER["space"], _WORKER["table"]


def _make(spec: tuple[str, dict[str, Any]], space: SearchSpace, seed: int) -> Strategy:
    name, options = spec
    return create_strategy(name, space, seed=seed, **options)


def _search(
    strategy: Strategy, table: TableEvaluator, score: Callable[[dict[str, float]], Any], budget: int
) -> list[dict[str, float]]:
    table.reset()
    out = []
    for _ in range(budget):
        arch = strategy.ask(1)[0]
        metrics = table.evaluate(arch).metrics
        strategy.tell(arch, score(metrics))
        out.append(metrics)
    assert table.queries == budget
    return out


def run_accuracy(
    job: tuple[str, tuple[str, dict[str, Any]], int],
) -> tuple[str, int, list[float], float]:
    """One seed of the main protocol: test acc of the best-by-validation arch at each budget."""
    label, spec, seed = job
    space, table = _setup()
    t0 = time.perf_counter()
    trace = _search(_make(spec, space, seed), table, lambda m: m["val_acc"], max(BUDGETS))
    elapsed = time.perf_counter() - t0
    val = np.array([m["val_acc"] for m in trace])
    test = np.array([m["test_acc"] for m in trace])
    found = [float(test[int(np.argmax(val[:b]))]) for b in BUDGETS]
    return label, seed, found, elapsed


def run_constrained(
    job: tuple[str, tuple[str, dict[str, Any]], int, str, float, bool],
) -> tuple[str, str, float, bool, int, float, bool]:
    """One seed of the hardware part.

    ``filtered``: the strategy's :attr:`~Strategy.constraint` reads the measured latency
    table before asking (latency is known without training); otherwise the latency is only
    revealed by the query, through the constraint objective's score.
    Returns (label, device, limit, filtered, seed, test acc of the arch found, feasible).
    """
    label, spec, seed, device, limit, filtered = job
    space, table = _setup()
    column = f"lat_ms_{device}"
    objective = Objective(kind="constraint", metric="val_acc", cost_metric=column, target=limit)
    strategy = _make(spec, space, seed)
    if filtered:
        strategy.constraint = lambda arch: table.lookup(arch)[column] <= limit
    trace = _search(strategy, table, objective.score, HW_BUDGET)
    scores = [objective.score(m) for m in trace]
    best = trace[int(np.argmax(scores))]
    return label, device, limit, filtered, seed, float(best["test_acc"]), objective.feasible(best)


# -- the report -----------------------------------------------------------------------------------
def _pm(values: list[float]) -> str:
    return f"{np.mean(values):6.2f} ± {np.std(values):4.2f}"


def _parse_spec(text: str) -> tuple[str, tuple[str, dict[str, Any]]]:
    """``name`` or ``name:key=value,key=value`` (values parsed as JSON when they parse)."""
    if text in DEFAULT_SPECS:
        return text, DEFAULT_SPECS[text]
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return text, (name, options)


def _published() -> list[dict[str, str]]:
    path = shared_data_dir() / "nas-bench-201" / "published_results_nb201.csv"
    if not path.is_file():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="15 seeds, 3 seeds per hardware setting")
    ap.add_argument("--seeds", type=int, default=None, help="seeds of the main table (default 100)")
    ap.add_argument("--hw-seeds", type=int, default=None, help="seeds per hardware setting")
    ap.add_argument(
        "--strategies",
        nargs="*",
        default=None,
        help="labels of DEFAULT_SPECS or name:key=value,... (default: all)",
    )
    ap.add_argument("--no-hw", action="store_true", help="skip the hardware-aware part")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    seeds = args.seeds or (15 if args.quick else 100)
    hw_seeds = args.hw_seeds or (3 if args.quick else 10)
    specs = (
        dict(_parse_spec(s) for s in args.strategies) if args.strategies else dict(DEFAULT_SPECS)
    )
    for base in ("random", "evolution (REA)"):  # baselines always run in the same invocation
        specs.setdefault(base, DEFAULT_SPECS[base])

    t_start = time.perf_counter()
    _, table = _setup()
    arrays = table.arrays()
    best_val_row = int(np.argmax(arrays["val_acc"]))
    print("NAS-Bench-201 CIFAR-10 search benchmark (nasforge)")
    print(
        f"  machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.workers} worker processes, "
        f"python {sys.version.split()[0]}"
    )
    print(
        "  protocol: signal = c10_valid_acc_200 (200-epoch validation accuracy); one run of 150 "
        "queries per seed, read at 50 / 100 / 150 queries;"
    )
    print(
        "            reported = mean ± std over seeds of c10_test_acc_200 of the best-by-"
        "validation arch queried; canonical keys (isomorphic cells asked once)"
    )
    print(
        f"  seeds: {seeds} (0..{seeds - 1}); table optimum: test {arrays['test_acc'].max():.2f}, "
        f"best-validation arch test {arrays['test_acc'][best_val_row]:.2f}"
    )
    print()

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(args.workers) as pool:
        jobs = [(label, spec, s) for label, spec in specs.items() for s in range(seeds)]
        results: dict[str, list[list[float]]] = {label: [] for label in specs}
        times: dict[str, list[float]] = {label: [] for label in specs}
        t0 = time.perf_counter()
        for label, _, found, elapsed in pool.imap_unordered(run_accuracy, jobs, chunksize=2):
            results[label].append(found)
            times[label].append(elapsed)
        t_main = time.perf_counter() - t0
        w = max(len(label) for label in specs) + 2
        print(
            f"{'strategy':<{w}}"
            + "".join(f"{f'{b} queries':>17}" for b in BUDGETS)
            + f"{'s/run':>8}  {'hit optimum@100':>15}"
        )
        for label in specs:
            r = np.array(results[label])
            hits = int(np.sum(np.isclose(r[:, 1], arrays["test_acc"][best_val_row])))
            print(
                f"{label:<{w}}"
                + "".join(f"{_pm(list(r[:, i])):>17}" for i in range(len(BUDGETS)))
                + f"{np.mean(times[label]):8.2f}  {hits:>9}/{len(r)}"
            )
        print(f"(main part: {t_main:.0f} s wall)")
        print()
        pub = _published()
        if pub:
            print(
                "Published NB201 results (CIFAR-10 test %, their protocol: weight-sharing methods "
                "search once; REA/RS/REINFORCE/BOHB on a noisy 12-epoch signal under a 12,000 s "
                "simulated budget; NOT the query-budget protocol above):"
            )
            for row in pub:
                print(f"  {row['method']:<14} {row['c10_test']:>14}   [{row['table_version']}]")
            print()

        if args.no_hw:
            print(f"total wall time: {time.perf_counter() - t_start:.0f} s")
            return 0
        hw_labels = [label for label in HW_SPECS if label in specs] or list(specs)
        settings = []
        for dev in NB201_DEVICES:
            lat = arrays[f"lat_ms_{dev}"]
            for p in PERCENTILES:
                settings.append((dev, p, float(np.percentile(lat, p))))
        modes = (False, True)
        jobs2 = [
            (label, specs[label], s, dev, limit, filtered)
            for dev, _, limit in settings
            for label in hw_labels
            for filtered in modes
            for s in range(hw_seeds)
        ]
        found2: dict[tuple[str, str, float, bool], list[tuple[float, bool]]] = {}
        t0 = time.perf_counter()
        for label, dev, limit, filtered, _, test, ok in pool.imap_unordered(
            run_constrained, jobs2, chunksize=4
        ):
            found2.setdefault((label, dev, limit, filtered), []).append((test, ok))
        t_hw = time.perf_counter() - t0

    print(
        f"Hardware-aware: constraint objective (val acc if lat_ms_<device> <= limit), {HW_BUDGET} "
        f"queries, {hw_seeds} seeds per setting (0..{hw_seeds - 1})."
    )
    print(
        "  regret = oracle test acc under the limit - test acc of the arch found (an infeasible "
        "find counts as test 0), mean over seeds;"
    )
    print(
        "  floor = regret of the best-VALIDATION arch under the limit: the part no search on the "
        "validation signal can remove."
    )
    print(
        "  bb = black box (latency revealed by the query's score); filt = Strategy.constraint "
        "reads the measured latency table before asking."
    )
    cols = [(label, f) for label in hw_labels for f in modes]
    names = [f"{label.split(' ')[0][:10]} {'filt' if f else 'bb'}" for label, f in cols]
    print(
        f"{'device':<11}{'pctl':>5}{'limit ms':>10}{'oracle':>8}{'floor':>7}"
        + "".join(f"{n:>16}" for n in names)
    )
    means: dict[tuple[str, bool], list[float]] = {c: [] for c in cols}
    floors = []
    for dev, p, limit in settings:
        feasible = arrays[f"lat_ms_{dev}"] <= limit
        oracle = float(arrays["test_acc"][feasible].max())
        vrow = int(np.argmax(np.where(feasible, arrays["val_acc"], -np.inf)))
        floor = oracle - float(arrays["test_acc"][vrow])
        floors.append(floor)
        cells = []
        for label, f in cols:
            runs = found2[(label, dev, limit, f)]
            regrets = [oracle - (t if ok else 0.0) for t, ok in runs]
            means[(label, f)].append(float(np.mean(regrets)))
            bad = sum(not ok for _, ok in runs)
            cells.append(f"{np.mean(regrets):.3f}" + (f" ({bad}i)" if bad else ""))
        print(
            f"{dev:<11}{p:>5}{limit:>10.3f}{oracle:>8.2f}{floor:>7.3f}"
            + "".join(f"{c:>16}" for c in cells)
        )
    print(
        f"{'mean regret':<34}{np.mean(floors):>7.3f}"
        + "".join(f"{np.mean(means[c]):>16.3f}" for c in cols)
    )
    print(
        f"{'mean regret - floor (search)':<41}"
        + "".join(f"{np.mean(means[c]) - np.mean(floors):>16.3f}" for c in cols)
    )
    print(f"(hardware part: {t_hw:.0f} s wall)")
    print(f"total wall time: {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
