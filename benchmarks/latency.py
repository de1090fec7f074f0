"""Latency-table goals (issues 4 and 10), one GOAL line per goal, every figure with its host
and its stability.

Goals (printed, never asserted):
  1. ``mobile`` space, torch and onnxruntime (1 thread), batch 1 and batch 32, 100 random archs
     (``--quick``: 30): >= 95% of predictions within +-10% of measured and Kendall tau >= 0.9
     (one GOAL line per backend and batch); FLOPs (linear fit on the same calibration models)
     printed beside.
  2. ``nb201`` on ``torch:parallel`` (cell ops forked onto 2 inter-op threads), batch 16 and
     batch 1: the parallel-aware prediction (the predictor's ``auto`` mode: ``schedule`` where
     the table measured branches overlapping, else ``schedule`` scored anyway, which then
     equals the sum) beats the plain sum AND its MAPE is <= 8%. onnxruntime's parallel mode runs
     CPU branches one after another since 1.14; the ``nb201-ort`` part shows it as a contrast
     (no goal).
  3. ``predict`` speed >= 20,000 archs/s.
  4. Each ``mobile`` table built fresh in this run builds in < 10 minutes on 2 cores.
  5. ``--burner``: with ``benchmarks/burner.py`` busy-looping on one of the two CPUs, every
     table of goals 1-2 is validated again on the same archs (one GOAL line per table). Met
     when the figure is the same (within-10% fraction within 5 points of the quiet run, tau
     within 0.05) or the harness marked it unstable; NOT MET when it moved and is still called
     stable (a silently wrong figure). A table whose quiet figure was itself unstable has no
     reference: its burner line is NOT MET, unstable.

Stability: every figure carries the noise verdict of the measurements behind it: the
:class:`~nasforge.hardware.validate.ValidationReport`'s own ``stability`` where it has one,
else the verdicts of the whole-model measurements it took (``LatencyMeasurement.stability``:
host counters, reference kernel, round spread), pooled (``figures.pooled_stability``). A figure
from a table whose ``build_stability`` says it was built on a busy host is unstable too. Predict
speed and build time, not timed by the harness, are judged on what other processes took from
the CPUs meanwhile (``figures.activity_stability``). An unstable figure's goal prints ``NOT MET
(... unstable: host busy ...)``. The load average at start and end is printed as context only.
The host (CPU model, logical CPUs, the ISA flags that pick oneDNN / onnxruntime kernels, load)
is on every GOAL line, every figure in ``--json`` and the ``--markdown`` block.

Batch 32: the builder times entries and whole models with fewer calls from
``BuildConfig.large_batch`` on (``large_batch_repeats``), and validation times whole models as
the builder did, in quick and full runs alike.

Usage and durations (estimated for a quiet 2-core host from the parts' timings; on a busy host
unstable passes are measured again, so it takes longer)::

    .venv/bin/python benchmarks/latency.py --quick              # 30 archs, ~15 min
    .venv/bin/python benchmarks/latency.py --quick --burner     # + burner, ~20 min
    .venv/bin/python benchmarks/latency.py                      # 100 archs + burner, ~40 min
    .venv/bin/python benchmarks/latency.py --no-burner          # 100 archs, ~25 min
    .venv/bin/python benchmarks/latency.py --only nb201 --n 5   # one part (see PARTS)
    ... --tables DIR (keep / reuse tables) --json F --markdown F (a BENCHMARKS.md block)
    ... --wait-quiet 300   # on a shared VM: wait up to 5 min for a quiet host before each
                           # timing pass (NoisePolicy.wait_quiet_s; default 0: measure at once)

The full run includes the burner by default, as it stays well under an hour; ``--quick`` leaves
it out unless ``--burner`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from burner import burner  # benchmarks/burner.py: with burner(cores=1): one CPU kept busy
from figures import (  # benchmarks/figures.py: figures with their verdict and host
    Ledger,
    activity_stability,
    brief,
    build_stability,
    commit,
    markdown_block,
    pooled_stability,
    validate,
)
from goals import (
    add_wait_quiet,
    host,
    host_record,
)  # benchmarks/goals.py: one GOAL line format with the host

from nasforge.hardware.backends import BackendSpec
from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.entries import TableEntry
from nasforge.hardware.noise import HostSample, Stability
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import MODEL_TIMING, LatencyTable
from nasforge.hardware.timing import TimingConfig, measure_models
from nasforge.hardware.validate import Score, ValidationReport, plot_validation
from nasforge.space import SearchSpace
from nasforge.spaces import create_space
from nasforge.spaces.nb201 import NB201Space

SHAPE = (3, 32, 32)
PARTS = ("mobile-torch", "mobile-ort", "nb201", "nb201-ort", "speed")
#: the burner check: a figure is "the same" when within-10% moves by at most this many points
#: and Kendall tau by at most BURNER_TAU
BURNER_POINTS = 5.0
BURNER_TAU = 0.05


@dataclass(frozen=True)
class Check:
    """A goal table validated quietly; the burner part validates it again on the same archs."""

    name: str
    table: LatencyTable
    space: SearchSpace
    n: int
    seed: int
    timing: TimingConfig
    aggregation: str
    score: Score
    stability: Stability


@dataclass
class LatencyRun(Ledger):
    """The run's figures and goals, plus the goal tables the burner part validates again."""

    checks: list[Check] = field(default_factory=list)
    #: seconds each timing pass waits for a quiet host first (``--wait-quiet``; 0: none)
    wait_quiet_s: float = 0.0


