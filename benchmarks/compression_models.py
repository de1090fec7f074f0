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
from goals import Tee, goal, host_record  # benchmarks/goals.py
from speedups import Goal, iv, speed_goal, timing, vs
from torch import nn

from nasforge.compression import CompressConfig, run_pipeline
from nasforge.compression.distill import DistillationLoss
from nasforge.compression.pruning import recalibrate_bn
from nasforge.compression.quantization import export_onnx
from nasforge.compression.quantization.runtime import (
    Latency,
    ort_predict,
    ort_runner,
    ort_session,
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


def why() -> str:
    """The exception being handled, in one line: its type and the first non-blank line of
    its message (cut at 300 characters)."""
    e = sys.exc_info()[1]
    if e is None:
        return "unknown error"
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {first}"[:300]


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


# --- peers ------------------------------------------------------------------------------------


def ort_static_tuned(fp32: Path, out: Path, calib: torch.Tensor) -> Path:
    """onnxruntime's own static quantizer, tuned: ``quant_pre_process`` (shape inference +
    graph optimisation) then QDQ, QUInt8 activations, QInt8 per-channel weights, MinMax
    calibration on ``calib``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src = fp32
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = out.with_name(out.stem + ".pre.onnx")
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        src = pre
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; say so and go on
        print(f"    ORT quant_pre_process failed ({why()}); quantizing the plain export")
    name = ort_session(src).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: calib[i : i + 64].numpy()} for i in range(0, len(calib), 64)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return out


def ort_dynamic(fp32: Path, out: Path) -> Path:
    """onnxruntime's dynamic quantizer (QInt8 weights; MatMulInteger / DynamicQuantizeMatMul)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return out


def torchao_pt2e(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """torchao PT2E with the X86 Inductor quantizer's defaults (static, per-channel), through
    nasforge's own capture (strict export first: the non-strict one fails on a ReLU module
    called twice, as in ResNet's basic block); deploys through ``torch.compile``."""
    from nasforge.compression.quantization.inductor import quantize_pt2e

    return quantize_pt2e(model, calib, tuple(calib.shape[1:]))


def compiled(model: nn.Module, xs: dict[int, torch.Tensor]) -> nn.Module:
    """``torch.compile`` with frozen weights (the CPU inference recipe), warmed up at every
    batch size of ``xs``."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    c = torch.compile(model, dynamic=False)
    with torch.no_grad():
        for x in xs.values():
            c(x)
    return c  # type: ignore[return-value]


def no_grad_runner(model: Callable[[torch.Tensor], object], x: torch.Tensor) -> Runner:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def prune_peer() -> Any:
    """benchmarks/prune_peer.py (engineer C), or None (the reason printed)."""
    try:
        import prune_peer as pp
    except Exception:  # noqa: BLE001
        print(f"    Torch-Pruning peer: not available (benchmarks/prune_peer.py: {why()})")
        return None
    if not hasattr(pp, "tp_prune"):
        print("    Torch-Pruning peer: not available (prune_peer has no tp_prune)")
        return None
    return pp


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


def stage_artifact(report: CompressionReport, out: Path, stage: str) -> tuple[Path, float] | None:
    """The artifact file and test top-1 of the last output of ``stage`` in ``report``."""
    for o in reversed(report.outputs):
        if o.stage == stage and o.artifact:
            return out / o.artifact, o.test_accuracy
    return None


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


def load_pt2(path: Path) -> Any:
    """An exported program's module: F's safe loader when present, else torch.export.load."""
    try:
        from nasforge.compression.quantization import inductor  # type: ignore[attr-defined]

        return inductor.load_program(path)
    except ImportError:
        return torch.export.load(str(path)).module()


def artifact_runner(
    path: Path, xs: dict[int, torch.Tensor], threads: int
) -> Callable[[int], Runner]:
    """Runner factory of a shipped artifact: ``.onnx`` on onnxruntime, ``.pt2`` as a compiled
    exported program (F's inductor runtime when present, else ``torch.export.load``)."""
    if path.suffix == ".onnx":
        return lambda bs: ort_runner(path, xs[bs], threads)
    prog = load_pt2(path)
    try:
        from nasforge.compression.quantization import inductor  # type: ignore[attr-defined]

        return lambda bs: inductor.compiled_runner(prog, xs[bs])  # type: ignore[no-any-return]
    except ImportError:
        comp = compiled(prog, xs)
        return lambda bs: no_grad_runner(comp, xs[bs])


def layer_decisions(details: Any) -> list[dict[str, Any]]:
    """Every per-layer INT8 decision found in a report's details: dicts with a layer name and
    a reason (the key names of D's/E's report are matched loosely)."""
    found: list[dict[str, Any]] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            keys = set(v)
            if "reason" in keys and keys & {"layer", "name", "node"}:
                found.append(v)
                return
            for w in v.values():
                walk(w)
        elif isinstance(v, list | tuple):
            for w in v:
                walk(w)

    walk(details)
    return found


def is_float_decision(d: dict[str, Any]) -> bool:
    for k in ("int8", "quantized"):
        if isinstance(d.get(k), bool):
            return not d[k]
    for k in ("decision", "precision", "dtype", "choice", "format", "kept"):
        if isinstance(d.get(k), str):
            return "float" in d[k].lower() or "fp32" in d[k].lower()
    return False


def print_decisions(report: CompressionReport | None, label: str) -> None:
    """Which layers stayed float and why: the report's own reading
    (``nasforge.compression.report.layer_decisions``) when it has one, else any decision
    records found in its details."""
    if report is None:
        return
    try:
        from nasforge.compression import report as rep_mod

        rows = rep_mod.layer_decisions(report)  # type: ignore[attr-defined]
        lines = rep_mod.float_layers_text(report)  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        rows = []
    if rows:
        print(f"    {label}: {len(rows)} layer decisions, {len(lines)} kept float:")
        for ln in lines:
            print(f"      {ln}")
        return
    ds = layer_decisions(report.details)
    if not ds:
        print(
            f"    {label}: no per-layer INT8 decisions in the report (details keys: "
            f"{', '.join(sorted(report.details)) or 'none'})"
        )
        return
    fl = [d for d in ds if is_float_decision(d)]
    print(f"    {label}: {len(ds)} layer decisions, {len(fl)} kept float:")
    for d in fl:
        name = d.get("layer") or d.get("name") or d.get("node")
        op = d.get("op") or d.get("op_kind") or d.get("kind") or ""
        print(f"      {name} ({op}): {d.get('reason')}")


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
            t = timing(runners, bs, a.threads, a.rounds, "ort_fp32")
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


def top1_onnx(path: Path, ds: Dataset, threads: int) -> float:
    logits = ort_predict(ort_session(path, threads), ds.x_test)
    return float((logits.argmax(1) == ds.y_test).float().mean())


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
    a = ap.parse_args(argv)
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
