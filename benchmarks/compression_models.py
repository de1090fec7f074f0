"""The models people bring, compressed by nasforge and by the peers in one run (issue 14).

``python benchmarks/compression.py --models resnet18,mobilenet_v2,efficientnet_b0,vit_tiny
[--quick]`` (or this file directly). For every model of :data:`nasforge.compression.zoo.MODELS`
(10 classes, 3x32x32):

1. train briefly on mnist5k adapted to 3x32x32 (``nasforge.data.adapt_input``); the weights are
   cached under ``$TMPDIR/nasforge_bench_models`` keyed by the recipe (a ``state_dict`` read
   back with ``weights_only=True``: no cached file can run code);
2. nasforge through its public pipeline (:func:`nasforge.compression.run_pipeline`): INT8
   alone, and channel pruning (50% FLOPs) + distillation fine-tune + INT8;
3. the peers in the same run: onnxruntime ``quantize_static`` tuned (QDQ, QUInt8
   activations, QInt8 per-channel weights, calibrated on the same images, after
   ``quant_pre_process``), for models with attention also ``quantize_dynamic`` (the best peer
   is the fastest one within 0.5 point of FP32's top-1); Torch-Pruning at the same FLOPs with
   the same rounding, BN recalibration and fine-tune recipe (``benchmarks/prune_peer.py``,
   engineer C; a "not available" line until it exists); torchao PT2E (X86 Inductor quantizer
   defaults, run through ``torch.compile`` with freezing) when torchao is installed;
4. every artifact timed at batch 1 and 32 in one interleaved pass per batch size
   (:func:`speedups.timing` -> ``compare_speedups``: paired rounds, 95% interval, stability
   verdict), onnxruntime with ``--threads`` intra-op threads (torch too, for PT2E);
5. which layers stayed float and why (the per-layer INT8 decisions of the pipeline's report);
6. GOAL lines (``benchmarks/goals.py`` format, host included), per goal per model:
   ``int8 vs best peer`` (nasforge INT8 at least as fast as the best peer at b1 and b32),
   ``int8 vs fp32`` (b32: EfficientNet >= 1.5x, ViT >= 1.3x, others > 1x: the whole interval
   above 1), ``prune drop vs TP`` (our top-1 drop within 0.5 point of Torch-Pruning's) and
   ``prune+int8 not slower`` (than pruned FP32 and than INT8 alone: no stable interval
   below 1, at b1 and b32). An unstable speed-up is ``NOT MET (... unstable: host busy)``; a
   path that failed is ``NOT MET (failed: <reason>)``.

``--quick``: EfficientNet-B0 (width 0.25) and a 2-layer ViT, 1 epoch, 1 fine-tune epoch, 3
timing rounds, the pipeline's own format choice measured at batch 32 only, no torch.compile
peer (``--torchao`` adds it): a smoke test that finishes in minutes on 2 cores (its
GOAL lines are about the tiny models, not the goals' models). The log goes to
``benchmarks/results/cpu_compression_models_<date>[_quick].log`` (and a ``.json`` beside it).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from compression_peers import (  # benchmarks/compression_peers.py
    artifact_runner,
    compiled,
    load_pt2,
    no_grad_runner,
    ort_dynamic,
    ort_static_tuned,
    print_decisions,
    prune_peer,
    stage_artifact,
    top1_onnx,
    torchao_pt2e,
    why,
)
from goals import Tee, goal, host_record  # benchmarks/goals.py
from speedups import Goal, iv, speed_goal, timing, vs
from torch import nn

from nasforge.compression import CompressConfig, run_pipeline
from nasforge.compression.distill import DistillationLoss
from nasforge.compression.pruning import recalibrate_bn
from nasforge.compression.quantization import export_onnx
from nasforge.compression.quantization.runtime import (
    Latency,
    ort_runner,
    speedup_text,
    timing_config,
)
from nasforge.compression.results import CompressionReport
from nasforge.compression.zoo import MODELS
from nasforge.data import Dataset, adapt_input, load_dataset
from nasforge.hardware import count_flops
from nasforge.train import TrainConfig, train_model

SHAPE = (3, 32, 32)
RESULTS = Path(__file__).resolve().parent / "results"
ALL_MODELS = ("efficientnet_b0", "vit_tiny", "mobilenet_v2", "resnet18")
QUICK_MODELS = ("efficientnet_b0", "vit_tiny")
#: model -> constructor keyword arguments (full run: the goals' models; quick: tiny ones)
FULL_KWARGS: dict[str, dict[str, Any]] = {
    "resnet18": {},
    "mobilenet_v2": {},
    "efficientnet_b0": {},
    "vit_tiny": {},
}
QUICK_KWARGS: dict[str, dict[str, Any]] = {
    "resnet18": {"width": 16},
    "mobilenet_v2": {"width": 0.35},
    "efficientnet_b0": {"width": 0.25},
    "vit_tiny": {"num_layers": 2, "hidden_dim": 48, "mlp_dim": 96, "num_heads": 3},
}
#: INT8 vs FP32 (onnxruntime, batch 32) targets: ratio threshold, or None for "> 1x" (the whole
#: interval above 1)
INT8_TARGET: dict[str, float | None] = {"efficientnet_b0": 1.5, "vit_tiny": 1.3}
PEER_DROP = 0.5  # points: a peer config further below FP32's top-1 is not a candidate
TP_MARGIN = 0.5  # points: our pruning drop may exceed Torch-Pruning's by at most this
BATCHES = (1, 32)
#: the goals of one model, as their names end
GOAL_KINDS = ("int8 vs best peer", "int8 vs fp32", "prune drop vs TP", "prune+int8 not slower")
#: points: FLOPs removed by ours and by Torch-Pruning must agree this well to compare drops
FLOPS_TOLERANCE = 5.0
Runner = Callable[[], object]


def is_transformer(model: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


def train_recipe(name: str, epochs: int) -> TrainConfig:
    """The base-model recipe (AdamW for the ViT: SGD at CNN rates does not train it)."""
    if name == "vit_tiny":
        return TrainConfig(epochs=epochs, optimizer="adamw", lr=1e-3, weight_decay=0.05, seed=0)
    return TrainConfig(epochs=epochs, lr=0.05, seed=0)


def finetune_recipe(name: str, epochs: int) -> TrainConfig:
    """The fine-tune recipe nasforge's distill stage and Torch-Pruning's model both get."""
    if name == "vit_tiny":
        return TrainConfig(
            epochs=epochs, optimizer="adamw", lr=3e-4, weight_decay=0.0, label_smoothing=0.0
        )
    return TrainConfig(epochs=epochs, lr=0.01, label_smoothing=0.0)


def base_model(name: str, kwargs: dict[str, Any], ds: Dataset, epochs: int) -> nn.Module:
    """The zoo model trained ``epochs`` on ``ds`` (a cached state_dict when the recipe
    matches: model, kwargs, recipe, data shape and size)."""
    recipe = train_recipe(name, epochs)
    key = json.dumps(
        [name, kwargs, recipe.model_dump(mode="json"), list(ds.input_shape), len(ds.x_train)],
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "nasforge_bench_models" / f"{name}_{digest}.pt"
    torch.manual_seed(0)
    make: Callable[..., nn.Module] = MODELS[name]  # type: ignore[assignment]
    model = make(num_classes=10, in_channels=3, **kwargs)
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
        print(f"  base model: cached {cache}")
        return model.eval()
    t0 = time.perf_counter()
    train_model(model, ds.x_train, ds.y_train, recipe)
    print(f"  base model: trained {epochs} epoch(s) in {time.perf_counter() - t0:.0f} s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model.eval()


# --- one model ---------------------------------------------------------------------------------


@dataclass
class Arm:
    """One timed artifact: a runner factory (batch size -> call) and its test top-1."""

    make: Callable[[int], Runner]
    top1: float
    kind: str  # "nasforge", "peer-int8", "peer-prune", "fp32"


@dataclass
class ModelRun:
    name: str
    arms: dict[str, Arm] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    timings: dict[int, dict[str, Latency]] = field(default_factory=dict)


def add_int8_arms(
    r: ModelRun,
    rep: CompressionReport,
    out: Path,
    arm: str,
    xs: dict[int, torch.Tensor],
    ds: Dataset,
    threads: int,
) -> None:
    """The INT8 stage's shipped artifact as ``arm``: its ONNX file, or the ``.pt2`` when the
    stage chose the torch INT8 runtime (``runtime_artifact``; the ONNX file is then timed
    too, as ``<arm>_onnx``)."""
    o = next((o for o in reversed(rep.outputs) if o.stage == "quantize_int8"), None)
    if o is None or not o.artifact:
        return
    onnx_arm = Arm(artifact_runner(out / o.artifact, xs, threads), o.test_accuracy, "nasforge")
    rt = str(getattr(o, "runtime_artifact", "") or "")
    if not rt:
        r.arms[arm] = onnx_arm
        return
    print(f"    nasforge ships {arm} as {rt}: {getattr(o, 'runtime_note', '')}")
    try:
        make = artifact_runner(out / rt, xs, threads)
        prog = load_pt2(out / rt)
        with torch.no_grad():
            logits = torch.cat(
                [prog(ds.x_test[i : i + 500]) for i in range(0, len(ds.x_test), 500)]
            )
        r.arms[arm] = Arm(make, float((logits.argmax(1) == ds.y_test).float().mean()), "nasforge")
        r.arms[f"{arm}_onnx"] = onnx_arm
    except Exception:  # noqa: BLE001
        r.failures[f"{arm} .pt2"] = why()
        r.arms[arm] = onnx_arm


def run_model(name: str, kwargs: dict[str, Any], ds: Dataset, a: argparse.Namespace) -> ModelRun:
    r = ModelRun(name)
    work = Path(tempfile.mkdtemp(prefix=f"nasforge_bench_{name}_"))
    xs = {bs: ds.x_test[:bs] for bs in BATCHES}
    calib = ds.x_train[: a.calibration]
    t0 = time.perf_counter()
    model = base_model(name, kwargs, ds, a.epochs)
    flops = count_flops(model, SHAPE)
    fp32 = export_onnx(model, work / "fp32.onnx", SHAPE)
    acc_fp32 = top1_onnx(fp32, ds, a.threads)
    r.info.update(
        kwargs=kwargs, mflops=flops / 1e6, top1_fp32=acc_fp32, work=str(work), host=host_record()
    )
    print(
        f"  {name} {kwargs or '(defaults)'}: {flops / 1e6:.1f} MFLOPs, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, FP32 ONNX top-1 "
        f"{acc_fp32:.4f}; artifacts in {work}"
    )
    r.arms["ort_fp32"] = Arm(lambda bs: ort_runner(fp32, xs[bs], a.threads), acc_fp32, "fp32")

    # nasforge through its public pipeline
    recipe = finetune_recipe(name, a.finetune_epochs)
    cheap = timing_config(rounds=3, repeats=3, warmup=1)  # the pipeline's own pass; ours decides
    q = {"calibration_size": a.calibration}
    runs = {
        "int8": [{"name": "quantize_int8", **q}],
        "prune": [
            {"name": "prune_channels", "ratio": 0.5, "target": "flops", "round_to": a.round_to},
            "distill",
            {"name": "quantize_int8", **q},
        ],
    }
    # the pipeline's own choices measure at these batch sizes (quick: b32 only, half the time)
    target = {"rounds": 3, "batch_sizes": [32] if a.quick else list(BATCHES)}
    reports: dict[str, CompressionReport | None] = {}
    for key, stages in runs.items():
        out = work / f"nasforge_{key}"
        started = time.perf_counter()
        try:
            cfg = CompressConfig.model_validate(
                {"stages": stages, "target": {**target, "threads": a.threads}, "seed": 0}
            )
            rep = run_pipeline(model, ds, cfg, out, train=recipe, timing=cheap)
            reports[key] = rep
        except Exception:  # noqa: BLE001 - a failing path is a result to print
            reports[key] = None
            r.failures[f"nasforge_{key}"] = why()
            print(f"    nasforge {key}: FAILED: {why()}")
            continue
        print(f"    nasforge {key}: pipeline {time.perf_counter() - started:.0f} s; {rep.verdict}")
        for w in rep.warnings:
            print(f"      warning: {w}")
        if key == "int8":
            add_int8_arms(r, rep, out, "nasforge_int8", xs, ds, a.threads)
        else:
            got = stage_artifact(rep, out, "distill")
            if got:  # top-1 on onnxruntime, like every other row's
                r.arms["nasforge_pruned"] = Arm(
                    artifact_runner(got[0], xs, a.threads),
                    top1_onnx(got[0], ds, a.threads),
                    "nasforge",
                )
            add_int8_arms(r, rep, out, "nasforge_pruned_int8", xs, ds, a.threads)
            pruned = stage_artifact(rep, out, "distill")
            plan = rep.details.get("pruning", {})
            if isinstance(plan, dict) and plan.get("macs_before"):
                r.info["nasforge_prune_macs_removed"] = 1 - plan["macs_after"] / plan["macs_before"]
            if pruned:
                r.info["nasforge_pruned_top1"] = pruned[1]
    # peers: onnxruntime's quantizers
    try:
        p = ort_static_tuned(fp32, work / "ort_static.onnx", calib)
        r.arms["ort_static_tuned"] = Arm(
            lambda bs: ort_runner(p, xs[bs], a.threads), top1_onnx(p, ds, a.threads), "peer-int8"
        )
    except Exception:  # noqa: BLE001
        r.failures["ort_static_tuned"] = why()
    if is_transformer(model):
        try:
            pd = ort_dynamic(fp32, work / "ort_dynamic.onnx")
            r.arms["ort_dynamic"] = Arm(
                lambda bs: ort_runner(pd, xs[bs], a.threads),
                top1_onnx(pd, ds, a.threads),
                "peer-int8",
            )
        except Exception:  # noqa: BLE001
            r.failures["ort_dynamic"] = why()
    # peer: torchao PT2E, compiled
    if a.torchao:
        try:
            pt = torchao_pt2e(model, calib)
            with torch.no_grad():  # an exported module refuses .eval() (it is in eval form)
                logits = torch.cat(
                    [pt(ds.x_test[i : i + 500]) for i in range(0, len(ds.x_test), 500)]
                )
            acc = float((logits.argmax(1) == ds.y_test).float().mean())
            comp = compiled(pt, xs)
            r.arms["torchao_pt2e"] = Arm(lambda bs: no_grad_runner(comp, xs[bs]), acc, "peer-int8")
        except Exception:  # noqa: BLE001
            r.failures["torchao_pt2e"] = why()
    else:
        print("    torchao PT2E peer: skipped (--quick or --no-torchao)")
    # peer: Torch-Pruning, same FLOPs / rounding / recalibration / fine-tune recipe
    pp = prune_peer()
    if pp is not None:
        try:
            # tp_prune ignores the classifier (the last Linear) itself
            tpm = pp.tp_prune(copy.deepcopy(model), SHAPE, 0.5, a.round_to, ())
            recalibrate_bn(tpm, [ds.x_train[i : i + 64] for i in range(0, 1024, 64)])
            teacher = copy.deepcopy(model).eval()
            cfg0 = CompressConfig()
            loss = DistillationLoss(
                teacher, cfg0.distill.temperature, cfg0.distill.alpha, memoize=True
            )
            train_model(tpm, ds.x_train, ds.y_train, recipe, loss_fn=loss)
            tpm.eval()
            tpo = export_onnx(tpm, work / "tp_pruned.onnx", SHAPE)
            r.info["tp_flops_removed"] = 1 - count_flops(tpm, SHAPE) / same_form_flops(model, tpm)
            r.arms["tp_pruned"] = Arm(
                lambda bs: ort_runner(tpo, xs[bs], a.threads),
                top1_onnx(tpo, ds, a.threads),
                "peer-prune",
            )
        except Exception:  # noqa: BLE001
            r.failures["tp_pruned"] = why()
    for k, v in r.failures.items():
        if not k.startswith("nasforge_"):  # those were printed as they failed
            print(f"    {k}: FAILED: {v}")
    acc_line = ", ".join(f"{k} {v.top1:.4f}" for k, v in r.arms.items())
    print(f"  test top-1: {acc_line}")
    if "nasforge_prune_macs_removed" in r.info or "tp_flops_removed" in r.info:
        print(
            "  FLOPs removed: nasforge (plan MACs) "
            f"{100 * r.info.get('nasforge_prune_macs_removed', math.nan):.1f}%, Torch-Pruning "
            f"{100 * r.info.get('tp_flops_removed', math.nan):.1f}%"
        )
    print("  which layers stayed float (nasforge's per-layer INT8 decisions):")
    print_decisions(reports.get("int8"), "INT8")
    print_decisions(reports.get("prune"), "prune+INT8")

    # one interleaved pass per batch size, every artifact
    for bs in BATCHES:
        try:
            runners = {k: arm.make(bs) for k, arm in r.arms.items()}
            t = timing(runners, bs, a.threads, a.rounds, "ort_fp32", a.wait_quiet)
        except Exception:  # noqa: BLE001
            r.failures[f"timing b{bs}"] = why()
            print(f"  batch {bs}: timing FAILED: {why()}")
            continue
        r.timings[bs] = t
        print(f"  batch {bs}: " + ", ".join(f"{k} {v.median_ms:.3f} ms" for k, v in t.items()))
        for k in t:
            if k != "ort_fp32":
                print(f"    {k} vs ort_fp32: {speedup_text(vs(t, 'ort_fp32', k))}")
    r.info["seconds"] = time.perf_counter() - t0
    return r


def same_form_flops(model: nn.Module, pruned: nn.Module) -> int:
    """FLOPs of the unpruned ``model`` in the form ``pruned`` has: a peer that returns
    decomposed attention (nasforge's SelfAttention) is compared with the decomposed original
    (torch's counter sees nn.MultiheadAttention's fused kernel and explicit matmuls
    differently)."""
    from nasforge.compression.attention import SelfAttention, decompose_attention

    if any(isinstance(m, SelfAttention) for m in pruned.modules()) and is_transformer(model):
        return count_flops(decompose_attention(model), SHAPE)
    return count_flops(model, SHAPE)


# --- goals ------------------------------------------------------------------------------------


#: timed arm -> the run that makes it (whose failure explains a missing arm)
MADE_BY = {
    "nasforge_int8": "nasforge_int8",
    "nasforge_pruned": "nasforge_prune",
    "nasforge_pruned_int8": "nasforge_prune",
}


def missing(r: ModelRun, arm: str, default: str = "not run") -> str:
    """Why ``arm`` has no artifact: the failure of the run that makes it, else ``default``."""
    key = MADE_BY.get(arm, arm)
    return r.failures.get(key, r.failures.get(arm, default))


def model_goals(r: ModelRun) -> list[Goal]:
    g: list[Goal] = []
    n, arms, t = r.name, r.arms, r.timings

    def failed(goal_name: str, needs: list[str], target: str) -> bool:
        miss = [k for k in needs if k not in arms]
        miss += [f"timing b{bs}" for bs in BATCHES if bs not in t]
        if not miss:
            return False
        reason = "; ".join(sorted({f"{MADE_BY.get(k, k)}: {missing(r, k)}" for k in miss}))
        g.append((goal_name, False, f"failed: {reason}"[:400], target, False))
        return True

    fp32 = arms["ort_fp32"].top1
    # int8 vs best peer, at b1 and b32
    name, target = f"{n} int8 vs best peer", ">= 1.0x at b1 and b32"
    peers = [k for k, v in arms.items() if v.kind == "peer-int8"]
    if not failed(name, ["nasforge_int8"], target):
        ok_peers = [k for k in peers if 100 * (fp32 - arms[k].top1) <= PEER_DROP]
        note = ""
        if not ok_peers and peers:
            # no peer config keeps the accuracy: compare with the most accurate one, say so
            ok_peers = [max(peers, key=lambda k: arms[k].top1)]
            note = f" (no peer within {PEER_DROP} pt of FP32: the most accurate one)"
        if not ok_peers:
            g.append(
                (
                    name,
                    False,
                    "no peer ran: "
                    + "; ".join(
                        f"{k}: {v}" for k, v in r.failures.items() if not k.startswith("nasforge")
                    ),
                    target,
                    False,
                )
            )
        else:
            sps, parts = [], []
            for bs in BATCHES:
                best = max(ok_peers, key=lambda k: vs(t[bs], "ort_fp32", k).ratio)
                s = vs(t[bs], best, "nasforge_int8")
                sps.append(s)
                parts.append(f"b{bs} {iv(s)} vs {best}")
            drops = ", ".join(
                f"{k} {100 * (fp32 - arms[k].top1):.2f}" for k in ("nasforge_int8", *ok_peers)
            )
            measured = "; ".join(parts) + f"{note}; top-1 drop pt: {drops}"
            speed_goal(g, name, all(s.ratio >= 1.0 for s in sps), sps, measured, target)
    # int8 vs fp32 at b32
    thr = INT8_TARGET.get(n)
    target = f">= {thr}x at b32" if thr else "> 1x at b32 (interval above 1)"
    name = f"{n} int8 vs fp32"
    if not failed(name, ["nasforge_int8"], target):
        s = vs(t[32], "ort_fp32", "nasforge_int8")
        speed_goal(g, name, s.ratio >= thr if thr else s.low > 1, [s], iv(s), target)
    # pruning drop vs Torch-Pruning
    name, target = f"{n} prune drop vs TP", f"<= TP's drop + {TP_MARGIN} pt"
    miss = [k for k in ("nasforge_pruned", "tp_pruned") if k not in arms]
    if miss:
        reason = "; ".join(
            sorted({f"{MADE_BY.get(k, k)}: {missing(r, k, 'not available')}" for k in miss})
        )
        g.append((name, False, f"failed: {reason}"[:400], target, False))
    else:
        ours, tp = (
            100 * (fp32 - arms["nasforge_pruned"].top1),
            100 * (fp32 - arms["tp_pruned"].top1),
        )
        fo = 100 * r.info.get("nasforge_prune_macs_removed", math.nan)
        ft = 100 * r.info.get("tp_flops_removed", math.nan)
        equal = abs(fo - ft) <= FLOPS_TOLERANCE  # nan (unknown) is not equal
        measured = f"drop {ours:.2f} pt vs TP {tp:.2f} pt; FLOPs removed {fo:.1f}% vs {ft:.1f}%"
        if not equal:
            measured += f" (not equal FLOPs: differ by more than {FLOPS_TOLERANCE} points)"
        g.append((name, equal and ours <= tp + TP_MARGIN, measured, target, False))
    # prune+int8 not measurably slower than pruned FP32 and than INT8 alone
    name, target = (
        f"{n} prune+int8 not slower",
        "no interval below 1 vs pruned and vs int8, b1 and b32",
    )
    if not failed(name, ["nasforge_pruned", "nasforge_int8", "nasforge_pruned_int8"], target):
        sps, parts = [], []
        for bs in BATCHES:
            for base in ("nasforge_pruned", "nasforge_int8"):
                s = vs(t[bs], base, "nasforge_pruned_int8")
                sps.append(s)
                parts.append(f"b{bs} {iv(s)} vs {base.removeprefix('nasforge_')}")
        speed_goal(g, name, all(s.high >= 1.0 for s in sps), sps, "; ".join(parts), target)
    return g


# --- main --------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=None, help=f"comma list of {', '.join(ALL_MODELS)}")
    ap.add_argument("--quick", action="store_true", help="tiny models, 1 epoch: a smoke test")
    ap.add_argument("--epochs", type=int, default=None, help="base training (3; quick 1)")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="(2; quick 1)")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (9; quick 3)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--calibration", type=int, default=None, help="images (512; quick 128)")
    ap.add_argument(
        "--torchao", dest="torchao", action="store_true", default=None, help="(default: not quick)"
    )
    ap.add_argument("--no-torchao", dest="torchao", action="store_false")
    ap.add_argument("--log", type=Path, default=None, help="log file (default: results/...)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, help="s to wait for a quiet host")
    a = ap.parse_args(argv)
    if not a.wait_quiet >= 0:  # also refuses nan
        ap.error(f"--wait-quiet: seconds must be >= 0, got {a.wait_quiet}")
    quick = a.quick
    a.epochs = a.epochs if a.epochs is not None else (1 if quick else 3)
    a.finetune_epochs = a.finetune_epochs if a.finetune_epochs is not None else (1 if quick else 2)
    a.rounds = a.rounds if a.rounds is not None else (3 if quick else 9)
    a.calibration = a.calibration if a.calibration is not None else (128 if quick else 512)
    if a.torchao is None:
        a.torchao = not quick
    if a.torchao:
        try:
            import torchao  # noqa: F401
        except ImportError:
            print("torchao PT2E peer: not installed")
            a.torchao = False
    names = tuple(a.models.split(",")) if a.models else (QUICK_MODELS if quick else ALL_MODELS)
    bad = [n for n in names if n not in MODELS]
    if bad:
        ap.error(f"--models: unknown {', '.join(bad)} (known: {', '.join(MODELS)})")
    a.models = names
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M")
    log = a.log or RESULTS / f"cpu_compression_models_{stamp}{'_quick' if a.quick else ''}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout = Tee(sys.stdout, log)  # type: ignore[assignment]
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    print(
        f"compression of the zoo models: {', '.join(a.models)}{' (quick)' if a.quick else ''}; "
        f"epochs {a.epochs}, fine-tune {a.finetune_epochs}, {a.rounds} timing rounds, "
        f"{a.threads} thread(s); load average at start "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)"
    )
    ds = adapt_input(load_dataset("mnist5k"), SHAPE)
    kw = QUICK_KWARGS if a.quick else FULL_KWARGS
    goals: list[Goal] = []
    record: dict[str, Any] = {"args": {k: str(v) for k, v in vars(a).items()}, "models": {}}
    for name in a.models:
        print(f"\n== {name}")
        try:
            r = run_model(name, kw[name], ds, a)
            g = model_goals(r)
        except Exception:  # noqa: BLE001 - one model's crash is its result; the others run
            print(f"  {name}: FAILED: {why()}")
            traceback.print_exc()
            g = [(f"{name} {k}", False, f"failed: {why()}", "-", False) for k in GOAL_KINDS]
            r = ModelRun(name, failures={"run": why()})
        goals.extend(g)
        print(f"  {name} goals (all of them again at the end):")
        for gname, met, measured, tgt, unstable in g:
            goal(gname, met, measured, tgt, unstable=unstable)
        record["models"][name] = {
            "info": r.info,
            "top1": {k: v.top1 for k, v in r.arms.items()},
            "failures": r.failures,
            "timing": {bs: {k: v.to_dict() for k, v in t.items()} for bs, t in r.timings.items()},
            "goals": g,
        }
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s; load average at end: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    for name, met, measured, target, unstable in goals:
        goal(name, met, measured, target, unstable=unstable)
    log.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
    print(f"log: {log}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
