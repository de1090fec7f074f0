"""Goal 1 of issue 15: multi-fidelity search (Hyperband, ASHA) against full-fidelity evolution
and random search on one joint space (architecture + training recipe), same wall-clock budget.

``python benchmarks/automl_fidelity.py [--quick] [--jobs N]``. For each seed (5; quick 2)
every method is one product run (:func:`automl_common.run_product`: ``parse_config`` ->
``Experiment``) with ``search.time_budget_s`` = the budget (300 s; quick 45 s), the inline
executor and one torch thread; one run at a time (the methods' order rotated per seed so none
always runs on the quieter stretch), or ``--jobs`` runs at once in their own processes on a
host with at least twice as many CPUs:

* ``hyperband``, ``asha``: ``min_epochs`` 1, ``max_epochs`` 9, ``eta`` 3 (quick: 4 and 2, so
  that a 45 s run on a busy 2-core host still reaches full fidelity; the strategies ask
  each configuration at growing epochs; only trials at ``max_epochs`` are full-fidelity);
* ``evolution`` (population 8, quick 4; tournament 3) and ``random``: every trial trains
  ``max_epochs`` epochs.

Read back from each run's store: the best full-fidelity validation accuracy over wall time
(seconds since the run's first trial started, at each trial's finish) -> the plot
``results/cpu_automl_fidelity_<stamp>[_quick].png``; the final test accuracy of each method's
chosen trial (the product's final step: retrained ``max_epochs`` on train+val with its
recipe, tested once).

Goal (one line per multi-fidelity method): the time at which its best full-fidelity val acc
first reaches full-fidelity evolution's FINAL best val acc, as a fraction of evolution's wall
time (its last trial's finish), median over seeds, <= 1/3 (never reached counts as infinite).
The figure is wall time: a run during which other processes took CPUs this one needed
(:func:`figures.activity_stability`) flags it ``unstable: host busy`` (never met). The log
(and a ``.json`` beside it) goes to ``results/cpu_automl_fidelity_<stamp>[_quick].log``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from automl_common import (  # noqa: E402 - benchmarks/ on the path first
    RESULTS,
    RunResult,
    base_config,
    loads,
    recipe_dims,
    run_all,
    stamp,
    start_log,
    strategy_known,
    work_dir,
)
from goals import goal, host  # noqa: E402

MULTI = ("hyperband", "asha")
FULL = ("evolution", "random")
METHODS = MULTI + FULL
TARGET_FRACTION = 1 / 3
Curve = list[tuple[float, float]]


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, 45 s per run: a smoke test")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (5; quick 2)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall s per run (300; quick 45)")
    ap.add_argument("--max-epochs", type=int, default=None, help="(9; quick 4)")
    ap.add_argument("--min-epochs", type=int, default=1)
    ap.add_argument("--eta", type=int, default=None, help="(3; quick 2)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list")
    ap.add_argument("--recipe", choices=("explicit", "standard"), default="explicit")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (<= half the CPUs)")
    ap.add_argument("--work", type=Path, default=None, help="run dirs (default: a temp dir)")
    ap.add_argument("--log", type=Path, default=None, help="log file (default: results/...)")
    a = ap.parse_args(argv)
    a.seeds = a.seeds if a.seeds is not None else (2 if a.quick else 5)
    a.budget_s = a.budget_s if a.budget_s is not None else (45.0 if a.quick else 300.0)
    a.max_epochs = a.max_epochs if a.max_epochs is not None else (4 if a.quick else 9)
    a.eta = a.eta if a.eta is not None else (2 if a.quick else 3)
    a.methods = tuple(m for m in a.methods.split(",") if m)
    bad = [m for m in a.methods if m not in METHODS]
    if bad or "evolution" not in a.methods:
        ap.error(f"--methods: need evolution, from {', '.join(METHODS)} (got {a.methods})")
    if a.seeds < 1 or a.budget_s <= 0 or not 1 <= a.min_epochs <= a.max_epochs or a.eta < 2:
        ap.error("need --seeds >= 1, --budget-s > 0, 1 <= --min-epochs <= --max-epochs, --eta >= 2")
    return a


def config(method: str, seed: int, a: argparse.Namespace, runs: Path) -> dict[str, Any]:
    """The product config of one method's run."""
    cfg = base_config(
        f"{method}-s{seed}", seed, runs, a.quick, epochs=a.max_epochs, final_epochs=a.max_epochs
    )
    if method in MULTI:
        strategy = {
            "name": method,
            "options": {"min_epochs": a.min_epochs, "max_epochs": a.max_epochs, "eta": a.eta},
        }
    elif method == "evolution":
        pop = 4 if a.quick else 8
        strategy = {"name": "evolution", "options": {"population": pop, "tournament": 3}}
    else:
        strategy = {"name": "random"}
    cfg["strategy"] = strategy
    cfg["search"] = {
        "trials": 100_000,  # the wall-clock budget ends every run
        "time_budget_s": a.budget_s,
        "executor": "inline",
        "workers": 1,
    }
    cfg["automl"] = {"recipe": recipe_dims(a.recipe)}
    return cfg


