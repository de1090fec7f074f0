"""Issue 15, goal 3: does the compound-scaling family dominate single-dimension scaling?

``python benchmarks/automl_scaling.py [--quick]`` runs the product's ``nasforge scale``
(:class:`nasforge.experiment.scaling.ScalingRun` on a config validated by ``parse_config``):
a grid of (alpha, beta, gamma) with alpha * beta^2 * gamma^2 near 2 at phi = 1 on a small
base arch of the ``mobile`` space, the family B0..Bk, and width-, depth- and resolution-only
scaling placed at the family's measured latencies (torch eager, batch 1, one thread). Every
accuracy is measured (test split, once per model, after the search decisions on the
validation split), every latency measured with the harness's noise verdict.

Data: mnist1d (1-D signals of length 40, 10 classes): a net trains in seconds on one core
and capacity matters (accuracy keeps rising with size at a few epochs), and the signal's
length gives resolution scaling something to resample. Base: the product's default B0 (two
blocks per stage of the default four stages, width 1.0, kernel 3, expansion 3).

Goal: at each family point's latency, every baseline's accuracy interpolated at that latency
is at most the family's (:func:`nasforge.experiment.scaling_report.dominance`). A latency the
harness flagged unstable (busy host) makes the goal line say so, never ``met``.
Results: ``results/cpu_automl_scaling_<stamp>[_quick].{log,json,png}``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from automl_common import RESULTS, loads, stamp, start_log  # noqa: E402
from goals import goal, host  # noqa: E402
from rich.console import Console  # noqa: E402

from nasforge.experiment.config import parse_config  # noqa: E402
from nasforge.experiment.scaling import RESULTS_NAME, ScalingRun  # noqa: E402
from nasforge.experiment.scaling_report import PLOT_NAME, curves  # noqa: E402


def config(quick: bool, seed: int) -> dict[str, Any]:
    """The product config the benchmark runs (quick: the smoke-test size)."""
    grid = (
        {"alpha": [1.2, 1.3], "beta": [1.1], "gamma": [1.1, 1.15]}
        if quick
        else {
            "alpha": [1.1, 1.2, 1.3, 1.4],
            "beta": [1.0, 1.05, 1.1, 1.15],
            "gamma": [1.0, 1.1, 1.15, 1.2, 1.3],
        }
    )
    return {
        "name": "automl-scaling",
        "seed": seed,
        "data": {"name": "mnist1d", "samples": 2000 if quick else 4000},
        "space": {"name": "mobile"},
        "train": {"epochs": 5 if quick else 12, "batch_size": 32, "lr": 0.05},
        "latency": {"backend": "torch", "threads": 1, "repeats": 20, "warmup": 3},
        "scaling": {
            "grid": grid,
            "tol": 0.25 if quick else 0.15,
            "max_points": 2 if quick else 6,
            "phis": 2 if quick else 3,
            "seeds": 1 if quick else 2,
            "ladder": 6 if quick else 12,
        },
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke-test size (a few minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin", type=float, default=0.0, help="accuracy slack in the check")
    ap.add_argument(
        "--run-dir", type=Path, default=None, help="keep the scaling run here (default: a temp dir)"
    )
    ap.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    name = f"cpu_automl_scaling_{stamp()}{'_quick' if a.quick else ''}"
    start_log(RESULTS / f"{name}.log")
    print(f"goal 3 (compound scaling){' quick' if a.quick else ''}; host: {host()}")
    print(f"load average at start {loads()}")
    t0 = time.perf_counter()
    cfg = parse_config(config(a.quick, a.seed), "automl_scaling")
    with tempfile.TemporaryDirectory(prefix="nasforge-scaling-") as tmp:
        run_dir = a.run_dir or Path(tmp) / "run"
        summary = ScalingRun(cfg, run_dir, Console(stderr=True, width=120)).run(a.resume)
        shutil.copy(run_dir / RESULTS_NAME, RESULTS / f"{name}.json")
        if (run_dir / PLOT_NAME).is_file():
            shutil.copy(run_dir / PLOT_NAME, RESULTS / f"{name}.png")
    r = summary.results
    print(f"scaling run: {time.perf_counter() - t0:.0f} s; load average at end {loads()}")
    for line in summary.lines():
        print(line)
    cs = curves(r, "test_acc")
    print("\ncurve       point      latency ms  test acc  val acc")
    for curve, rows in cs.items():
        for label, lat, acc in rows:
            key = next(
                m["key"]
                for m in (r["family"] if curve == "family" else r["baselines"][curve])
                if m["label"] == label
            )
            p = r["points"][key]
            flag = " unstable" if p.get("latency_unstable") else ""
            print(f"{curve:<11} {label:<10} {lat:>10.3f}  {acc:>8.4f}  {p['val_acc']:>7.4f}{flag}")
    # why a curve reaches where it does: latency per multiplier, measured untrained in one
    # interleaved run with the family (the placement step's ladders)
    ladders = r.get("ladders", {})
    b0 = (r.get("placement_family_ms") or [r["points"][r["family"][0]["key"]]["latency_ms"]])[0]
    for dim, rows in ladders.items():
        steps = ", ".join(f"x{m:.2f}: {lat / b0:.2f}" for m, lat in rows[:: max(1, len(rows) // 4)])
        print(f"latency / B0's along the {dim} ladder: {steps}")
    dom = r["dominance"]
    parts, ok_all, compared_all = [], True, 0
    for dim in ("width", "depth", "resolution"):
        d = dom.get(dim)
        if d is None:
            continue
        comps = [c for c in d["comparisons"] if c["ok"] is not None]
        worse = [c for c in comps if c["baseline_acc"] - c["family_acc"] > a.margin]
        ok_all &= bool(comps) and not worse
        compared_all += len(comps)
        gaps = [c["baseline_acc"] - c["family_acc"] for c in comps]
        worst = f"worst baseline-family {100 * max(gaps):+.1f} pt" if gaps else "none compared"
        parts.append(
            f"{dim}-only {len(comps) - len(worse)}/{len(comps)} of {len(d['comparisons'])} "
            f"family points in its latency range ({worst})"
        )
    keys = {f["key"] for f in r["family"]} | {
        m["key"] for ms in r["baselines"].values() for m in ms
    }
    unstable = any(r["points"][k].get("latency_unstable") for k in keys)
    goal(
        "compound scaling dominates",
        ok_all and compared_all > 0,
        "family >= baseline at equal measured latency: " + ", ".join(parts),
        "all points of every baseline",
        unstable=unstable,
    )
    print(f"results: {RESULTS / (name + '.json')}, plot {RESULTS / (name + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
