"""The compression pipeline: prune -> fine-tune (distil) -> quantize -> export -> verify -> measure.

``run_pipeline`` takes a trained float model and a dataset, writes its artifacts to
``out_dir`` (``model.fp32.onnx``, ``model.pruned.onnx``, ``model.int8.onnx`` or
``model.int4.pt``, ``pruning_plan.json``, ``report.json``, ``report.html``) and returns the
:class:`CompressionReport`. Decisions (QAT or not, mixed precision) use the validation
split; the table reports test accuracy. Every latency is measured on the target backend,
all artifacts interleaved in one session, so ratios are comparable.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from nasforge.compression.config import CompressConfig
from nasforge.compression.distill import DistillationLoss
from nasforge.compression.pruning import (
    ChannelPruner,
    ChannelPruningConfig,
    apply_plan,
    build_latency_table,
    iterative_magnitude_pruning,
    latency_aware_plan,
    magnitude_masks,
    make_importance,
    recalibrate_bn,
    sparse_size_bytes,
)
from nasforge.compression.quantization import (
    QuantSpec,
    choose_int8_format,
    export_onnx,
    export_qdq,
    format_candidates,
    mixed_precision_plan,
    quantization_aware_training,
    quantize_int4,
    quantize_static_int8,
)
from nasforge.compression.quantization.runtime import (
    agreement,
    compare_latency,
    file_size,
    ort_predict,
    ort_runner,
    ort_session,
)
from nasforge.data import Dataset
from nasforge.train import TrainConfig, evaluate_accuracy, predict_logits, train_model

log = logging.getLogger("nasforge.compression")
Progress = Callable[[str], None]
AGGRESSIVE_RATIO = 0.3
"""Pruning beyond this fraction without fine-tuning triggers the brief's anti-pattern warning."""


@dataclass(frozen=True)
class StageResult:
    """One row of the report table. ``latency_ms`` maps batch size -> median ms on the
    target (absent when the stage has no runnable artifact of its own)."""

    name: str
    test_accuracy: float
    size_bytes: int
    latency_ms: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)
    artifact: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompressionReport:
    stages: tuple[StageResult, ...]
    warnings: tuple[str, ...]
    config: dict[str, object]
    details: dict[str, object]
    deployable: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.name == name)


def _acc(model: nn.Module, ds: Dataset, split: str = "test") -> float:
    x, y = (ds.x_test, ds.y_test) if split == "test" else (ds.x_val, ds.y_val)
    return evaluate_accuracy(model, x, y)


def _ort_acc(path: Path, ds: Dataset, threads: int) -> tuple[float, torch.Tensor]:
    logits = ort_predict(ort_session(path, threads), ds.x_test)
    return float((logits.argmax(1) == ds.y_test).float().mean()), logits


