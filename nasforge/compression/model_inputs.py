"""Models that are not a Python module nasforge can rewrite: ONNX files and exported programs.

:func:`run_onnx_pipeline` quantizes an ONNX model given as input (onnxruntime's static QDQ
quantizer, and its dynamic one when the model has MatMul/Gemm, chosen by measurement;
accuracy through onnxruntime). :func:`run_exported_pipeline` does the same for the module of
an exported program (``.pt2``) after exporting it to ONNX. Both refuse pruning and training
stages with one line, and end like :func:`~nasforge.compression.pipeline.run_pipeline`:
every artifact timed in one interleaved pass, every stage against every earlier one, the
shipped ``model.deploy.onnx`` and the report.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.compression.config import CompressConfig
from nasforge.compression.errors import CompressionError, UnsupportedModelError
from nasforge.compression.pipeline import (
    ONNX_STAGES,
    InputShapeError,
    _finish,
    _measure,
    _shape_text,
    prepare_inputs,
)
from nasforge.compression.quantization import export_onnx
from nasforge.compression.quantization.runtime import (
    file_size,
    ort_predict,
    ort_session,
    paired,
    speedup_text,
    timing_config,
)
from nasforge.compression.results import CompressionReport, StageOutput
from nasforge.compression.stages import Int8Result, Progress, build_stages
from nasforge.data import Dataset, adapt_input
from nasforge.hardware.timing import TimingConfig

__all__ = ["run_exported_pipeline", "run_onnx_pipeline"]
log = logging.getLogger("nasforge.compression")


def _onnx_batch(path: Path) -> int | None:
    """The fixed batch size of the ONNX model's first input, or ``None`` when symbolic."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    inp = next(i for i in m.graph.input if i.name not in init)
    dims = inp.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None


def _top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def run_onnx_pipeline(
    model_path: str | Path,
    dataset: Dataset,
    cfg: CompressConfig,
    out_dir: str | Path,
    progress: Progress | None = None,
    timing: TimingConfig | None = None,
) -> CompressionReport:
    """Quantize an ONNX model given as input (no PyTorch module): onnxruntime's static QDQ
    quantizer (u8 activations, or s8 with ``activations: int8``; s8 per-channel weights;
    calibrated on the training split) and, when the model has MatMul/Gemm, its dynamic one;
    the dynamic one replaces the static one only when measurably faster at every batch size
    in one interleaved pass and within ``drop_budget`` (or when the static one is over the
    budget and it is not). Accuracy is measured through onnxruntime. The FP32 file is copied
    to ``model.fp32.onnx``; the rest is :func:`run_pipeline`'s (every stage against every
    earlier one, the shipped ``model.deploy.onnx``, the report).

    Raises:
        UnsupportedModelError: a stage other than ``quantize_int8`` is configured (pruning
            and training need the PyTorch model).
        InputShapeError: the model's input shape is not the data's (names both; pass
            ``--input-shape``) or the model does not run on it.
        QuantizationError: onnxruntime cannot quantize the file (one line).
    """
    say = progress or log.info
    src, out = Path(model_path), Path(out_dir)
    refused = [s.name for s in cfg.stage_specs() if s.name not in ONNX_STAGES]
    if refused:
        raise UnsupportedModelError(
            f"MODEL: {src} is an ONNX model: only quantization ({', '.join(ONNX_STAGES)}) runs "
            f"on it; stage {refused[0]!r} needs the PyTorch model (a state dict with "
            "--model-factory, a run's best/, or an exported program .pt2)"
        )
    if not cfg.stage_specs():
        raise CompressionError(f"MODEL: {src} is an ONNX model and no stage is configured")
    from nasforge.compression.quantization import ortquant
    from nasforge.compression.quantization.qsim import QuantSpec

    stage = build_stages(cfg)[0]
    q: Any = stage.config
    shape = ortquant.onnx_input_shape(src)
    if cfg.input_shape is not None and tuple(cfg.input_shape) != shape:
        raise InputShapeError(
            f"--input-shape {_shape_text(tuple(cfg.input_shape))}: the ONNX model {src.name} "
            f"takes inputs of shape {shape}"
        )
    ds = dataset
    if tuple(ds.input_shape) != shape:
        if cfg.input_shape is None:
            raise InputShapeError(
                f"the ONNX model {src.name} takes inputs of shape {shape} but {ds.name} has "
                f"{tuple(ds.input_shape)}; pass --input-shape {_shape_text(shape)} "
                "(compress.input_shape) to adapt the data"
            )
        ds = adapt_input(ds, shape)
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "model.fp32.onnx"
    if not fp32.exists() or src.resolve() != fp32.resolve():
        shutil.copyfile(src, fp32)
    threads = cfg.target.threads
    fixed = _onnx_batch(fp32)
    sizes = tuple(b for b in cfg.target.batch_sizes if fixed is None or b == fixed)
    notes: list[str] = []
    if not sizes:
        sizes = (fixed or 1,)
        notes.append(f"the ONNX model's batch dimension is fixed at {fixed}: timed at it only")
    cfg = cfg.model_copy(update={"target": cfg.target.model_copy(update={"batch_sizes": sizes})})
    sess = ort_session(fp32, threads)
    bs = fixed or 256
    try:
        float_val = ort_predict(sess, ds.x_val, bs)
    except Exception as exc:  # noqa: BLE001 - any onnxruntime failure on the data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputShapeError(
            f"the ONNX model {src.name} does not run on {ds.name}'s inputs of shape "
            f"{tuple(ds.input_shape)} ({first[:300]})"
        ) from None
    float_test = ort_predict(sess, ds.x_test, bs)
    val_acc = _top1(float_val, ds.y_val)
    spec = QuantSpec(
        calibration=q.calibration,
        percentile=q.percentile,
        activations="int8" if q.activations == "int8" else "uint8",
    )
    calib = ds.x_train[: q.calibration_size]
    say("quantizing the ONNX model with onnxruntime (static QDQ; dynamic when it has MatMul)")
    makers: dict[str, Callable[[Path], Path]] = {
        "ort_static": lambda p: ortquant.quantize_onnx_static(fp32, p, calib, spec)
    }
    if {"MatMul", "Gemm"} & ortquant.onnx_op_types(fp32):
        makers["ort_dynamic"] = lambda p: ortquant.quantize_onnx_dynamic(fp32, p)
    built: dict[str, Path] = {}
    drops: dict[str, float] = {}
    failure: CompressionError | None = None
    for name, make in makers.items():
        try:
            path = make(out / f"model.int8.{name}.onnx")
        except CompressionError as exc:
            failure = failure or exc
            notes.append(f"{name} failed: {str(exc).splitlines()[0]}")
            continue
        built[name] = path
        drops[name] = val_acc - _top1(
            ort_predict(ort_session(path, threads), ds.x_val, bs), ds.y_val
        )
    if not built:
        assert failure is not None
        raise failure
    chosen = next(iter(built))
    formats: tuple[tuple[str, dict[int, float]], ...] = ()
    if len(built) > 1:
        say("measuring the onnxruntime INT8 formats (interleaved)")
        lat = _measure(
            {"original": fp32, **built}, ds, cfg.target, timing or timing_config(cfg.target.rounds)
        )
        formats = tuple((n, {b: m.median_ms for b, m in lat[n].items()}) for n in built)
        default, other = list(built)[:2]
        ups = [paired(lat[default][b], lat[other][b]) for b in lat[default]]
        labels = ", ".join(f"batch {b}: {speedup_text(s)}" for b, s in zip(lat[default], ups))
        faster = all(s.stable and s.low > 1.0 for s in ups)
        if drops[default] > q.drop_budget and drops[other] <= q.drop_budget:
            chosen = other
            notes.append(f"{other}: {default} is over the drop budget ({labels} vs {default})")
        elif faster and drops[other] <= q.drop_budget:
            chosen = other
            notes.append(f"{other}: measurably faster than {default} ({labels})")
        elif faster:
            notes.append(
                f"{default}: {other} is faster ({labels}) but loses "
                f"{drops[other] * 100:.2f} points, over the drop budget"
            )
        else:
            notes.append(f"{default}: {other} not measurably faster ({labels})")
    final = out / "model.int8.onnx"
    shutil.copyfile(built[chosen], final)
    logits = ort_predict(ort_session(final, threads), ds.x_test, bs)
    agree = float((logits.argmax(1) == float_test.argmax(1)).float().mean())
    drop = drops[chosen]
    warnings: list[str] = []
    if drop > q.drop_budget:
        warnings.append(
            f"INT8 validation drop {drop * 100:.2f} points exceeds the budget "
            f"{q.drop_budget * 100:.2f} ({chosen})"
        )
    result = Int8Result(
        stage.name,
        "int8",
        _top1(logits, ds.y_test),
        file_size(final),
        final.name,
        (f"{chosen} (onnxruntime); top-1 agreement with float {agree:.4f}", *notes),
        tuple(warnings),
        method=chosen,
        val_drop=drop,
        agreement_vs_float={"top1_agreement": agree},
        formats=formats,
        layers=tuple(ortquant.onnx_layer_decisions(final, chosen)),
    )
    baseline = StageOutput("", "original", _top1(float_test, ds.y_test), file_size(fp32), fp32.name)
    return _finish(baseline, (result,), warnings, ds, cfg, out, timing, say)


