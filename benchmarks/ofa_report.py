"""Measurement and tables of ``benchmarks/ofa.py``: the chosen archs timed in one pass, then
one table and the goal lines per part (the goals are returned, printed last by the caller)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from ofa_setup import RESULTS
from oneshot_ranking import HEAD_FEATURES, STAGES, STEM_CHANNELS, StandaloneCache, train_standalone

from nasforge.hardware.noise import Stability
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import MODEL_TIMING, LatencyTable
from nasforge.hardware.timing import LatencyMeasurement, measure_models
from nasforge.oneshot.ranking import kendall_tau
from nasforge.space import Arch
from nasforge.spaces.mobile import MobileSpace
from nasforge.train import TrainConfig

#: part 1: extracted may be at most this far (accuracy, 0-1) below scratch on the mean
EXTRACT_TOL = 0.005
#: part 2: OFA's test accuracy may be at most this far below black-box's at a target
ACC_TOL = 0.005
COST_RATIO = 1 / 3
SPEC_SECONDS = 60.0
TAU_GOAL = 0.6
#: the part-4 figures (SPOS's tau on the same archs)
PART4_JSON = RESULTS / "oneshot_ranking_bigval_2026-12-01.json"

Goal = tuple[str, bool, str, str, bool]


@dataclass
class Measured:
    """The pass: a measurement per arch key, the held-out archs' errors, the pooled verdict."""

    by_key: dict[str, LatencyMeasurement]
    held_err_pct: list[float]
    stability: Stability
    statistic: str

    def ms(self, arch: dict[str, Any], space: MobileSpace) -> float:
        m = self.by_key.get(space.make(arch).key)
        return float("nan") if m is None else m.value_ms(self.statistic)


def arch_text(space: MobileSpace, arch: dict[str, Any]) -> str:
    """The arch on one line (``c8 s1 x2: ir_k3_e1_se_silu ... | ...``)."""
    lines = space.describe(space.make(arch)).splitlines()
    return " | ".join(line.split(": ", 1)[-1] for line in lines if line.startswith("stage"))


def measure_all(
    space: MobileSpace, table: LatencyTable, pred: LatencyPredictor, out: dict[str, Any]
) -> Measured:
    """Every deployed arch (OFA's and black-box's) and the table's held-out archs, measured
    interleaved in one pass as the builder timed whole models (same timing, statistic)."""
    archs: dict[str, Arch] = {}
    for r in out.get("ps", {}).get("targets", []):
        a = space.make(r["specialized"]["arch"])
        archs[a.key] = a
    for r in out.get("blackbox", []):
        if "arch" in r:
            a = space.make(r["arch"])
            archs[a.key] = a
    held = [space.make(Arch.from_json(p["arch"]).to_dict()) for p in table.held_out_points]
    todo = [*archs.values(), *held]
    print(
        f"\nmeasuring {len(archs)} deployed archs + {len(held)} held-out archs of the table "
        f"({table.backend.label}, batch {table.batch_size}), one interleaved pass",
        flush=True,
    )
    timing = replace(table.timing(MODEL_TIMING), seed=1)
    meas = measure_models(
        [space.build(a) for a in todo],
        table.input_shape,
        table.batch_size,
        table.backend,
        config=timing,
    )
    st = pred.statistic
    held_err = [
        100.0 * (pred.predict(a) - m.value_ms(st)) / m.value_ms(st)
        for a, m in zip(held, meas[len(archs) :])
    ]
    stab = Stability()
    for m in meas:
        stab = stab.merge(m.stability)
    if held_err:
        print(
            f"  held-out archs now: prediction error median {np.median(held_err):+.1f}%, range "
            f"{min(held_err):+.1f}..{max(held_err):+.1f}%; pass: "
            f"{'stable' if stab.stable else stab.label}"
        )
    return Measured(dict(zip(archs, meas)), held_err, stab, st)


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _unstable(ctx: dict[str, Any]) -> tuple[bool, Stability]:
    stab: Stability = ctx["built"]
    if ctx["measure"] is not None:
        stab = stab.merge(ctx["measure"].stability)
    return not stab.stable, stab