# -- helpers ---------------------------------------------------------------------------------------
def _score_text(s: Score) -> str:
    return f"{100 * s.within_10pct:.0f}% within +-10%, MAPE {s.mape:.1f}%, tau {s.kendall_tau:.2f}"


def _accuracy_target(s: Score) -> bool:
    return s.within_10pct >= 0.95 and s.kendall_tau >= 0.9


def _build(
    space: SearchSpace, spec: BackendSpec, batch: int, path: Path, wait_quiet_s: float = 0.0
) -> tuple[LatencyTable, float, HostSample, TimingConfig]:
    """Build (or complete) the table at ``path`` with the builder's defaults, each timing
    pass waiting up to ``wait_quiet_s`` for a quiet host; returns it, the seconds taken, the
    host sample at the start and how the builder timed whole models (fewer calls at a large
    batch: :attr:`BuildConfig.large_batch`; with the same wait), which validation then uses."""
    start = HostSample.take()
    t0 = time.perf_counter()
    config = BuildConfig(timing=BuildConfig().timing.waiting(wait_quiet_s))
    builder = TableBuilder(space, spec, batch, config, progress=sys.stderr.isatty())
    table = builder.build(path)
    timing: TimingConfig = getattr(builder, "model_timing", MODEL_TIMING)
    return table, time.perf_counter() - t0, start, timing


def _report(title: str, report: ValidationReport, stab: Stability, led: Ledger, key: str) -> None:
    print(f"\n== {title}")
    for line in report.lines(["min", "median"]):
        print(line)
    print(f"  figure stability: {brief(stab)}")
    led.results[key] = {
        "scores": {st: [s.__dict__ for s in report.scores[st]] for st in report.scores},
        "drift": report.drift,
        "stability": stab.to_dict(),
    }


def _held_out(
    led: Ledger, name: str, table: LatencyTable, agg: str, built: Stability | None
) -> None:
    """The table's own held-out score from its build, where the builder recorded one."""
    acc = getattr(table, "accuracy", {}).get(f"{table.statistic}/{agg}")
    if not acc:
        print("  table's own held-out accuracy: not recorded by the builder")
        return
    text = (
        f"{100 * acc['within_10pct']:.0f}% within +-10%, MAPE {acc['mape']:.1f}%, "
        f"tau {acc['kendall_tau']:.2f} on {acc['n']:.0f} held-out models"
    )
    stab = built or Stability(stable=False, reasons=("no build verdict recorded in the table",))
    led.figure(f"{name} held-out at build ({agg})", text, stab, **acc)