def run_pipeline(
    model: nn.Module,
    dataset: Dataset,
    cfg: CompressConfig,
    out_dir: str | Path,
    teacher: nn.Module | None = None,
    progress: Progress | None = None,
) -> CompressionReport:
    """Compress ``model`` (not modified) on ``dataset``; write artifacts and the report.

    ``teacher`` defaults to a frozen copy of ``model``. ``progress(message)`` is called at
    each stage. Raises :class:`~nasforge.compression.errors.CompressionError` subclasses
    for inputs it cannot handle (naming the layer or field).
    """
    say = progress or log.info
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    shape = tuple(dataset.input_shape)
    original = copy.deepcopy(model).eval()
    teacher = (teacher or copy.deepcopy(original)).eval()
    warnings: list[str] = []
    details: dict[str, object] = {}
    stages: list[dict[str, object]] = []
    artifacts: dict[str, Path] = {}

    say("exporting the FP32 baseline")
    artifacts["original"] = export_onnx(original, out / "model.fp32.onnx", shape)
    stages.append(
        {
            "name": "original",
            "test_accuracy": _acc(original, dataset),
            "size_bytes": file_size(artifacts["original"]),
            "artifact": "model.fp32.onnx",
        }
    )
    current = copy.deepcopy(original)
    p = cfg.prune
    if p.method != "none":
        current = _prune(current, dataset, cfg, shape, out, stages, warnings, details, say)
        if cfg.finetune.epochs > 0:
            say(
                f"fine-tuning {cfg.finetune.epochs} epoch(s)"
                f"{' with distillation' if cfg.distill.enabled else ''}"
            )
            masks = details.pop("_masks", None)
            tc = TrainConfig(
                epochs=cfg.finetune.epochs,
                batch_size=cfg.finetune.batch_size,
                optimizer=cfg.finetune.optimizer,
                lr=cfg.finetune.lr,
                seed=cfg.seed,
                label_smoothing=0.0,
            )
            loss = (
                DistillationLoss(teacher, cfg.distill.temperature, cfg.distill.alpha, memoize=True)
                if cfg.distill.enabled
                else None
            )
            train_model(
                current,
                dataset.x_train,
                dataset.y_train,
                tc,
                loss_fn=loss,
                step_hook=masks.hook if masks is not None else None,
            )  # type: ignore[attr-defined]
            current.eval()
        elif p.ratio > AGGRESSIVE_RATIO:
            warnings.append(
                f"pruned {p.ratio:.0%} without fine-tuning (finetune.epochs=0): "
                "expect an accuracy cliff; compression beyond a moderate ratio needs "
                "fine-tuning"
            )
        details.pop("_masks", None)
        artifacts["pruned"] = export_onnx(current, out / "model.pruned.onnx", shape)
        size = file_size(artifacts["pruned"])
        if p.method in ("unstructured", "imp"):
            size = sparse_size_bytes(current)
        stages.append(
            {
                "name": "pruned+finetuned" if cfg.finetune.epochs else "pruned",
                "test_accuracy": _acc(current, dataset),
                "size_bytes": size,
                "artifact": "model.pruned.onnx",
                "notes": (
                    (
                        "unstructured sparsity: size is the sparse encoding; dense "
                        "kernels do not run faster"
                    ),
                )
                if p.method != "channel"
                else (),
            }
        )
        stage_key = "pruned"
    else:
        stage_key = "original"
    q = cfg.quantize
    if q.mode == "int8":
        _int8(current, teacher, dataset, cfg, shape, out, stages, warnings, details, artifacts, say)
    elif q.mode == "int4":
        say("INT4 weight-only quantization")
        m4 = quantize_int4(current, q.int4_group_size)
        m4.save(out / "model.int4.pt")
        stages.append(
            {
                "name": "int4-weight-only",
                "test_accuracy": _acc(m4.materialize(current), dataset),
                "size_bytes": m4.size_bytes,
                "artifact": "model.int4.pt",
                "notes": (
                    (
                        "no INT4 convolution kernel on x86 CPU runtimes: runs "
                        f"dequantized, latency as {stage_key}"
                    ),
                ),
            }
        )
    say("measuring latency on onnxruntime")
    lat = _measure(artifacts, dataset, cfg)
    details["latency"] = {k: {bs: v for bs, v in d.items()} for k, d in lat.items()}
    rows = []
    base = lat.get("original", {})
    for st in stages:
        key = {
            "original": "original",
            "int8": "int8",
            "pruned": "pruned",
            "pruned+finetuned": "pruned",
        }.get(str(st["name"]))
        ms = lat.get(key, {}) if key else {}
        sp = {bs: base[bs] / v for bs, v in ms.items() if bs in base and v > 0}
        rows.append(
            StageResult(
                str(st["name"]),
                float(st["test_accuracy"]),  # type: ignore[arg-type]
                int(st["size_bytes"]),
                dict(ms),
                sp,
                str(st.get("artifact", "")),  # type: ignore[arg-type]
                tuple(st.get("notes", ())),
            )
        )  # type: ignore[arg-type]
    final = next((r for r in reversed(rows) if r.latency_ms), rows[0])
    deployable = True
    if final.name != "original":
        slow = [bs for bs, s in final.speedup.items() if s <= 1.0]
        if slow:
            deployable = False
            nums = ", ".join(
                f"batch {bs}: {base[bs]:.3f} -> {final.latency_ms[bs]:.3f} ms "
                f"({final.speedup[bs]:.2f}x)"
                for bs in slow
            )
            warnings.append(
                f"NOT FASTER: the compressed model ({final.name}) is not faster than "
                f"the original on onnxruntime ({nums})"
            )
    drop = rows[0].test_accuracy - rows[-1].test_accuracy
    details["test_accuracy_drop"] = drop
    report = CompressionReport(
        tuple(rows), tuple(warnings), cfg.model_dump(mode="json"), details, deployable
    )
    (out / "report.json").write_text(report.to_json())
    from nasforge.compression.report import write_html

    write_html(report, out / "report.html")
    for w in warnings:
        say(f"WARNING: {w}")
    return report


