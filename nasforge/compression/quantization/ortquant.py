"""ONNX Runtime's own quantizers as measured candidates, and for ONNX models given as input.

:func:`quantize_onnx_static` runs ``onnxruntime.quantization.quantize_static`` (QDQ format,
calibrated on ``calib_x``: uint8 or int8 activations, int8 per-channel or per-tensor weights,
as a :class:`~nasforge.compression.quantization.qsim.QuantSpec` says) and
:func:`quantize_onnx_dynamic` runs ``quantize_dynamic`` (int8 weights of MatMul/Gemm,
activations quantized at run time: ``DynamicQuantizeLinear -> MatMulInteger``, fused by the
runtime into ``DynamicQuantizeMatMul``; often the fastest for transformer Linear layers).

Neither is assumed faster than nasforge's own QDQ export: the INT8 stage measures them
against it in one interleaved pass (:func:`~nasforge.compression.quantization.ptq.
select_int8_format`). Input files are ONNX protobufs only (no code runs when they load).

Mapping of the spec: ``calibration`` ``minmax``/``percentile``/``entropy`` map to
onnxruntime's methods of that name; ``mse`` has no onnxruntime counterpart and uses MinMax
(said in :func:`ort_calibration`). ``exclude`` (module names) excludes the ONNX nodes the
exporter named after them (``/features/0/...``); ``float_ops`` (when the spec has it) drops
the matching ONNX op types from the quantized ones.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasforge.compression.errors import QuantizationError
from nasforge.compression.quantization.qsim import QuantSpec

#: op kinds of ``QuantSpec.float_ops`` -> the ONNX op types they stand for
FLOAT_OP_TYPES: dict[str, tuple[str, ...]] = {
    "silu": ("Sigmoid", "Mul"),
    "sigmoid": ("Sigmoid",),
    "hardswish": ("HardSwish",),
    "hardsigmoid": ("HardSigmoid",),
    "gelu": ("Gelu", "Erf"),
    "softmax": ("Softmax",),
    "layernorm": ("LayerNormalization",),
    "mul": ("Mul",),
    "add": ("Add",),
}

#: op types onnxruntime's static QDQ quantizer handles (its QDQ registry and the QLinear
#: element-wise/activation kernels of the CPU EP)
STATIC_OP_TYPES = (
    "Conv",
    "MatMul",
    "Gemm",
    "Add",
    "Mul",
    "Sigmoid",
    "Softmax",
    "AveragePool",
    "GlobalAveragePool",
    "MaxPool",
    "Concat",
    "Relu",
    "Clip",
    "LeakyRelu",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Gather",
    "Slice",
    "Split",
    "Resize",
    "Pad",
)


class _Reader:
    """``CalibrationDataReader`` over ``calib_x`` in batches (duck-typed: onnxruntime only
    calls ``get_next``; ``rewind`` is there for its percentile/entropy collectors)."""

    def __init__(self, name: str, x: torch.Tensor, batch_size: int) -> None:
        self.name, self.x, self.batch_size = name, x, batch_size
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.x), self.batch_size):
            yield {self.name: self.x[i : i + self.batch_size].numpy().astype(np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def _load(path: str | Path) -> Any:
    import onnx

    p = Path(path)
    if not p.is_file():
        raise QuantizationError(f"ONNX model {p}: no such file")
    try:
        return onnx.load(str(p))
    except Exception as e:  # a broken protobuf: one line naming the file
        raise QuantizationError(f"ONNX model {p}: cannot be read ({type(e).__name__})") from e


def _input_name(model: Any, path: Path) -> str:
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise QuantizationError(
            f"ONNX model {path}: expected one input tensor, found {len(names)} ({names})"
        )
    return names[0]


def ort_calibration(method: str) -> tuple[Any, dict[str, object], str]:
    """onnxruntime's calibration method for ``QuantSpec.calibration``, its extra options and
    a note (non-empty when the mapping is not exact)."""
    from onnxruntime.quantization import CalibrationMethod

    if method == "percentile":
        return CalibrationMethod.Percentile, {}, ""
    if method == "entropy":
        return CalibrationMethod.Entropy, {}, ""
    note = "onnxruntime has no MSE calibration: MinMax used" if method == "mse" else ""
    return CalibrationMethod.MinMax, {}, note


def _excluded_nodes(model: Any, exclude: Sequence[str]) -> list[str]:
    prefixes = ["/" + e.replace(".", "/") + "/" for e in exclude]
    return [n.name for n in model.graph.node if any(n.name.startswith(p) for p in prefixes)]


def _preprocessed(src: Path, dst: Path) -> Path:
    """onnxruntime's recommended pre-processing (shape inference, graph clean-up); the
    model as given when it fails (pre-processing is an optimisation, not a requirement)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst
    except Exception:
        return src


