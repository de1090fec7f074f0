"""Quantization: INT8 PTQ and QAT on one fake-quant simulation exported to ONNX Runtime
QDQ, onnxruntime's own quantizers and torchao PT2E (``inductor``, optional) as measured
candidates, INT4 weight-only, and per-layer sensitivity with mixed-precision plans."""

from nasforge.compression.quantization.calibrate import CALIBRATIONS, RangeObserver, qparams
from nasforge.compression.quantization.candidates import Candidate, format_candidates, op_kinds
from nasforge.compression.quantization.export import compact, export_onnx, export_qdq
from nasforge.compression.quantization.int4 import Int4Model, quantize_int4
from nasforge.compression.quantization.ortquant import (
    quantize_onnx_dynamic,
    quantize_onnx_static,
)
from nasforge.compression.quantization.ptq import (
    FormatChoice,
    FormatTrial,
    choose_int8_format,
    quantize_static_int8,
    select_int8_format,
)
from nasforge.compression.quantization.qat import quantization_aware_training
from nasforge.compression.quantization.qsim import (
    ActQuant,
    QuantSim,
    QuantSpec,
    fold_bn_graph,
    prepare,
)
from nasforge.compression.quantization.sensitivity import (
    LayerSensitivity,
    MixedPrecisionPlan,
    layer_sensitivity,
    mixed_precision_plan,
)

__all__ = [
    "CALIBRATIONS",
    "ActQuant",
    "Candidate",
    "FormatChoice",
    "FormatTrial",
    "Int4Model",
    "LayerSensitivity",
    "MixedPrecisionPlan",
    "QuantSim",
    "QuantSpec",
    "RangeObserver",
    "choose_int8_format",
    "compact",
    "export_onnx",
    "export_qdq",
    "fold_bn_graph",
    "format_candidates",
    "layer_sensitivity",
    "mixed_precision_plan",
    "op_kinds",
    "prepare",
    "qparams",
    "quantization_aware_training",
    "quantize_int4",
    "quantize_onnx_dynamic",
    "quantize_onnx_static",
    "quantize_static_int8",
    "select_int8_format",
]