def _prune(
    model: nn.Module,
    ds: Dataset,
    cfg: CompressConfig,
    shape: tuple[int, ...],
    out: Path,
    stages: list[dict[str, object]],
    warnings: list[str],
    details: dict[str, object],
    say: Progress,
) -> nn.Module:
    p = cfg.prune
    if p.method == "channel":
        batches = [(ds.x_train[i : i + 64], ds.y_train[i : i + 64]) for i in range(0, 256, 64)]
        imp = make_importance(p.importance, model, batches, cfg.seed)
        pc = ChannelPruningConfig(
            p.ratio, p.target, p.scope, p.round_to, p.min_keep, tuple(p.ignore)
        )
        if p.latency_target_ms is not None:
            say(f"measuring a channel latency table for a {p.latency_target_ms} ms target")
            x1 = ds.x_val[:1]
            tmp = out / "_latency_probe.onnx"

            def measure(m: nn.Module) -> float:
                export_onnx(m, tmp, shape)
                r = compare_latency(
                    {"m": ort_runner(tmp, x1, cfg.target.threads)},
                    {},
                    1,
                    cfg.target.threads,
                    rounds=3,
                    repeats=10,
                )
                return r["m"].median_ms

            table = build_latency_table(
                model,
                shape,
                measure,
                imp,
                round_to=p.round_to,
                min_keep=p.min_keep,
                backend="onnxruntime",
            )
            tmp.unlink(missing_ok=True)
            (out / "latency_table.json").write_text(table.to_json())
            plan = latency_aware_plan(model, shape, imp, table, p.latency_target_ms, pc)
        else:
            plan = ChannelPruner(imp, pc).plan(model, shape)
        plan.save(out / "pruning_plan.json")
        say(
            f"channel pruning: {plan.channels_removed} channels, "
            f"est. {plan.macs_reduction:.0%} MACs removed"
        )
        apply_plan(model, plan)
        # Stale BN statistics would make the before-fine-tune accuracy meaningless.
        n_recal = min(len(ds.x_train), 1024)
        recalibrate_bn(model, [ds.x_train[i : i + 64] for i in range(0, n_recal, 64)])
        details["pruning"] = {
            "macs_before": plan.macs_before,
            "macs_after": plan.macs_after,
            "channels_removed": plan.channels_removed,
            "notes": list(plan.notes),
        }
    elif p.method == "unstructured":
        masks = magnitude_masks(model, p.ratio, p.scope, exclude=p.ignore)
        masks.apply(model)
        details["_masks"] = masks
        details["pruning"] = {"sparsity": masks.sparsity}
        say(f"unstructured magnitude pruning to {masks.sparsity:.1%} sparsity")
    else:
        rate = 1.0 - (1.0 - p.ratio) ** (1.0 / p.imp_rounds)
        say(f"iterative magnitude pruning: {p.imp_rounds} rounds of {rate:.1%}")
        tc = TrainConfig(
            epochs=max(cfg.finetune.epochs, 1),
            batch_size=cfg.finetune.batch_size,
            lr=cfg.finetune.lr,
            seed=cfg.seed,
        )
        model, masks, res = iterative_magnitude_pruning(
            model,
            ds.x_train,
            ds.y_train,
            ds.x_val,
            ds.y_val,
            tc,
            p.imp_rounds,
            rate,
            p.imp_rewind_step,
            progress=lambda r: say(
                f"  IMP round {r.round}: sparsity {r.sparsity:.1%}, val acc {r.val_acc:.4f}"
            ),
        )
        details["_masks"] = masks
        details["imp_curve"] = [asdict(r) for r in res.rounds]
        details["pruning"] = {"sparsity": masks.sparsity}
    model.eval()
    stages.append(
        {
            "name": "pruned (no fine-tune)",
            "test_accuracy": _acc(model, ds),
            "size_bytes": 0,
            "notes": ("before fine-tuning",),
        }
    )
    return model