# -- the parts -------------------------------------------------------------------------------------
def mobile(
    led: LatencyRun, backend: str, batch: int, n: int, tables: Path, plots: Path | None
) -> None:
    """Goals 1 and 4 on one backend and batch size: build (timed), validate, record."""
    space = create_space("mobile", SHAPE, 10)
    spec = BackendSpec.parse(backend, threads=1)
    path = tables / f"mobile_{spec.name}_b{batch}.json"
    name = f"mobile {spec.label} b{batch}"
    fresh = not path.exists()
    table, seconds, start, model_timing = _build(space, spec, batch, path, led.wait_quiet_s)
    built = build_stability(table, start if fresh else None)
    how = f"built in {seconds:.0f} s" if fresh else f"reused from {path} ({seconds:.0f} s)"
    cal = table.calibration.get(f"{table.statistic}/sum")
    fit = f"{cal.slope:.3f} x + {cal.intercept_ms:.4f} ms" if cal else "none"
    print(
        f"\n[{spec.label}, batch {batch}] mobile table: {len(table.entries)} layers, {how}, "
        f"clock {table.clock}, context {table.context}, whole models timed with "
        f"{model_timing.repeats} calls; "
        f"calibration ({table.statistic}/sum): {fit}; "
        f"build: {brief(built) if built else 'verdict not recorded'}"
    )
    if fresh:
        stab = built or Stability()
        led.figure(f"{name} table build", f"{seconds / 60:.1f} min", stab, seconds=seconds)
        led.goal(
            f"{name} table build",
            seconds < 600,
            f"{seconds / 60:.1f} min",
            "< 10 min",
            not stab.stable,
        )
    report, stab = validate(table, space, n, 1, model_timing)
    agg = report.mode
    _held_out(led, name, table, agg, built)
    _report(f"goal 1: {name}, {n} archs", report, stab, led, f"mobile_{spec.name}_b{batch}")
    for st in ("min", "median"):
        f = report.score_of("flops", st)
        for s in report.scores[st]:
            if s.predictor not in (f"table:{agg}", f"table:{agg}+drift"):
                continue
            print(
                f"  goal 1 [{st}, {s.predictor}]: {_score_text(s)} -> "
                f"{'MET' if _accuracy_target(s) else 'NOT MET'}; FLOPs: {_score_text(f)}"
            )
    s = report.score_of(f"table:{agg}")
    led.figure(f"{name} ({report.statistic}, {agg})", _score_text(s), stab, **s.__dict__)
    f = report.score_of("flops")
    led.figure(f"{name} FLOPs as predictor", _score_text(f), stab, **f.__dict__)
    led.goal(
        f"{name} prediction",
        _accuracy_target(s),
        f"{100 * s.within_10pct:.0f}% within +-10%, tau {s.kendall_tau:.2f}",
        ">= 95%, tau >= 0.9",
        not stab.stable,
    )
    led.checks.append(Check(name, table, space, n, 1, model_timing, agg, s, stab))
    if plots is not None:
        print(f"  plot: {plot_validation(report, plots / f'mobile_{spec.name}_b{batch}.png')}")