def quantize_onnx_static(
    fp32_onnx: str | Path,
    out: str | Path,
    calib_x: torch.Tensor,
    spec: QuantSpec | None = None,
    batch_size: int = 32,
) -> Path:
    """onnxruntime's static QDQ quantization of ``fp32_onnx``, calibrated on ``calib_x``,
    written to ``out`` (returned).

    Activations uint8 (asymmetric) or int8 (symmetric) and weights int8 per channel or per
    tensor as ``spec`` says (default: u8 activations, s8 per-channel weights).

    Raises:
        QuantizationError: the file is missing/unreadable, has more than one input, or
            onnxruntime cannot quantize it (one line naming the file).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    spec = spec or QuantSpec()
    src, out = Path(fp32_onnx), Path(out)
    model = _load(src)
    name = _input_name(model, src)
    method, extra, _ = ort_calibration(spec.calibration)
    if spec.calibration == "percentile":
        extra["CalibPercentile"] = spec.percentile
    extra["ActivationSymmetric"] = spec.signed
    floats = {t for k in getattr(spec, "float_ops", ()) for t in FLOAT_OP_TYPES.get(k, ())}
    ops = [t for t in STATIC_OP_TYPES if t not in floats]
    with tempfile.TemporaryDirectory() as d:
        pre = _preprocessed(src, Path(d) / "pre.onnx")
        try:
            quantize_static(
                str(pre),
                str(out),
                _Reader(name, calib_x, batch_size),  # type: ignore[arg-type]
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=ops,
                per_channel=spec.weights == "int8_per_channel",
                activation_type=QuantType.QInt8 if spec.signed else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=_excluded_nodes(model, spec.exclude),
                calibrate_method=method,
                extra_options=extra,
            )
        except QuantizationError:
            raise
        except Exception as e:
            raise QuantizationError(
                f"ONNX model {src}: onnxruntime quantize_static failed: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e
    return out


def quantize_onnx_dynamic(
    fp32_onnx: str | Path, out: str | Path, per_channel: bool = False
) -> Path:
    """onnxruntime's dynamic quantization of ``fp32_onnx``'s MatMul/Gemm layers (int8
    weights, activations quantized per call), written to ``out`` (returned). Convolutions
    stay float (``ConvInteger`` has no fast x86 kernel).

    Raises:
        QuantizationError: the file is missing/unreadable or onnxruntime cannot quantize it.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = Path(fp32_onnx), Path(out)
    _input_name(_load(src), src)
    with tempfile.TemporaryDirectory() as d:
        pre = _preprocessed(src, Path(d) / "pre.onnx")
        try:
            quantize_dynamic(
                str(pre),
                str(out),
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
            )
        except Exception as e:
            raise QuantizationError(
                f"ONNX model {src}: onnxruntime quantize_dynamic failed: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e
    return out


def onnx_op_types(path: str | Path) -> set[str]:
    """The op types in an ONNX file (what candidates are worth measuring)."""
    return {n.op_type for n in _load(path).graph.node}


def onnx_input_shape(path: str | Path) -> tuple[int, ...]:
    """The non-batch input shape of a one-input ONNX model.

    Raises:
        QuantizationError: an input dimension other than the batch is not fixed.
    """
    p = Path(path)
    m = _load(p)
    name = _input_name(m, p)
    inp = next(i for i in m.graph.input if i.name == name)
    dims = inp.type.tensor_type.shape.dim[1:]
    if any(not d.HasField("dim_value") for d in dims):
        raise QuantizationError(
            f"ONNX model {p}: input {name!r} has a symbolic non-batch dimension; "
            "export it with a fixed C,H,W"
        )
    return tuple(int(d.dim_value) for d in dims)


#: ONNX op types that compute (shape arithmetic, casts and data movement are left out of
#: the per-layer decisions)
COMPUTE_OP_TYPES = frozenset(
    {
        "Conv",
        "ConvInteger",
        "MatMul",
        "MatMulInteger",
        "Gemm",
        "Add",
        "Mul",
        "Div",
        "Sigmoid",
        "Softmax",
        "LayerNormalization",
        "Gelu",
        "Erf",
        "HardSwish",
        "HardSigmoid",
        "AveragePool",
        "GlobalAveragePool",
        "Relu",
        "Clip",
        "Tanh",
        "Sqrt",
        "Pow",
        "ReduceMean",
    }
)


#: ONNX op types onnxruntime's CPU EP runs on integer kernels when QDQ surrounds them
INT8_KERNEL_OP_TYPES = frozenset(
    {
        "Conv",
        "MatMul",
        "Gemm",
        "Add",
        "Mul",
        "Sigmoid",
        "Softmax",
        "AveragePool",
        "GlobalAveragePool",
        "Relu",
        "Clip",
    }
)


def onnx_layer_decisions(path: str | Path, method: str) -> list[dict[str, object]]:
    """Per-node INT8 decisions of a file made by :func:`quantize_onnx_static` (``method``
    ``ort_static``) or :func:`quantize_onnx_dynamic` (``ort_dynamic``): ``name`` (ONNX node),
    ``op`` (op type), ``precision`` (``int8``/``float``) and ``reason``. A static node is
    int8 when an input comes from a ``DequantizeLinear`` and the CPU EP has an integer
    kernel for it (:data:`INT8_KERNEL_OP_TYPES`); a dynamic one when it is
    ``MatMulInteger``/``ConvInteger``."""
    model = _load(path)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    out: list[dict[str, object]] = []
    for n in model.graph.node:
        if n.op_type not in COMPUTE_OP_TYPES:
            continue
        if method == "ort_dynamic":
            q = n.op_type in ("MatMulInteger", "ConvInteger")
            why = (
                "int8 weights, activations quantized per call (onnxruntime dynamic)"
                if q
                else "float: onnxruntime dynamic quantization covers MatMul/Gemm only"
            )
        else:
            fed = any(producer.get(i) == "DequantizeLinear" for i in n.input)
            q = fed and n.op_type in INT8_KERNEL_OP_TYPES
            if q:
                why = "int8: onnxruntime static QDQ (fused into a QLinear kernel)"
            elif n.op_type not in INT8_KERNEL_OP_TYPES:
                why = "float: no integer kernel in onnxruntime" + (
                    " (runs float between its Q/DQ)" if fed else ""
                )
            else:
                why = "float: left unquantized by onnxruntime's static quantizer"
        out.append(
            {"name": n.name, "op": n.op_type, "precision": "int8" if q else "float", "reason": why}
        )
    return out