def is_full(epochs: float | None, fraction: float | None, max_epochs: int) -> bool:
    """A full-fidelity trial: no budget (a plain strategy's, trained ``train.epochs``) or
    ``max_epochs`` on the whole training split."""
    return epochs is None or (epochs >= max_epochs and (fraction is None or fraction >= 1.0))


def full_fidelity_curve(run: RunResult, max_epochs: int) -> Curve:
    """``(seconds, best full-fidelity val acc so far)`` at each full-fidelity trial's finish:
    a trial without a budget (plain strategy, trained ``train.epochs``) or at ``max_epochs``
    on the whole training split."""
    curve: Curve = []
    best = -math.inf
    for t, acc, epochs, fraction, _ in run.trials:
        if is_full(epochs, fraction, max_epochs) and acc is not None and acc > best:
            best = acc
            curve.append((t, acc))
    return curve


def time_to_reach(curve: Curve, target: float) -> float:
    """First time the curve is at or above ``target`` (``inf``: never)."""
    return next((t for t, v in curve if v >= target - 1e-12), math.inf)


def last_finish(run: RunResult) -> float:
    return max((t for t, *_ in run.trials), default=math.nan)


def fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def plot(runs: list[RunResult], max_epochs: int, path: Path) -> Path | None:
    """Best full-fidelity val acc over wall time, one line per run, a colour per method and
    a line style per seed (solid, dashed, dash-dot)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib is not installed")
        return None
    colours = {"hyperband": "C0", "asha": "C1", "evolution": "C2", "random": "C3"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen: set[str] = set()
    for r in runs:
        curve = full_fidelity_curve(r, max_epochs)
        if not curve:
            continue
        xs = [t for t, _ in curve] + [last_finish(r)]
        ys = [v for _, v in curve] + [curve[-1][1]]
        label = r.method if r.method not in seen else None
        seen.add(r.method)
        dash = ("-", "--", "-.")[r.seed % 3]  # one line style per seed
        ax.step(xs, ys, where="post", color=colours.get(r.method), ls=dash, alpha=0.8, label=label)
    for r in runs:  # the goal's deadline: a third of each seed's evolution wall time
        if r.method == "evolution" and r.trials:
            ax.axvline(last_finish(r) * TARGET_FRACTION, color="C2", ls=":", lw=1)
    ax.set_xlabel("wall time since the run's first trial (s); dotted: 1/3 of evolution's")
    ax.set_ylabel(f"best val acc at {max_epochs} epochs")
    ax.set_title(f"multi-fidelity vs full fidelity (joint space) [{host()}]", fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    when = stamp()
    log = a.log or RESULTS / f"cpu_automl_fidelity_{when}{'_quick' if a.quick else ''}.log"
    start_log(log)
    warnings.filterwarnings("ignore")
    runs_root = work_dir(a.work, "automl_fidelity")
    t_all = time.perf_counter()
    print(
        f"goal 1: multi-fidelity vs full fidelity{' (quick)' if a.quick else ''}; methods "
        f"{', '.join(a.methods)}; {a.seeds} seed(s); {a.budget_s:g} s wall per run; epochs "
        f"{a.min_epochs}..{a.max_epochs}, eta {a.eta}; recipe {a.recipe}: "
        f"{json.dumps(recipe_dims(a.recipe))}"
    )
    print(f"host: {host()}; load average at start {loads()}; runs in {runs_root}")
    missing = [m for m in a.methods if not strategy_known(m)]
    for m in missing:
        print(f"strategy {m!r}: not registered in this checkout; skipped")
    methods = [m for m in a.methods if m not in missing]
    jobs = []
    for seed in range(a.seeds):  # the order rotates: no method always runs first
        order = methods[seed % len(methods) :] + methods[: seed % len(methods)]
        for m in order:
            jobs.append((config(m, seed, a, runs_root), runs_root / f"{m}-s{seed}", m, seed))

    def done(run: RunResult) -> None:
        curve = full_fidelity_curve(run, a.max_epochs)
        n_full = sum(is_full(e, f, a.max_epochs) for _, _, e, f, _ in run.trials)
        print(
            f"  seed {run.seed} {run.method:9s}: {len(run.trials)} trials, {n_full} at full "
            f"fidelity, best val {fmt(curve[-1][1] if curve else None)}, test "
            f"{fmt(run.test_acc)}, {run.wall_s:.0f} s with final; {run.stability}"
            + (f"; FAILED: {run.error}" if run.error else ""),
            flush=True,
        )

    runs = run_all(jobs, a.jobs, done)
    by = {(r.method, r.seed): r for r in runs}
    fractions: dict[str, list[float]] = {m: [] for m in methods if m != "evolution"}
    per_seed: list[dict[str, Any]] = []
    print("\nper seed: time to reach evolution's final best val acc (fraction of its wall time)")
    for seed in range(a.seeds):
        evo = by.get(("evolution", seed))
        evo_curve = full_fidelity_curve(evo, a.max_epochs) if evo else []
        if not evo or not evo_curve:
            print(f"  seed {seed}: evolution has no full-fidelity result; seed left out")
            continue
        target, wall = evo_curve[-1][1], last_finish(evo)
        row: dict[str, Any] = {"seed": seed, "target_val_acc": target, "evolution_wall_s": wall}
        parts = [
            f"target {target:.4f}, evolution wall {wall:.0f} s (reached at "
            f"{evo_curve[-1][0] / wall:.2f})"
        ]
        for m in fractions:
            r = by.get((m, seed))
            frac = (
                time_to_reach(full_fidelity_curve(r, a.max_epochs), target) / wall
                if r
                else math.inf
            )
            fractions[m].append(frac)
            row[m] = frac
            parts.append(f"{m} {fmt(frac, '.2f') if math.isfinite(frac) else 'never'}")
        per_seed.append(row)
        print(f"  seed {seed}: " + "; ".join(parts))
    print("\nfinal test accuracy (the product's final retrain of each method's chosen trial)")
    for m in methods:
        accs = [r.test_acc for r in runs if r.method == m and r.test_acc is not None]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        mean = statistics.fmean(accs) if accs else None
        print(f"  {m:9s}: mean {fmt(mean)} sd {sd:.4f} over {len(accs)} seed(s)")
    png = plot(runs, a.max_epochs, log.with_suffix(".png"))
    if png:
        print(f"plot: {png}")
    unstable = any(not r.stable for r in runs)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; load average at end: {loads()}")
    goals = []
    for m in MULTI:
        name = f"multi-fidelity {m}"
        if m not in a.methods:
            continue
        fr = fractions.get(m, [])
        if m in missing or not fr:
            why = "strategy not registered" if m in missing else "no seed with results"
            goals.append((name, False, f"not run: {why}", f"<= {TARGET_FRACTION:.2f}", False))
            continue
        med = statistics.median(fr)
        shown = f"{med:.2f}" if math.isfinite(med) else "never"
        goals.append(
            (
                name,
                med <= TARGET_FRACTION,
                f"median {shown} of full-fidelity evolution's wall time over {len(fr)} seed(s)",
                f"<= {TARGET_FRACTION:.2f}",
                unstable,
            )
        )
    record = {
        "args": {k: str(v) for k, v in vars(a).items()},
        "runs": [asdict(r) for r in runs],
        "per_seed": per_seed,
        "goals": goals,
    }
    log.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
    for g in goals:
        goal(*g[:4], unstable=g[4])
    print(f"log: {log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
