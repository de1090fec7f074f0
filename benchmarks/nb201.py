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

Your own benchmark data: any table in the NB201 layout (an ``arch_str`` column and/or
``op_<dst>_<src>`` columns; one row per cell) with any signal, report and latency columns:

    python benchmarks/nb201.py --table my_nb201.csv --signal valid_acc --report test_acc \
        --latency-column lat_ms_mybox --quick
    python benchmarks/nb201.py --latency-table my_latency.csv --latency-key arch \
        --latency-column lat_ms_mybox --quick   # a latency file joined to the shared table

The shared table is read from ``$NASFORGE_SHARED_DATA`` (default ``../shared/data``; see the
README, "Benchmark data"). Goals (``GOAL`` lines): test accuracy >= 94.30 at 100 queries for
the best strategy (on another table: within 0.07 of the table's best reported value), and a
hardware-aware mean regret <= 0.10.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from goals import goal

from nasforge.errors import NasforgeError
from nasforge.evaluators.table import (
    NB201_PRESET,
    TableEvaluator,
    TableSpec,
    shared_data_dir,
    spec_from_preset,
)
from nasforge.objectives import Objective
from nasforge.space import SearchSpace
from nasforge.spaces.nb201 import NB201Space
from nasforge.strategies import Strategy, create_strategy

BUDGETS = (50, 100, 150)
#: NB201 CIFAR-10's published target (test %, best strategy at 100 queries); elsewhere the
#: target is the table's best reported value minus ACC_GAP
ACC_TARGET, ACC_GAP = 94.30, 0.07
REGRET_TARGET = 0.10
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


# -- one search run (in a worker process) ---------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(spec: TableSpec) -> None:
    """Pool initializer: the table spec every job reads (and one thread per worker: the
    models are tiny, and threads only fight over the cores the worker processes use)."""
    _WORKER.clear()
    _WORKER["spec"] = spec
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # optional: only BLAS threads stay as they are
        pass


def _setup() -> tuple[SearchSpace, TableEvaluator]:
    if "space" not in _WORKER:
        try:
            import torch

            torch.set_num_threads(1)
        except ImportError:
            pass
        _WORKER["space"] = NB201Space()
        _WORKER["table"] = TableEvaluator(_WORKER["spec"])
    return _WORKER["space"], _WORKER["table"]


def _make(
    spec: tuple[str, dict[str, Any]],
    space: SearchSpace,
    seed: int,
    constraint: Callable[[Any], bool] | None = None,
) -> Strategy:
    name, options = spec
    return create_strategy(name, space, seed=seed, constraint=constraint, **options)


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

    ``metric`` is the latency metric constrained (``lat_ms_<device>`` or ``latency_ms``).
    ``filtered``: the strategy's :attr:`~Strategy.constraint` reads the measured latency
    table before asking (latency is known without training); otherwise the latency is only
    revealed by the query, through the constraint objective's score.
    Returns (label, metric, limit, filtered, seed, test acc of the arch found, feasible).
    """
    label, spec, seed, metric, limit, filtered = job
    space, table = _setup()
    objective = Objective(kind="constraint", metric="val_acc", cost_metric=metric, target=limit)

    def within(arch: Any) -> bool:
        return table.lookup(arch).get(metric, np.inf) <= limit

    strategy = _make(spec, space, seed, within if filtered else None)
    trace = _search(strategy, table, objective.score, HW_BUDGET)
    scores = [objective.score(m) for m in trace]
    best = trace[int(np.argmax(np.asarray(scores, dtype=float)))]
    return label, metric, limit, filtered, seed, float(best["test_acc"]), objective.feasible(best)


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


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
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
    data = ap.add_argument_group("table (default: the shared NB201 CIFAR-10 file)")
    data.add_argument("--table", type=Path, default=None, help="CSV / CSV.gz in the NB201 layout")
    data.add_argument("--signal", default=None, help="column searched on (c10_valid_acc_200)")
    data.add_argument("--report", default=None, help="column reported (c10_test_acc_200)")
    data.add_argument(
        "--latency-column",
        default=None,
        help="the one latency column of the hardware part (default: every lat_ms_<device>)",
    )
    data.add_argument("--latency-table", type=Path, default=None, help="latency CSV to join")
    data.add_argument("--latency-key", default=None, help="its arch-string column (arch_str)")
    return ap.parse_args(argv)


def _table_spec(args: argparse.Namespace) -> TableSpec:
    """The table the benchmark reads, from the ``nb201`` preset and the command line."""
    options: dict[str, Any] = {"device": None}
    for name, value in (
        ("path", args.table),
        ("signal", args.signal),
        ("report", args.report),
        ("latency_path", args.latency_table),
        ("latency_key", args.latency_key),
    ):
        if value is not None:
            options[name] = value
    if args.latency_column is not None:
        options = {**options, "latency_column": args.latency_column}
        del options["device"]
    spec = spec_from_preset(NB201_PRESET, **options)
    if spec.reported_column is None:
        raise NasforgeError("--report: give the column to report (e.g. a test accuracy)")
    return spec


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    seeds = args.seeds or (15 if args.quick else 100)
    hw_seeds = args.hw_seeds or (3 if args.quick else 10)
    specs = (
        dict(_parse_spec(s) for s in args.strategies) if args.strategies else dict(DEFAULT_SPECS)
    )
    for base in ("random", "evolution (REA)"):  # baselines always run in the same invocation
        specs.setdefault(base, DEFAULT_SPECS[base])

    t_start = time.perf_counter()
    try:
        table_spec = _table_spec(args)
        _init_worker(table_spec)
        _, table = _setup()
    except NasforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(
            "  point at the data: NASFORGE_SHARED_DATA=/path/to/shared/data python "
            "benchmarks/nb201.py, or --table PATH (see the README, 'Benchmark data')",
            file=sys.stderr,
        )
        return 2
    shared = (
        all(v is None for v in (args.table, args.signal, args.report, args.latency_table))
        and table_spec.signal_column == "c10_valid_acc_200"
    )
    arrays = table.arrays()
    best_val_row = int(np.argmax(arrays["val_acc"]))
    signal, report = table_spec.signal_column, table_spec.reported_column
    if shared:
        print("NAS-Bench-201 CIFAR-10 search benchmark (nasforge)")
    else:
        print(f"NAS-Bench-201-layout search benchmark on {table.spec.path} (nasforge)")
    print(
        f"  machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.workers} worker processes, "
        f"python {sys.version.split()[0]}"
    )
    print(
        f"  protocol: signal = {signal}{' (200-epoch validation accuracy)' if shared else ''}; "
        "one run of 150 queries per seed, read at 50 / 100 / 150 queries;"
    )
    print(
        f"            reported = mean ± std over seeds of {report} of the best-by-"
        "validation arch queried; canonical keys (isomorphic cells asked once)"
    )
    print(
        f"  seeds: {seeds} (0..{seeds - 1}); table optimum: test {arrays['test_acc'].max():.2f}, "
        f"best-validation arch test {arrays['test_acc'][best_val_row]:.2f}"
    )
    print()

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(table_spec,)) as pool:
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
        at100 = {}
        for label in specs:
            r = np.array(results[label])
            at100[label] = float(np.mean(r[:, BUDGETS.index(100)]))
            hits = int(np.sum(np.isclose(r[:, 1], arrays["test_acc"][best_val_row])))
            print(
                f"{label:<{w}}"
                + "".join(f"{_pm(list(r[:, i])):>17}" for i in range(len(BUDGETS)))
                + f"{np.mean(times[label]):8.2f}  {hits:>9}/{len(r)}"
            )
        print(f"(main part: {t_main:.0f} s wall)")
        print()
        pub = _published() if shared else []
        if pub:
            print(
                "Published NB201 results (CIFAR-10 test %, their protocol: weight-sharing methods "
                "search once; REA/RS/REINFORCE/BOHB on a noisy 12-epoch signal under a 12,000 s "
                "simulated budget; NOT the query-budget protocol above):"
            )
            for row in pub:
                print(f"  {row['method']:<14} {row['c10_test']:>14}   [{row['table_version']}]")
            print()
        top = max(at100, key=lambda k: at100[k])
        target = ACC_TARGET if shared else float(np.nanmax(arrays["test_acc"])) - ACC_GAP
        goal(
            f"{'nb201' if shared else 'table'} accuracy@100",
            at100[top] >= target,
            f"{at100[top]:.2f} by {top}, {seeds} seeds",
            f">= {target:.2f} mean {report}",
        )

        if args.no_hw:
            print(f"total wall time: {time.perf_counter() - t_start:.0f} s")
            return 0
        hw_labels = [label for label in HW_SPECS if label in specs] or list(specs)
        prefix = NB201_PRESET.latency_prefix
        if args.latency_column is not None:
            devices = [(args.latency_column, "latency_ms")]
        else:
            devices = [(col.removeprefix(prefix), m) for col, m in table_spec.hardware_columns]
        if not devices:
            print(f"no {prefix}<device> columns in the table: no hardware-aware part")
            return 0
        settings = []
        for dev, metric in devices:
            lat = arrays[metric]
            for p in PERCENTILES:
                settings.append((dev, metric, p, float(np.nanpercentile(lat, p))))
        modes = (False, True)
        jobs2 = [
            (label, specs[label], s, metric, limit, filtered)
            for _, metric, _, limit in settings
            for label in hw_labels
            for filtered in modes
            for s in range(hw_seeds)
        ]
        found2: dict[tuple[str, str, float, bool], list[tuple[float, bool]]] = {}
        t0 = time.perf_counter()
        for label, metric, limit, filtered, _, test, ok in pool.imap_unordered(
            run_constrained, jobs2, chunksize=4
        ):
            found2.setdefault((label, metric, limit, filtered), []).append((test, ok))
        t_hw = time.perf_counter() - t0

    lat_name = "lat_ms_<device>" if args.latency_column is None else args.latency_column
    print(
        f"Hardware-aware: constraint objective (val acc if {lat_name} <= limit), {HW_BUDGET} "
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
    for dev, metric, p, limit in settings:
        feasible = arrays[metric] <= limit  # a missing latency (NaN) is never feasible
        oracle = float(arrays["test_acc"][feasible].max())
        vrow = int(np.argmax(np.where(feasible, arrays["val_acc"], -np.inf)))
        floor = oracle - float(arrays["test_acc"][vrow])
        floors.append(floor)
        cells = []
        for label, f in cols:
            runs = found2[(label, metric, limit, f)]
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
    best_col = min(cols, key=lambda c: float(np.mean(means[c])))
    best_regret = float(np.mean(means[best_col]))
    goal(
        f"{'nb201' if shared else 'table'} hw regret",
        best_regret <= REGRET_TARGET,
        f"{best_regret:.3f} by {names[cols.index(best_col)]}, floor {np.mean(floors):.3f}",
        f"<= {REGRET_TARGET:.2f} mean regret",
    )
    print(f"total wall time: {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
