"""Quantization stages: ``quantize_int8`` (PTQ, mixed precision and QAT as needed), ``qat``
(always quantization-aware training) and ``int4`` (weight-only).

They read ``state.model`` (the float model after earlier stages) without changing it and
write their own artifact: ``model.int8.onnx`` (run on ONNX Runtime's integer kernels and
timed against every other artifact) or ``model.int4.pt``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from nasforge.compression.config import Int4Config, Int8Config
from nasforge.compression.errors import QuantizationError
from nasforge.compression.quantization import (
    FormatChoice,
    MixedPrecisionPlan,
    QuantSim,
    QuantSpec,
    export_qdq,
    format_candidates,
    inductor,
    mixed_precision_plan,
    quantization_aware_training,
    quantize_int4,
    quantize_static_int8,
    select_int8_format,
)
from nasforge.compression.quantization.ortquant import onnx_layer_decisions
from nasforge.compression.quantization.runtime import agreement, file_size, ort_predict, ort_session
from nasforge.compression.results import StageOutput
from nasforge.compression.stages.base import PipelineState, Stage, register_stage
from nasforge.train import predict_logits


@dataclass(frozen=True)
class Int8Result(StageOutput):
    """How the INT8 model was made and how closely it follows the float model.

    ``method``: ``ptq``, ``ptq+mixed``, with ``+qat`` when QAT ran, or the onnxruntime
    quantizer that measured faster (``ort_static`` / ``ort_dynamic``). ``formats``: the
    measured candidates (name, batch size -> ms), the chosen one first, when ``activations:
    auto``; ``mixed_precision``: the sensitivity plan when one was searched. ``layers``: one
    decision per quantizable layer (``name``, ``op``, ``precision`` int8/float, ``reason``,
    ``measured``), for the report. ``runtime``: where the INT8 model runs fastest
    (``onnxruntime``, or ``torch-inductor`` when torchao PT2E measured faster than the ONNX
    Runtime artifact in the same pass: then ``runtime_artifact`` is the ``.pt2`` to deploy;
    ``artifact`` stays the ONNX file every stage is timed with).
    """

    method: str = "ptq"
    spec: dict[str, object] | None = None
    val_drop: float = 0.0
    agreement_vs_float: dict[str, float] | None = None
    agreement_vs_simulation: dict[str, float] | None = None
    formats: tuple[tuple[str, dict[int, float]], ...] = ()
    mixed_precision: dict[str, object] | None = None
    layers: tuple[dict[str, object], ...] = ()
    runtime: str = "onnxruntime"
    runtime_artifact: str = ""
    runtime_note: str = ""

    def details(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.formats:
            out["int8_formats"] = [{"name": n, "latency_ms": ms} for n, ms in self.formats]
            out["int8_format"] = self.formats[0][0]
        if self.mixed_precision is not None:
            out["mixed_precision"] = self.mixed_precision
        if self.layers:
            out["int8_layers"] = [dict(d) for d in self.layers]
        out["int8_runtime"] = {
            "runtime": self.runtime,
            "artifact": self.runtime_artifact or self.artifact,
            "why": self.runtime_note,
        }
        out["int8"] = {
            "method": self.method,
            "spec": self.spec,
            "val_drop": self.val_drop,
            "agreement_vs_float": self.agreement_vs_float,
            "agreement_vs_simulation": self.agreement_vs_simulation,
        }
        return out


def qdq_layer_decisions(
    sim: QuantSim,
    default: QuantSpec,
    choice: FormatChoice | None = None,
    plan: MixedPrecisionPlan | None = None,
) -> list[dict[str, object]]:
    """Per-layer decisions of a nasforge QDQ build: the simulation's own
    (``QuantSim.layer_decisions``: op kind, int8/float, kernel or why float), with what was
    measured: an op kind kept float because that format measured faster than ``default``
    ("measured faster"), a measured float variant that was not faster, and layers the
    mixed-precision ``plan`` kept FP32 ("sensitivity: drop X points")."""
    get = getattr(sim, "layer_decisions", None)
    rows: list[dict[str, object]] = (
        [dict(d) for d in get()]
        if callable(get)
        else [
            {"name": w, "op": "weighted", "quantized": True, "reason": "int8 weights"}
            for w in sim.weighted
        ]
    )
    spec = sim.spec
    chosen_float = set(getattr(spec, "float_ops", ())) - set(getattr(default, "float_ops", ()))
    tried: dict[str, str] = {}
    if choice is not None:
        for t in choice.trials:
            for k in set(getattr(t.spec, "float_ops", ())) - set(getattr(default, "float_ops", ())):
                if t.method == "qdq":
                    tried[k] = ", ".join(
                        f"b{bs} {s.ratio:.2f}x vs FP32" for bs, s in t.speedup.items()
                    ) + (f" (screened out: {t.screened})" if t.screened else "")
    fp32_drop: dict[str, float] = {}
    if plan is not None:
        acc = {s.layer: s.accuracy for s in plan.sensitivities}
        fp32_drop = {
            k: plan.float_accuracy - acc.get(k, plan.float_accuracy) for k in plan.keep_fp32
        }
    for d in rows:
        name, kind = str(d.get("name", "")), str(d.get("op", ""))
        q = d.get("quantized", d.get("precision", "int8"))
        d["precision"] = ("int8" if q else "float") if isinstance(q, bool) else str(q)
        d.pop("quantized", None)
        hit = next((k for k in fp32_drop if name == k or name.startswith(k + ".")), None)
        if hit is not None:
            d["precision"] = "float"
            d["reason"] = (
                f"sensitivity: drop {fp32_drop[hit] * 100:.2f} points with only this layer "
                "in INT8 (kept FP32 to fit the drop budget)"
            )
        elif kind in chosen_float:
            d["reason"] = "float: measured faster (this op kind kept float)"
            d["measured"] = tried.get(kind, "")
        elif kind in tried:
            d["measured"] = f"float variant measured not faster ({tried[kind]})"
    return rows


def _runtime_line(note: str, notes: tuple[str, ...]) -> tuple[str, ...]:
    return (note,) if note and note not in notes else ()


class Int8Stage(Stage[Int8Config]):
    """Static INT8: the build and runtime chosen by measurement on the target
    (``activations: auto``: nasforge QDQ formats, op kinds kept float, onnxruntime's own
    static/dynamic quantizers and, with torchao installed, torchao PT2E on torch inductor,
    timed in one interleaved pass; a faster candidate over ``drop_budget`` is not chosen).
    For a nasforge build: PTQ; if the validation drop exceeds ``drop_budget``, a
    mixed-precision plan, then QAT (``qat: auto``; distilled from the teacher when
    ``distill.enabled``)."""

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
        choice: FormatChoice | None = None
        runtime, runtime_artifact, runtime_note = "onnxruntime", "", ""
        final = state.out_dir / "model.int8.onnx"
        with tempfile.TemporaryDirectory() as tmp:
            if q.activations == "auto":
                # QAT always trains nasforge's simulation: only its formats are candidates
                other = q.qat != "always"
                torch_rt = other and inductor.available()
                if other and not torch_rt:
                    runtime_note = inductor.unavailable_reason()
                state.say(
                    "measuring INT8 candidates on onnxruntime"
                    + (" and torch inductor" if torch_rt else "")
                )
                choice = select_int8_format(
                    current,
                    calib,
                    state.input_shape,
                    format_candidates(
                        current,
                        base,
                        onnxruntime_quantizer=other,
                        dynamic=None if other else False,
                        torch_runtime=torch_rt,
                    ),
                    state.target.batch_sizes,
                    state.target.threads,
                    tmp,
                    val=(ds.x_val, ds.y_val),
                    drop_budget=q.drop_budget,
                )
                formats = tuple((t.name, t.latency_ms) for t in choice.trials)
                spec, format_notes = choice.spec, choice.notes
                if choice.runtime_chosen:
                    runtime_note = next(
                        (n for n in choice.notes if n.startswith("INT8 runtime:")), ""
                    )
                    try:
                        runtime_artifact = inductor.save_program(
                            choice.built[choice.runtime_chosen],
                            state.out_dir / "model.int8.pt2",
                            state.input_shape,
                        ).name
                        runtime = "torch-inductor"
                    except QuantizationError as e:
                        runtime_note += f"; not shipped: {str(e).splitlines()[0]}"
                elif torch_rt:
                    runtime_note = next(
                        (n for n in choice.notes if n.startswith("INT8 runtime:")),
                        "torch INT8 runtime could not be measured (see notes)",
                    )
                if choice.method != "qdq":
                    return self._ort_result(
                        state, q, choice, final, formats, runtime, runtime_artifact, runtime_note
                    )
            else:
                spec = replace(base, activations=q.activations)
        return self._qdq_result(
            state,
            q,
            spec,
            base,
            choice,
            final,
            formats,
            format_notes,
            runtime,
            runtime_artifact,
            runtime_note,
        )

    def _ort_result(
        self,
        state: PipelineState,
        q: Int8Config,
        choice: FormatChoice,
        final: Path,
        formats: tuple[tuple[str, dict[int, float]], ...],
        runtime: str,
        runtime_artifact: str,
        runtime_note: str,
    ) -> Int8Result:
        """onnxruntime's own quantizer measured faster: ship its file (no QAT/mixed
        precision: it was chosen only within the drop budget)."""
        ds = state.dataset
        shutil.copyfile(choice.built[choice.chosen], final)
        logits = ort_predict(ort_session(final, state.target.threads), ds.x_test)
        acc = float((logits.argmax(1) == ds.y_test).float().mean())
        agree = agreement(predict_logits(state.model, ds.x_test), logits)
        drop = choice.trials[0].drop or 0.0
        warnings: tuple[str, ...] = ()
        if drop > q.drop_budget:
            warnings = (
                f"INT8 validation drop {drop * 100:.2f} points exceeds the budget "
                f"{q.drop_budget * 100:.2f} ({choice.chosen})",
            )
        layers = tuple(onnx_layer_decisions(final, choice.method))
        return Int8Result(
            self.name,
            "int8",
            acc,
            file_size(final),
            final.name,
            (
                f"{choice.chosen} (onnxruntime's quantizer, measured faster); top-1 agreement "
                f"with float {agree['top1_agreement']:.4f}",
                *choice.notes,
                *_runtime_line(runtime_note, choice.notes),
            ),
            warnings,
            method=choice.method,
            spec=asdict(choice.spec),
            val_drop=drop,
            agreement_vs_float=agree,
            formats=formats,
            layers=layers,
            runtime=runtime,
            runtime_artifact=runtime_artifact,
            runtime_note=runtime_note,
        )

    def _qdq_result(
        self,
        state: PipelineState,
        q: Int8Config,
        spec: QuantSpec,
        base: QuantSpec,
        choice: FormatChoice | None,
        final: Path,
        formats: tuple[tuple[str, dict[int, float]], ...],
        format_notes: tuple[str, ...],
        runtime: str,
        runtime_artifact: str,
        runtime_note: str,
    ) -> Int8Result:
        ds, current = state.dataset, state.model
        calib = ds.x_train[: q.calibration_size]
        float_val = state.accuracy(current, "val")
        state.say(
            f"post-training INT8 ({spec.activations} activations, {q.calibration} calibration)"
        )
        sim = quantize_static_int8(current, calib, spec)
        drop = float_val - state.accuracy(sim, "val")
        method, mixed, plan = "ptq", None, None
        if drop > q.drop_budget and q.mixed_precision and q.qat != "always":
            state.say(
                f"PTQ drop {drop * 100:.2f} points > budget; searching a mixed-precision plan"
            )
            plan = mixed_precision_plan(current, calib, ds.x_val, ds.y_val, q.drop_budget, spec)
            mixed = json.loads(plan.to_json())
            if plan.keep_fp32:
                spec = replace(spec, exclude=tuple(spec.exclude) + plan.keep_fp32)
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
        if runtime_artifact and method != "ptq":
            # the .pt2 was measured against plain PTQ; the shipped model was changed since
            (state.out_dir / runtime_artifact).unlink(missing_ok=True)
            runtime, runtime_artifact = "onnxruntime", ""
            runtime_note = (
                f"torch inductor measured faster than the onnxruntime PTQ build, but {method} "
                "changed the model after that measurement: onnxruntime kept"
            )
        path = export_qdq(sim, final, state.input_shape)
        logits = ort_predict(ort_session(path, state.target.threads), ds.x_test)
        acc = float((logits.argmax(1) == ds.y_test).float().mean())
        agree = agreement(predict_logits(current, ds.x_test), logits)
        return Int8Result(
            self.name,
            "int8",
            acc,
            file_size(path),
            path.name,
            (
                f"{method}; top-1 agreement with float {agree['top1_agreement']:.4f}",
                *format_notes,
                *_runtime_line(runtime_note, format_notes),
            ),
            warnings,
            method=method,
            spec=asdict(spec),
            val_drop=drop,
            agreement_vs_float=agree,
            agreement_vs_simulation=agreement(predict_logits(sim, ds.x_test), logits),
            formats=formats,
            mixed_precision=mixed,
            layers=tuple(qdq_layer_decisions(sim, base, choice, plan)),
            runtime=runtime,
            runtime_artifact=runtime_artifact,
            runtime_note=runtime_note,
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