def nb201(
    led: LatencyRun,
    backend: str,
    n: int,
    threads: int,
    batch: int,
    tables: Path,
    plots: Path | None,
    is_goal: bool,
) -> None:
    """Goal 2 (or, with ``is_goal`` false, a contrast): nb201 on a parallel backend."""
    space = create_space("nb201", SHAPE, 10)
    spec = BackendSpec.parse(backend, threads=threads)
    key = f"nb201_{spec.label.replace(':', '_')}_{threads}t_b{batch}"
    name = f"nb201 {spec.label} {threads}t b{batch}"
    path = tables / f"{key}.json"
    fresh = not path.exists()
    table, seconds, start, model_timing = _build(space, spec, batch, path, led.wait_quiet_s)
    built = build_stability(table, start if fresh else None)
    pred = LatencyPredictor(table, space)
    print(
        f"\n[{spec.label}, {threads} threads, batch {batch}] nb201 table: {len(table.entries)} "
        f"layers in {seconds:.0f} s, clock {table.clock}; measured speedup of two independent "
        f"branches: {table.parallel_speedup:.2f}x -> auto mode predicts with {pred.mode} "
        f"({pred.workers} worker(s)); build: {brief(built) if built else 'verdict not recorded'}"
    )
    report, stab = validate(table, space, n, 2, model_timing)
    agg = report.mode if report.mode != "sum" else "schedule"
    title = "goal 2" if is_goal else "contrast (not a goal)"
    _held_out(led, name, table, agg, built)
    _report(f"{title}: {name}, {n} archs", report, stab, led, key)
    for st in ("min", "median"):
        cp, sm, sc = (
            report.score_of(f"table:{a}", st) for a in ("critical_path", "sum", "schedule")
        )
        print(
            f"  {title} [{st}]: schedule on {pred.workers} worker(s) MAPE {sc.mape:.2f}% "
            f"(tau {sc.kendall_tau:.3f}, {100 * sc.within_10pct:.0f}% within +-10%), "
            f"critical path {cp.mape:.2f}% (tau {cp.kendall_tau:.3f}), "
            f"sum {sm.mape:.2f}% (tau {sm.kendall_tau:.3f})"
        )
    s, sm = report.score_of(f"table:{agg}"), report.score_of("table:sum")
    cp = report.score_of("table:critical_path")
    for label, sc in ((agg, s), ("critical_path", cp), ("sum", sm)):
        led.figure(f"{name} ({report.statistic}, {label})", _score_text(sc), stab, **sc.__dict__)
    if is_goal:
        led.goal(
            f"{name} {agg} beats sum, MAPE <= 8%",
            s.mape < sm.mape and s.mape <= 8.0,
            f"{agg} {s.mape:.1f}% vs sum {sm.mape:.1f}% MAPE, critical path {cp.mape:.1f}%",
            "< sum and <= 8% MAPE",
            not stab.stable,
        )
        led.checks.append(Check(name, table, space, n, 2, model_timing, agg, s, stab))
    if spec.name == "torch":  # the same archs on eager torch, 1 thread: what forking buys
        archs = [space.make(json.loads(a)["values"]) for a in report.archs[:20]]
        seq = measure_models(
            [space.build(a) for a in archs],
            SHAPE,
            batch,
            BackendSpec("torch", threads=1),
            config=TimingConfig(warmup=3, repeats=15, rounds=3, clock="wall").waiting(
                led.wait_quiet_s
            ),
        )
        ratio = float(np.median([m.min_ms for m in seq]) / np.median(report.measured["min"][:20]))
        led.figure(
            f"{name} vs eager torch 1 thread (20 archs, min)",
            f"{ratio:.2f}x faster",
            pooled_stability(seq).merge(stab),
            ratio=ratio,
        )
    if (table.parallel_speedup or 0) < 1.3:
        print(
            "  (this backend ran independent branches one after another, so the sum is the "
            "right model here and auto uses it)"
        )
    if plots is not None:
        print(f"  plot: {plot_validation(report, plots / f'{key}.png')}")