def run_exported_pipeline(
    model: nn.Module,
    dataset: Dataset,
    cfg: CompressConfig,
    out_dir: str | Path,
    source: str = "MODEL",
    progress: Progress | None = None,
    timing: TimingConfig | None = None,
) -> CompressionReport:
    """Compress the module of an exported program (``.pt2``; see
    :func:`nasforge.modelfile.load_exported_program`).

    Its graph holds ATen calls (``aten.conv2d`` on parameters), not ``nn.Conv2d`` /
    ``nn.Linear`` modules, so nasforge's channel pruning and its own INT8 simulation find no
    layer to act on; rather than report a no-op as compression, the module is exported to
    ONNX (``model.fp32.onnx``) after the input check of :func:`prepare_inputs`, and
    quantized by :func:`run_onnx_pipeline` (onnxruntime's quantizers, chosen by measurement).

    Raises:
        UnsupportedModelError: a stage other than ``quantize_int8`` is configured (one line:
            what to pass instead).
        InputShapeError, DataError: as :func:`prepare_inputs`.
    """
    refused = [s.name for s in cfg.stage_specs() if s.name not in ONNX_STAGES]
    if refused:
        raise UnsupportedModelError(
            f"{source} is an exported program (ATen ops, no nn.Conv2d/nn.Linear modules): only "
            f"quantization ({', '.join(ONNX_STAGES)}) runs on it; stage {refused[0]!r} needs "
            "the Python module (a state dict with --model-factory, or a run's best/)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = prepare_inputs(model, dataset, cfg.input_shape)
    shape = tuple(ds.input_shape)
    (progress or log.info)("exporting the exported program to ONNX")
    fp32 = export_onnx(model, out / "model.fp32.onnx", shape)
    return run_onnx_pipeline(
        fp32, ds, cfg.model_copy(update={"input_shape": shape}), out, progress, timing
    )