# -- part 1 --------------------------------------------------------------------------------------
def part1(out: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """Extracted vs fine-tuned vs scratch vs no-PS per part-1 target, and three goals."""
    space, meas = ctx["space"], ctx["measure"]
    ps, nops = out["ps"], out["nops"]
    rows = []
    print(
        f"\n## Part 1: specialised subnets (PS supernet {ps['train']['cpu_s']:.0f} CPU s, no-PS "
        f"{nops['train']['cpu_s']:.0f} CPU s, {ctx['config'].total_epochs} epochs each); "
        f"validation accuracy (4,049 samples); latency {meas.statistic} of the harness"
    )
    print(
        f"{'target':>8} {'pred':>8} {'measured':>9} {'window':>7} {'extracted':>9} "
        f"{'fine-tuned':>10} {'scratch':>8} {'noPS ext':>8} {'noPS ft':>8}"
    )
    for i, r in enumerate(ps["targets"][:3]):
        arch = r["specialized"]["arch"]
        t = r["target_ms"]
        m = meas.ms(arch, space)
        in_window = 0.9 * t <= m <= t
        no = out["nops_extracted"]["rows"][i]
        row = {
            "target_ms": t,
            "arch": arch_text(space, arch),
            "predicted_ms": r["specialized"]["predicted_latency_ms"],
            "measured_ms": m,
            "in_window": in_window,
            "under_limit": m <= t,
            "extracted": r["extracted"]["val"],
            "finetuned": r.get("finetuned", {}).get("val", math.nan),
            "scratch": out["scratch"][i]["acc"]["val"],
            "scratch_cpu_s": out["scratch"][i]["cpu_s"],
            "nops_extracted": no["extracted"]["val"],
            "nops_finetuned": no.get("finetuned", {}).get("val", math.nan),
            "feasible": r["specialized"]["feasible"],
        }
        rows.append(row)
        print(
            f"{t:8.4f} {row['predicted_ms']:8.4f} {m:9.4f} "
            f"{'in' if in_window else ('OVER' if m > t else 'under'):>7} "
            f"{row['extracted']:9.4f} {row['finetuned']:10.4f} {row['scratch']:8.4f} "
            f"{row['nops_extracted']:8.4f} {row['nops_finetuned']:8.4f}\n    {row['arch']}"
        )
    d_scr = [r["extracted"] - r["scratch"] for r in rows]
    d_ps = [r["extracted"] - r["nops_extracted"] for r in rows]
    n_in = sum(r["in_window"] for r in rows)
    unstable, stab = _unstable(ctx)
    if unstable:
        print(f"latency verdict: {stab.label}")
    goals: list[Goal] = [
        (
            "ofa extracted vs scratch (mean of 3 targets)",
            float(np.mean(d_scr)) >= -EXTRACT_TOL,
            f"mean {_pts(float(np.mean(d_scr)))} points; per target "
            + ", ".join(_pts(d) for d in d_scr),
            f">= {-100 * EXTRACT_TOL:.1f} points",
            False,
        ),
        (
            "ofa PS vs no-PS (mean of 3 targets)",
            float(np.mean(d_ps)) > 0,
            f"mean {_pts(float(np.mean(d_ps)))} points; per target "
            + ", ".join(_pts(d) for d in d_ps),
            "> 0 points",
            False,
        ),
        (
            "ofa latency in [0.9, 1.0] x target",
            n_in == len(rows),
            f"{n_in}/{len(rows)} in, {sum(r['under_limit'] for r in rows)}/{len(rows)} not above",
            f"{len(rows)}/{len(rows)}",
            unstable,
        ),
    ]
    return {"rows": rows, "goals": goals}


# -- part 2 --------------------------------------------------------------------------------------
def part2(out: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """Cost of train-once-deploy-many against N black-box searches, N = 3 and 5."""
    space, meas = ctx["space"], ctx["measure"]
    ps, bbs = out["ps"], out["blackbox"]
    fixed = ps["train"]["cpu_s"] + ps["predictor"]["cpu_s"]
    print(
        "\n## Part 2: train once, deploy many (CPU s of each job's process; test accuracy, "
        "1,840 samples)"
    )
    print(
        f"OFA once: supernet {ps['train']['cpu_s']:.0f} + subnet sample and predictor "
        f"{ps['predictor']['cpu_s']:.0f} CPU s (predictor cv tau "
        f"{ps['predictor']['cv_kendall_tau']:.3f}, MAE {ps['predictor']['cv_mae']:.4f})"
    )
    print(
        f"{'target':>8} | {'OFA spec':>8} {'ft':>5} {'lat':>7} {'test':>7} | "
        f"{'BB search':>9} {'retrain':>7} {'lat':>7} {'test':>7} | {'OFA-BB':>7}"
    )
    rows = []
    for r, b in zip(ps["targets"], bbs):
        spec_s = r["search_cpu_s"] + r["extract_cpu_s"]
        ofa_acc = r.get("finetuned", r["extracted"])["test"]
        row = {
            "target_ms": r["target_ms"],
            "ofa_arch": arch_text(space, r["specialized"]["arch"]),
            "ofa_spec_cpu_s": spec_s,
            "ofa_finetune_cpu_s": r["finetune_cpu_s"],
            "ofa_deploy_cpu_s": spec_s + r["finetune_cpu_s"],
            "ofa_measured_ms": meas.ms(r["specialized"]["arch"], space),
            "ofa_test": ofa_acc,
            "ofa_extracted_test": r["extracted"]["test"],
            "bb_arch": arch_text(space, b["arch"]) if "arch" in b else None,
            "bb_search_cpu_s": b["search_cpu_s"],
            "bb_final_cpu_s": b.get("final_cpu_s", math.nan),
            "bb_cpu_s": b["search_cpu_s"] + b.get("final_cpu_s", 0.0),
            "bb_measured_ms": meas.ms(b["arch"], space) if "arch" in b else math.nan,
            "bb_test": b.get("acc", {}).get("test", math.nan),
            "bb_trials": b.get("trials"),
        }
        rows.append(row)
        print(
            f"{row['target_ms']:8.4f} | {spec_s:8.1f} {r['finetune_cpu_s']:5.1f} "
            f"{row['ofa_measured_ms']:7.4f} {ofa_acc:7.4f} | {b['search_cpu_s']:9.0f} "
            f"{row['bb_final_cpu_s']:7.0f} {row['bb_measured_ms']:7.4f} {row['bb_test']:7.4f} | "
            f"{_pts(ofa_acc - row['bb_test']):>7}\n    OFA {row['ofa_arch']}"
            f"\n    BB  {row['bb_arch']}"
        )
    totals = {}
    for n in (3, 5):
        if len(rows) < n:
            continue
        ofa = fixed + sum(r["ofa_deploy_cpu_s"] for r in rows[:n])
        bb = sum(r["bb_cpu_s"] for r in rows[:n])
        ok = sum(r["ofa_test"] >= r["bb_test"] - ACC_TOL for r in rows[:n])
        totals[n] = {"ofa_cpu_s": ofa, "bb_cpu_s": bb, "ratio": ofa / bb, "acc_ok": ok == n}
        print(
            f"N = {n}: OFA {ofa:.0f} CPU s vs black-box {bb:.0f} CPU s: {ofa / bb:.2f}x; OFA "
            f"test accuracy >= black-box - {100 * ACC_TOL:.1f} point at {ok}/{n} targets"
        )
    worst = max(r["ofa_spec_cpu_s"] for r in rows)
    per_sample = ps["predictor"]["cpu_s"] / max(1, len(rows))
    goals: list[Goal] = []
    if 5 in totals:
        t5 = totals[5]
        n_ok = sum(r["ofa_test"] >= r["bb_test"] - ACC_TOL for r in rows[:5])
        goals.append(
            (
                "ofa deploy-many cost at N=5",
                t5["ratio"] <= COST_RATIO and t5["acc_ok"],
                f"{t5['ratio']:.2f}x ({t5['ofa_cpu_s']:.0f} vs {t5['bb_cpu_s']:.0f} CPU s), "
                f"test accuracy within tolerance at {n_ok}/5 targets",
                f"<= {COST_RATIO:.2f}x, accuracy >= black-box - {100 * ACC_TOL:.1f} at 5/5",
                False,
            )
        )
    goals.append(
        (
            "ofa specialisation time per target",
            worst < SPEC_SECONDS,
            f"max {worst:.1f} CPU s (search + extraction; one-time subnet sample "
            f"{ps['predictor']['cpu_s']:.0f} s, {per_sample:.0f} s per target over {len(rows)})",
            f"< {SPEC_SECONDS:.0f} s",
            False,
        )
    )
    return {"rows": rows, "totals": totals, "fixed_cpu_s": fixed, "goals": goals}


# -- part 3 --------------------------------------------------------------------------------------
def part3(
    out: dict[str, Any], ctx: dict[str, Any], archs: list[Arch], args: argparse.Namespace
) -> dict[str, Any]:
    """Kendall tau of the PS supernet's inherited accuracy against part 4's stand-alone."""
    space = ctx["space"]
    recipe = TrainConfig(epochs=20, lr=0.05, batch_size=64, optimizer="sgd")
    setting = {
        "data": {"name": "mnist1d", "samples": args.samples, "val_fraction": args.val_fraction},
        "space": {"stages": STAGES, "stem": STEM_CHANNELS, "head": HEAD_FEATURES},
        "recipe": recipe.model_dump(exclude={"seed"}),
        "split": "val",
    }
    cache = StandaloneCache(json.loads(json.dumps(setting)), RESULTS)
    # trains only what the cache lacks (nothing, with part 4's cache for this setting)
    runs, sa_cpu, fresh = train_standalone(space, ctx["dataset"], archs, recipe, (0, 1), cache)
    mean = [float(np.mean(v)) for v in zip(*runs)]
    inh = out["ps"]["ranking"]["val_acc"]
    tau = kendall_tau(inh, mean)
    ceiling = kendall_tau(runs[0], runs[1])
    spos = math.nan
    if PART4_JSON.is_file():
        p4 = json.loads(PART4_JSON.read_text())
        idx = {space.make(a).key: i for i, a in enumerate(p4["archs"])}
        if all(a.key in idx for a in archs):
            uni = p4["supernet"]["uniform"]["val_acc"]
            spos = kendall_tau([uni[idx[a.key]] for a in archs], mean)
    print(
        f"\n## Part 3: ranking, {len(archs)} archs of part 4 (stand-alone: 2 seeds x 20 epochs, "
        f"{fresh} trained now, {sa_cpu:.0f} CPU s in all incl. cached); scoring "
        f"{out['ps']['ranking']['cpu_s']:.0f} CPU s"
    )
    print(f"  {'ranker':<34} {'tau vs mean':>11} {'vs seed A':>9} {'vs seed B':>9}")
    print(
        f"  {'OFA supernet (PS), inherited':<34} {tau:>+11.3f} {kendall_tau(inh, runs[0]):>+9.3f} "
        f"{kendall_tau(inh, runs[1]):>+9.3f}"
    )
    print(f"  {'SPOS uniform (part 4, same archs)':<34} {spos:>+11.3f}")
    print(f"  {'seed A vs seed B (ceiling)':<34} {'':>11} {'':>9} {ceiling:>+9.3f}")
    goals: list[Goal] = [
        (
            "ofa ranking tau",
            tau >= TAU_GOAL,
            f"tau {tau:.3f}, SPOS {spos:.3f}, seed-to-seed {ceiling:.3f}, {len(archs)} archs",
            f">= {TAU_GOAL} (part 4's bar)",
            False,
        )
    ]
    return {
        "tau": tau,
        "spos_tau": spos,
        "seed_to_seed": ceiling,
        "inherited": inh,
        "standalone": runs,
        "n": len(archs),
        "goals": goals,
    }