def speed(led: Ledger) -> None:
    """Predictions per second with synthetic tables (no measurement needed): the cost of
    screening, after the arch has been sampled."""
    print("\n== goal 3: predict speed (archs sampled beforehand; nb201 cold = every cell new)")
    for name, count, workers in (
        ("mobile", 100_000, 1),
        ("nb201", 15_625, 1),
        ("nb201", 15_625, 2),
        ("darts", 20_000, 1),
        ("darts", 20_000, 2),
    ):
        space = create_space(name, SHAPE, 10)
        rng = np.random.default_rng(0)
        entries = {
            lay.key: TableEntry(v, v, v, v, 30)
            for lay in space.all_layers()
            for v in [float(rng.uniform(0.01, 1))]
        }
        backend = BackendSpec(
            "torch", threads=workers, execution_mode="parallel" if workers > 1 else "sequential"
        )
        table = LatencyTable(
            space={"name": name, "input_shape": list(SHAPE), "num_classes": 10, "options": {}},
            backend=backend,
            batch_size=1,
            fingerprint={},
            entries=entries,
            parallel_speedup=2.0 if workers > 1 else None,
        )
        archs = (
            list(space.all_archs())
            if isinstance(space, NB201Space)
            else [space.sample(rng) for _ in range(count)]
        )
        pred = LatencyPredictor(table, space)
        start = HostSample.take()
        t0 = time.perf_counter()
        pred.predict_many(archs)
        cold = len(archs) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        pred.predict_many(archs)
        warm = len(archs) / (time.perf_counter() - t0)
        stab = activity_stability(start, 1)
        label = f"{name} ({pred.mode}, {workers} worker(s))"
        led.figure(
            f"predict speed {label}",
            f"{cold:,.0f} archs/s first pass, {warm:,.0f} again ({len(archs):,d} archs)",
            stab,
            first_pass=cold,
            again=warm,
        )
        led.goal(
            f"predict speed {label}",
            cold >= 20_000,
            f"{cold:,.0f} archs/s",
            ">= 20,000 archs/s",
            not stab.stable,
        )


def burner_checks(led: LatencyRun) -> None:
    """Goal 5: every goal table validated again with one CPU kept busy."""
    if not led.checks:
        print("\n== burner: no goal table was validated in this run; nothing to re-validate")
        return
    target = f"same accuracy (+-{BURNER_POINTS:.0f} points, tau +-{BURNER_TAU}) or marked unstable"
    with burner(cores=1) as cpus:
        print(f"\n== goal 5: the same tables and archs with a busy loop pinned to CPU(s) {cpus}")
        for c in led.checks:
            # no wait for a quiet host here: the burner keeps it busy on purpose, so every
            # pass would spend the whole wait and measure anyway
            report, stab = validate(c.table, c.space, c.n, c.seed, c.timing.waiting(0))
            s = report.score_of(f"table:{c.aggregation}")
            _report(f"burner: {c.name}, {c.n} archs", report, stab, led, f"burner {c.name}")
            led.figure(
                f"{c.name} under burner ({c.aggregation})", _score_text(s), stab, **s.__dict__
            )
            dw = 100 * abs(s.within_10pct - c.score.within_10pct)
            dtau = abs(s.kendall_tau - c.score.kendall_tau)
            moved = (
                f"{100 * c.score.within_10pct:.0f}% -> {100 * s.within_10pct:.0f}% within +-10%, "
                f"tau {c.score.kendall_tau:.2f} -> {s.kendall_tau:.2f}"
            )
            if not c.stability.stable:
                led.goal(
                    f"burner {c.name}", False, f"quiet reference unstable; {moved}", target, True
                )
            elif not stab.stable:
                led.goal(f"burner {c.name}", True, f"marked unstable; {moved}", target, False)
            else:
                same = dw <= BURNER_POINTS and dtau <= BURNER_TAU
                what = "stable and the same" if same else "called stable but moved"
                led.goal(f"burner {c.name}", same, f"{what}: {moved}", target, False)


# -- output ----------------------------------------------------------------------------------------
def _loads() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "unknown"


