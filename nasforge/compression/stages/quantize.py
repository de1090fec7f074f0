"""Quantization stages: ``quantize_int8`` (PTQ, mixed precision and QAT as needed), ``qat``
(always quantization-aware training) and ``int4`` (weight-only).

They read ``state.model`` (the float model after earlier stages) without changing it and
write their own artifact: ``model.int8.onnx`` (run on ONNX Runtime's integer kernels and
timed against every other artifact) or ``model.int4.pt``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from nasforge.compression.config import Int4Config, Int8Config
from nasforge.compression.quantization import (
    QuantSpec,
    export_qdq,
    format_candidates,
    mixed_precision_plan,
    quantization_aware_training,
    quantize_int4,
    quantize_static_int8,
    select_int8_format,
)
from nasforge.compression.quantization.runtime import agreement, file_size, ort_predict, ort_session
from nasforge.compression.results import StageOutput
from nasforge.compression.stages.base import PipelineState, Stage, register_stage
from nasforge.train import predict_logits


@dataclass(frozen=True)
class Int8Result(StageOutput):
    """How the INT8 model was made and how closely it follows the float model.

    ``method``: ``ptq``, ``ptq+mixed``, with ``+qat`` when QAT ran. ``formats``: the
    measured format candidates (name, batch size -> ms), fastest first, when
    ``activations: auto``; ``mixed_precision``: the sensitivity plan when one was searched.
    """

    method: str = "ptq"
    spec: dict[str, object] | None = None
    val_drop: float = 0.0
    agreement_vs_float: dict[str, float] | None = None
    agreement_vs_simulation: dict[str, float] | None = None
    formats: tuple[tuple[str, dict[int, float]], ...] = ()
    mixed_precision: dict[str, object] | None = None

    def details(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.formats:
            out["int8_formats"] = [{"name": n, "latency_ms": ms} for n, ms in self.formats]
            out["int8_format"] = self.formats[0][0]
        if self.mixed_precision is not None:
            out["mixed_precision"] = self.mixed_precision
        out["int8"] = {
            "method": self.method,
            "spec": self.spec,
            "val_drop": self.val_drop,
            "agreement_vs_float": self.agreement_vs_float,
            "agreement_vs_simulation": self.agreement_vs_simulation,
        }
        return out


class Int8Stage(Stage[Int8Config]):
    """Static INT8 on ONNX Runtime: format measured on the target (``activations: auto``),
    PTQ; if the validation drop exceeds ``drop_budget``, a mixed-precision plan, then QAT
    (``qat: auto``; distilled from the teacher when ``distill.enabled``)."""

    config_cls = Int8Config
    section = "quantize"

    def _settings(self) -> Int8Config:
        return self.config

    def run(self, state: PipelineState) -> StageOutput:
        q, ds, current = self._settings(), state.dataset, state.model
        calib = ds.x_train[: q.calibration_size]
        base = QuantSpec(calibration=q.calibration, percentile=q.percentile)
        formats: tuple[tuple[str, dict[int, float]], ...] = ()
        format_notes: tuple[str, ...] = ()
        if q.activations == "auto":
            state.say("measuring INT8 formats on onnxruntime")
            choice = select_int8_format(
                current,
                calib,
                state.input_shape,
                format_candidates(current, base),
                state.target.batch_sizes,
                state.target.threads,
            )
            formats = tuple((t.name, t.latency_ms) for t in choice.trials)
            spec, format_notes = choice.spec, choice.notes
        else:
            spec = replace(base, activations=q.activations)
        float_val = state.accuracy(current, "val")
        state.say(
            f"post-training INT8 ({spec.activations} activations, {q.calibration} calibration)"
        )
        sim = quantize_static_int8(current, calib, spec)
        drop = float_val - state.accuracy(sim, "val")
        method, mixed = "ptq", None
        if drop > q.drop_budget and q.mixed_precision and q.qat != "always":
            state.say(
                f"PTQ drop {drop * 100:.2f} points > budget; searching a mixed-precision plan"
            )
            mp = mixed_precision_plan(current, calib, ds.x_val, ds.y_val, q.drop_budget, spec)
            mixed = json.loads(mp.to_json())
            if mp.keep_fp32:
                spec = replace(spec, exclude=tuple(spec.exclude) + mp.keep_fp32)
                sim = quantize_static_int8(current, calib, spec)
                drop = float_val - state.accuracy(sim, "val")
                method = "ptq+mixed"
        if q.qat == "always" or (q.qat == "auto" and drop > q.drop_budget):
            state.say(
                f"quantization-aware training ({q.qat_epochs} epochs, "
                f"val drop {drop * 100:.2f} points)"
            )
            train = state.recipe(epochs=q.qat_epochs, lr=q.qat_lr, weight_decay=0.0)
            loss = state.distillation_loss() if state.distill.enabled else None
            sim, _ = quantization_aware_training(
                current, ds.x_train, ds.y_train, calib, train, spec, loss
            )
            drop = float_val - state.accuracy(sim, "val")
            method += "+qat"
        warnings: tuple[str, ...] = ()
        if drop > q.drop_budget:
            warnings = (
                f"INT8 validation drop {drop * 100:.2f} points exceeds the budget "
                f"{q.drop_budget * 100:.2f} ({method})",
            )
        path = export_qdq(sim, state.out_dir / "model.int8.onnx", state.input_shape)
        logits = ort_predict(ort_session(path, state.target.threads), ds.x_test)
        acc = float((logits.argmax(1) == ds.y_test).float().mean())
        agree = agreement(predict_logits(current, ds.x_test), logits)
        return Int8Result(
            self.name,
            "int8",
            acc,
            file_size(path),
            path.name,
            (f"{method}; top-1 agreement with float {agree['top1_agreement']:.4f}", *format_notes),
            warnings,
            method=method,
            spec=asdict(spec),
            val_drop=drop,
            agreement_vs_float=agree,
            agreement_vs_simulation=agreement(predict_logits(sim, ds.x_test), logits),
            formats=formats,
            mixed_precision=mixed,
        )


class QATStage(Int8Stage):
    """``quantize_int8`` with quantization-aware training always (``qat: always``)."""

    def _settings(self) -> Int8Config:
        return self.config.model_copy(update={"qat": "always"})


@dataclass(frozen=True)
class Int4Result(StageOutput):
    """Group size of the 4-bit weights."""

    group_size: int = 32


class Int4Stage(Stage[Int4Config]):
    """Grouped INT4 weight-only quantization, saved as ``model.int4.pt``. No x86 runtime
    has an INT4 convolution kernel, so it buys size, not speed."""

    config_cls = Int4Config
    section = "quantize"

    def run(self, state: PipelineState) -> StageOutput:
        state.say("INT4 weight-only quantization")
        g = self.config.int4_group_size
        m4 = quantize_int4(state.model, g)
        path = state.out_dir / "model.int4.pt"
        m4.save(path)
        runs_as = "pruned" if state.pruned else "original"
        return Int4Result(
            self.name,
            "int4-weight-only",
            state.accuracy(m4.materialize(state.model)),
            m4.size_bytes,
            path.name,
            (
                "no INT4 convolution kernel on x86 CPU runtimes: runs "
                f"dequantized, latency as {runs_as}",
            ),
            group_size=g,
        )


register_stage("quantize_int8", Int8Stage)
register_stage("qat", QATStage)
register_stage("int4", Int4Stage)