def _int8(
    current: nn.Module,
    teacher: nn.Module,
    ds: Dataset,
    cfg: CompressConfig,
    shape: tuple[int, ...],
    out: Path,
    stages: list[dict[str, object]],
    warnings: list[str],
    details: dict[str, object],
    artifacts: dict[str, Path],
    say: Progress,
) -> None:
    q = cfg.quantize
    calib = ds.x_train[: q.calibration_size]
    base = QuantSpec(calibration=q.calibration, percentile=q.percentile)
    if q.activations == "auto":
        say("measuring INT8 formats on onnxruntime")
        trials = choose_int8_format(
            current,
            calib,
            shape,
            format_candidates(current, base),
            cfg.target.batch_sizes,
            cfg.target.threads,
        )
        details["int8_formats"] = [{"name": t.name, "latency_ms": t.latency_ms} for t in trials]
        spec = trials[0].spec
        details["int8_format"] = trials[0].name
    else:
        spec = replace(base, activations=q.activations)
    float_val = _acc(current, ds, "val")
    say(f"post-training INT8 ({spec.activations} activations, {q.calibration} calibration)")
    sim = quantize_static_int8(current, calib, spec)
    drop = float_val - _acc(sim, ds, "val")
    method = "ptq"
    if drop > q.drop_budget and q.mixed_precision and q.qat != "always":
        say(f"PTQ drop {drop * 100:.2f} points > budget; searching a mixed-precision plan")
        mp = mixed_precision_plan(current, calib, ds.x_val, ds.y_val, q.drop_budget, spec)
        details["mixed_precision"] = json.loads(mp.to_json())
        if mp.keep_fp32:
            spec = replace(spec, exclude=tuple(spec.exclude) + mp.keep_fp32)
            sim = quantize_static_int8(current, calib, spec)
            drop = float_val - _acc(sim, ds, "val")
            method = "ptq+mixed"
    if q.qat == "always" or (q.qat == "auto" and drop > q.drop_budget):
        say(
            f"quantization-aware training ({q.qat_epochs} epochs, val drop {drop * 100:.2f} points)"
        )
        tc = TrainConfig(
            epochs=q.qat_epochs,
            batch_size=cfg.finetune.batch_size,
            lr=q.qat_lr,
            seed=cfg.seed,
            label_smoothing=0.0,
            weight_decay=0.0,
        )
        loss = (
            DistillationLoss(teacher, cfg.distill.temperature, cfg.distill.alpha, memoize=True)
            if cfg.distill.enabled
            else None
        )
        sim, _ = quantization_aware_training(current, ds.x_train, ds.y_train, calib, tc, spec, loss)
        drop = float_val - _acc(sim, ds, "val")
        method += "+qat"
    if drop > q.drop_budget:
        warnings.append(
            f"INT8 validation drop {drop * 100:.2f} points exceeds the budget "
            f"{q.drop_budget * 100:.2f} ({method})"
        )
    artifacts["int8"] = export_qdq(sim, out / "model.int8.onnx", shape)
    acc, logits = _ort_acc(artifacts["int8"], ds, cfg.target.threads)
    ref = predict_logits(current, ds.x_test)
    agree = agreement(ref, logits)
    sim_agree = agreement(predict_logits(sim, ds.x_test), logits)
    details["int8"] = {
        "method": method,
        "spec": asdict(spec),
        "val_drop": drop,
        "agreement_vs_float": agree,
        "agreement_vs_simulation": sim_agree,
    }
    stages.append(
        {
            "name": "int8",
            "test_accuracy": acc,
            "size_bytes": file_size(artifacts["int8"]),
            "artifact": "model.int8.onnx",
            "notes": ((f"{method}; top-1 agreement with float {agree['top1_agreement']:.4f}"),),
        }
    )


def _measure(
    artifacts: dict[str, Path], ds: Dataset, cfg: CompressConfig
) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {k: {} for k in artifacts}
    for bs in cfg.target.batch_sizes:
        x = ds.x_test[:bs]
        if len(x) < bs:
            x = x.repeat((bs + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:bs]
        runners = {k: ort_runner(p, x, cfg.target.threads) for k, p in artifacts.items()}
        res = compare_latency(
            runners, {}, bs, cfg.target.threads, rounds=cfg.target.rounds, repeats=10
        )
        for k, r in res.items():
            out[k][bs] = r.median_ms
    return out