def _run_parts(led: LatencyRun, args: argparse.Namespace, n: int, tables: Path) -> None:
    parts = args.only or list(PARTS)
    for backend, part in (("torch", "mobile-torch"), ("onnxruntime", "mobile-ort")):
        if part in parts:
            for batch in args.mobile_batch:
                mobile(led, backend, batch, n, tables, args.plots)
    if "nb201" in parts:
        for batch in args.nb201_batch:
            nb201(led, "torch:parallel", n, args.nb201_threads, batch, tables, args.plots, True)
    if "nb201-ort" in parts:
        nb201(led, "onnxruntime:parallel", n, args.nb201_threads, 1, tables, args.plots, False)
    if "speed" in parts:
        speed(led)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="archs measured whole per check (100)")
    ap.add_argument("--quick", action="store_true", help="30 archs per check, no burner")
    ap.add_argument("--tables", type=Path, default=None, help="folder to keep / reuse tables")
    ap.add_argument(
        "--plots", type=Path, default=None, help="folder for predicted-vs-measured PNGs"
    )
    ap.add_argument("--json", type=Path, default=None, help="write all numbers as JSON")
    ap.add_argument("--markdown", type=Path, default=None, help="write a BENCHMARKS.md block")
    ap.add_argument("--mobile-batch", type=int, nargs="+", default=[1, 32], help="goal 1 batches")
    ap.add_argument("--nb201-threads", type=int, default=2, help="inter-op threads for goal 2")
    ap.add_argument("--nb201-batch", type=int, nargs="+", default=[16, 1], help="goal 2 batches")
    ap.add_argument("--only", choices=PARTS, action="append", help="run only these parts")
    ap.add_argument(
        "--burner",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-validate every goal table with one CPU busy (default: on, off with --quick)",
    )
    add_wait_quiet(ap)
    args = ap.parse_args()
    if not args.wait_quiet >= 0:  # also refuses nan
        ap.error(f"--wait-quiet: seconds must be >= 0, got {args.wait_quiet}")
    for flag, values in (
        ("--mobile-batch", args.mobile_batch),
        ("--nb201-batch", args.nb201_batch),
    ):
        if any(b < 1 for b in values):
            ap.error(f"{flag}: batch sizes must be >= 1, got {values}")
    if args.n is not None and args.n < 2:
        ap.error(f"--n: need at least 2 archs for a rank correlation, got {args.n}")
    if args.nb201_threads < 1:
        ap.error(f"--nb201-threads: must be >= 1, got {args.nb201_threads}")
    n = args.n if args.n is not None else (30 if args.quick else 100)
    use_burner = args.burner if args.burner is not None else not args.quick
    tables = args.tables or Path(tempfile.mkdtemp(prefix="nasforge-latency-"))
    tables.mkdir(parents=True, exist_ok=True)
    if args.plots is not None:
        args.plots.mkdir(parents=True, exist_ok=True)
    led = LatencyRun(wait_quiet_s=args.wait_quiet)
    rec = host_record()
    load_start = _loads()
    print(f"host: {host()}; allocator {rec['allocator']}, torch {rec['torch']}, ", end="")
    print(f"onnxruntime {rec['onnxruntime']}; {n} archs per check; tables in {tables}")
    print(f"load average {load_start} at start (context only, not a verdict)")
    led.results.update(
        {
            "host": rec,
            "n": n,
            "load_start": load_start,
            "burner": use_burner,
            "wait_quiet_s": args.wait_quiet,
        }
    )
    t0 = time.perf_counter()
    _run_parts(led, args, n, tables)
    if use_burner:
        burner_checks(led)
    seconds = time.perf_counter() - t0
    load_end = _loads()
    print(f"\nload average {load_end} at end; whole run {seconds:.0f} s")
    lines = led.goal_lines()
    for line in lines:
        print(line)
    led.results.update({"load_end": load_end, "seconds": seconds, "goals": lines})
    if args.json is not None:
        args.json.write_text(json.dumps(led.results, indent=1, default=str))
    if args.markdown is not None:
        context = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit(),
            "load_start": load_start,
            "load_end": load_end,
            "n": n,
            "minutes": seconds / 60,
        }
        command = "python benchmarks/latency.py " + " ".join(sys.argv[1:])
        args.markdown.write_text(markdown_block(led, lines, context, command.strip()))
        print(f"markdown block: {args.markdown}")


if __name__ == "__main__":
    main()
