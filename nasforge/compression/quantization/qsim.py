"""Quantization simulation on a ``torch.fx`` graph: the one model behind PTQ, QAT and export.

:func:`prepare` traces a float model, folds every conv -> BN pair, swaps conv/linear layers
for versions with per-channel symmetric INT8 fake-quantized weights, and inserts activation
fake-quantizers (:class:`ActQuant`) on exactly the tensors an INT8 runtime quantizes:

* every input of a quantized op (conv, linear, add, mul, concat, average pooling, sigmoid,
  softmax, matmul);
* the output of every quantized conv/linear/add -- after its ReLU/ReLU6 when one follows,
  so the runtime fuses the activation into the requantization;
* data-movement ops (flatten, max-pool, dropout) share their input's quantizer, so the
  runtime can drop their Q/DQ pair;
* the model output stays float.

Per op kind (:data:`KIND_DEFAULTS`; ``QuantSpec.float_ops`` overrides, and
:meth:`QuantSim.layer_decisions` lists every op with its decision and reason):

* ``silu``: decomposed into ``x * sigmoid(x)``, both quantized, so ONNX Runtime runs
  QLinearSigmoid + QLinearMul. Measured (AMD EPYC, onnxruntime 1.32, 1 thread, compare_speedups,
  EfficientNet-B0 width 1 at 32x32, untrained weights; host busy, verdict *unstable*): INT8 vs
  FP32 1.13-1.22x at b1 and 1.24-1.37x at b32; with ``float_ops=("silu",)`` (SiLU float between
  Q/DQ pairs) 0.98-1.04x and 0.96-1.04x. Where the INT8 time goes (ORT profile, b32, same
  host): QLinearConv ~10 ms vs FP32 Conv ~15.6 ms, SiLU as QLinearSigmoid + QLinearMul ~5 ms
  vs FP32's fused QuickGelu ~2.6-3.0 ms (the main loss; no single integer SiLU kernel
  exists), SE gating QLinearMul ~0.6-1.0 ms vs FP32's broadcast Mul 1.5-2.5 ms (so a float
  SE multiply cannot win), depthwise QLinearConv on 1x1/2x2 maps and the head's
  QLinearGlobalAveragePool on 1x1 (fixed at export: ``export.crop_conv_kernels``,
  ``drop_identity_pools``). With those, trained weights (2 epochs mnist5k, INT8 top-1 0.891
  vs FP32 0.883, agreement 0.973): INT8 vs FP32 1.33-1.71x and 1.46-1.69x at b32, 1.58-2.33x
  at b1 (load 3.8-5.3 on 2 CPUs, all *unstable*). The 1x1 convs on 1x1 maps run one image
  at a time (matrix-vector products); ``export_qdq(..., pixel_matmul=True)`` makes them one
  integer MatMul over the batch: INT8 vs FP32 1.62-1.77x at b32 but slower at b1 (see
  ``export.pixel_convs_as_matmul``), so it is an opt-in candidate, not the default.
* ``sigmoid`` (SE gates) and ``mul`` (SE gating ``scale * x``): quantized (QLinearSigmoid,
  QLinearMul). A multiplication by a Python number after a Linear (attention's ``q * scale``)
  is folded into that Linear's weights instead.
* ``matmul`` (activation x activation in attention) and ``softmax``: quantized
  (QLinearMatMul, QLinearSoftmax). Measured ViT-tiny (12 layers, 32x32, b32, same host and
  harness, untrained weights): INT8 vs FP32 2.01-2.13x; ``float_ops=("softmax", "matmul")``
  2.23-2.37x; ``linear_output="quantized"`` 1.74-1.86x -- all on an *unstable* (busy) pass,
  so the default is not switched on it (the project's rule); the float-attention spec is the
  candidate for the measured format selection to try.
* ``add``: quantized (QLinearAdd), except a residual stream read by a float LayerNorm (the
  transformer's): it stays float -- LayerNorm would dequantize it anyway, and rounding the
  stream to 8 bits lost the class token (ViT-tiny/2 on digits: top-1 agreement with FP32 0.85
  quantized vs 0.99 float). An ``add``/``cat`` with a learned constant operand (position
  embedding, class token) stays float too.
* ``gelu``, ``layernorm``, ``hardswish``, ``hardsigmoid``: float (no integer kernel in ONNX
  Runtime 1.32); no Q/DQ pair is placed for them.
* ``linear``: weights per channel; on an (N, L, D) input the export rewrites
  ``DQ -> Transpose -> MatMul`` to ``DQ(W^T) -> MatMul`` so the runtime fuses it
  (MatMulIntegerToFloat). Its output is quantized only when a quantized op consumes it
  (``linear_output="float"``, the default): ViT-tiny/2 b8 measured 1.62-2.58x vs FP32 against
  1.20-1.91x with ``"quantized"`` (fc1 -> GELU then keeps BiasGelu fused; busy host, unstable).

Quantizers sit only on floating tensors (never on ``h // p``, shapes, bools or tuples).
Op-kind classification, per-kind defaults and the graph rewrites (BN folding, SiLU
decomposition, scalar-multiply folding) live in :mod:`~nasforge.compression.quantization.opgraph`;
this module holds the spec, the fake-quantizers, the placement policy (:func:`prepare`) and
:class:`QuantSim` (``OP_KINDS``, ``KIND_DEFAULTS`` and ``fold_bn_graph`` stay importable here).

That placement is the one ONNX Runtime's QDQ fusions expect (``DQ -> Conv -> Q`` becomes
``QLinearConv``), so :func:`export_qdq` produces a graph that runs on INT8 kernels end to end.
Fake quantization uses ``torch.fake_quantize_*`` whose backward is the straight-through
estimator (gradient 1 inside the range, 0 outside), which is what QAT trains through.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from nasforge.compression.errors import QuantizationError
from nasforge.compression.quantization.calibrate import RangeObserver, qparams
from nasforge.compression.quantization.opgraph import (
    BINARY_KINDS,
    KIND_DEFAULTS,
    OP_KINDS,
    decompose_attention_of,
    decompose_silu,
    feeds_float_norm,
    float_values_shapeprop,
    float_values_static,
    fold_bn_graph,
    fold_scalar_mul,
    getattr_path,
    is_fused_act,
    is_movement,
    node_name,
    op_kind,
    set_submodule,
    trace_model,
)

__all__ = [
    "ACTIVATION_TYPES",
    "KIND_DEFAULTS",
    "OP_KINDS",
    "WEIGHT_TYPES",
    "ActQuant",
    "QConv1d",
    "QConv2d",
    "QConv3d",
    "QLinear",
    "QuantSim",
    "QuantSpec",
    "fold_bn_graph",
    "getattr_path",
    "prepare",
    "weight_scale",
]

ACTIVATION_TYPES = ("uint8", "int8")
WEIGHT_TYPES = ("int8_per_channel", "int8_per_tensor")


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize and how.

    Attributes:
        activations: ``uint8`` (asymmetric, what x86 VNNI kernels take fastest) or ``int8``
            (symmetric).
        weights: ``int8_per_channel`` (symmetric, one scale per output channel) or
            ``int8_per_tensor``.
        calibration: ``minmax``, ``percentile``, ``mse`` or ``entropy``.
        percentile: the kept percentile for ``percentile`` calibration.
        exclude: module names (prefixes) kept in float -- the mixed-precision plan.
        float_ops: op kinds (of :data:`OP_KINDS`) kept in float everywhere, overriding
            :data:`KIND_DEFAULTS`: e.g. ``("silu",)`` keeps SiLU whole and float instead of
            decomposing it, ``("softmax", "matmul")`` keeps attention's core float.
        linear_output: ``quantized``: a Linear's output is quantized (the runtime fuses
            ``DQ -> Gemm/MatMul -> Q``); ``float``: only when a quantized op consumes it,
            otherwise the runtime's float-output integer kernel is used.
    """

    activations: str = "uint8"
    weights: str = "int8_per_channel"
    calibration: str = "minmax"
    percentile: float = 99.99
    exclude: tuple[str, ...] = ()
    float_ops: tuple[str, ...] = ()
    linear_output: Literal["quantized", "float"] = "float"

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATION_TYPES:
            raise QuantizationError(
                f"quantize.activations: expected one of {ACTIVATION_TYPES}, "
                f"got {self.activations!r}"
            )
        if self.weights not in WEIGHT_TYPES:
            raise QuantizationError(
                f"quantize.weights: expected one of {WEIGHT_TYPES}, got {self.weights!r}"
            )
        RangeObserver(self.calibration)  # validates the method name
        bad = [k for k in self.float_ops if k not in OP_KINDS]
        if bad:
            raise QuantizationError(
                f"quantize.float_ops: unknown op kind {bad[0]!r}; expected some of {OP_KINDS}"
            )
        if self.linear_output not in ("quantized", "float"):
            raise QuantizationError(
                "quantize.linear_output: expected 'quantized' or 'float', "
                f"got {self.linear_output!r}"
            )

    def quantizes(self, kind: str) -> bool:
        """Whether ops of ``kind`` run quantized under this spec."""
        if kind in self.float_ops:
            return False
        return KIND_DEFAULTS.get(kind, (False, ""))[0]

    @property
    def signed(self) -> bool:
        return self.activations == "int8"


class ActQuant(nn.Module):
    """Activation fake-quantizer with modes ``observe``, ``quant``, ``float`` and ``qat``.

    ``observe`` records statistics (output unchanged); ``quant`` applies the frozen
    (scale, zero point); ``qat`` updates an EMA min/max in training mode and fake-quantizes.
    """

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.signed = spec.signed
        self.observer = RangeObserver(spec.calibration, spec.percentile)
        self.mode = "observe"
        self.pass_ = 0
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("ema", torch.tensor([0.0, 0.0]))
        self.momentum = 0.01

    @property
    def qrange(self) -> tuple[int, int]:
        # Symmetric int8 exports with [-128, 127] (ONNX's int8 range); values stay in [-127, 127].
        return (-128, 127) if self.signed else (0, 255)

    def freeze(self) -> None:
        lo, hi = self.observer.compute_range(self.signed)
        self.set_range(lo, hi)
        self.mode = "quant"

    def set_range(self, lo: float, hi: float) -> None:
        scale, zp = qparams(lo, hi, self.signed)
        self._buf("scale").fill_(scale)
        self._buf("zero_point").fill_(zp)
        self._buf("ema").copy_(torch.tensor([min(lo, 0.0), max(hi, 0.0)]))

    def _buf(self, name: str) -> torch.Tensor:
        return cast(torch.Tensor, getattr(self, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            return x  # never quantize ints, shapes or bools (prepare does not place one there)
        if self.mode == "observe":
            if self.pass_ == 0:
                self.observer.observe_minmax(x)
            else:
                self.observer.observe_hist(x)
            return x
        if self.mode == "float":
            return x
        if self.mode == "qat" and self.training:
            with torch.no_grad():
                lo, hi = float(x.min()), float(x.max())
                ema = self._buf("ema")
                ema.mul_(1 - self.momentum).add_(self.momentum * torch.tensor([lo, hi]))
                self.set_range(float(ema[0]), float(ema[1]))
        qmin, qmax = self.qrange
        return torch.fake_quantize_per_tensor_affine(
            x, float(self._buf("scale")), int(self._buf("zero_point")), qmin, qmax
        )


def weight_scale(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Symmetric INT8 scale(s) of a weight: max|w| / 127, per output channel or per tensor."""
    w = w.detach()
    if per_channel:
        return (w.abs().amax(dim=tuple(range(1, w.dim()))) / 127.0).clamp(min=1e-8).float()
    return (w.abs().max() / 127.0).clamp(min=1e-8).float().reshape(1)


def _weight_fq(w: torch.Tensor, scale: torch.Tensor, per_channel: bool) -> torch.Tensor:
    if per_channel:
        zp = torch.zeros(w.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -128, 127)
    return torch.fake_quantize_per_tensor_affine(w, float(scale[0]), 0, -128, 127)


class _QuantWeightMixin:
    """Fake-quantizes ``self.weight``; the scale follows the weights unless frozen (export)."""

    quant_weights: bool = True
    per_channel: bool = True
    frozen_scale: torch.Tensor | None = None

    def qweight(self) -> torch.Tensor:
        w = self.weight  # type: ignore[attr-defined]
        if not self.quant_weights:
            return w
        scale = self.frozen_scale
        if scale is None:
            scale = weight_scale(w, self.per_channel)
        return _weight_fq(w, scale, self.per_channel)


class QConv1d(_QuantWeightMixin, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.qweight(), self.bias)


class QConv2d(_QuantWeightMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.qweight(), self.bias)


class QConv3d(_QuantWeightMixin, nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.qweight(), self.bias)


class QLinear(_QuantWeightMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qweight(), self.bias)


_QCLASS = {nn.Conv1d: QConv1d, nn.Conv2d: QConv2d, nn.Conv3d: QConv3d, nn.Linear: QLinear}


def _to_quant(m: nn.Module, per_channel: bool) -> nn.Module:
    q: Any = copy.copy(m)
    q.__class__ = _QCLASS[type(m)]
    q.per_channel = per_channel
    q.quant_weights = True
    return q


def _not(q: fx.Node) -> Any:
    """``delete_user_cb`` that keeps every use except ``q`` itself."""
    return lambda u: u is not q


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in exclude)


class QuantSim(nn.Module):
    """A BN-folded, fake-quantized copy of a model (see module doc). Created by :func:`prepare`.

    Attributes:
        gm: the transformed graph module.
        spec: the quantization spec.
        quantizers: activation quantizer modules by name.
        weighted: names of conv/linear layers with quantized weights.
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        spec: QuantSpec,
        quantizers: dict[str, ActQuant],
        weighted: list[str],
    ) -> None:
        super().__init__()
        self.gm = gm
        self.spec = spec
        self.quantizers = quantizers
        self.weighted = weighted
        self.decisions: list[dict[str, Any]] = []
        self.checked = False

    def layer_decisions(self) -> list[dict[str, Any]]:
        """One row per quantizable op in graph order: ``name`` (module path, or scope and
        node for functions; a decomposed SiLU keeps its module's name), ``op`` (the op kind),
        ``quantized`` and ``reason`` (the kernel it maps to, or why it stays float)."""
        return [dict(d) for d in self.decisions]

    @torch.no_grad()
    def _check_float_inputs(self, xb: torch.Tensor) -> None:
        """Run ``xb`` (quantizers off) through ShapeProp and remove any quantizer whose input
        is not a floating tensor (a guess of :func:`prepare` that real data contradicts)."""
        from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

        modes = {k: q.mode for k, q in self.quantizers.items()}
        self.set_mode("float")
        ShapeProp(self.gm).propagate(xb)
        for k, q in self.quantizers.items():
            q.mode = modes[k]
        for node in list(self.gm.graph.nodes):
            if node.op != "call_module" or str(node.target) not in self.quantizers:
                continue
            meta = node.args[0].meta.get("tensor_meta")
            if not (isinstance(meta, TensorMetadata) and meta.dtype.is_floating_point):
                node.replace_all_uses_with(node.args[0])
                self.gm.graph.erase_node(node)
        used = {str(n.target) for n in self.gm.graph.nodes if n.op == "call_module"}
        for k in [k for k in self.quantizers if k not in used]:
            del self.quantizers[k]
        self.gm.graph.lint()
        self.gm.delete_all_unused_submodules()
        self.gm.recompile()
        self.checked = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gm(x)

    def set_mode(self, mode: str) -> None:
        for q in self.quantizers.values():
            q.mode = mode

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> QuantSim:
        """Observe ``batches`` (two passes when the method needs histograms), then freeze."""
        data = list(batches)
        if not data:
            raise QuantizationError("quantize.calibration: no calibration data")
        self.eval()
        if not self.checked:
            self._check_float_inputs(data[0])
        for q in self.quantizers.values():
            q.mode, q.pass_ = "observe", 0
            q.observer = RangeObserver(self.spec.calibration, self.spec.percentile)
        for xb in data:
            self.gm(xb)
        if any(q.observer.needs_histogram for q in self.quantizers.values()):
            for q in self.quantizers.values():
                q.pass_ = 1
            for xb in data:
                self.gm(xb)
        for q in self.quantizers.values():
            q.freeze()
        return self

    def freeze_weight_scales(self, frozen: bool = True) -> None:
        """Fix weight scales to the current weights (constants in an export) or release them."""
        for n in self.weighted:
            m: Any = self.gm.get_submodule(n)
            m.frozen_scale = weight_scale(m.weight, m.per_channel) if frozen else None

    def float_weights(self, names: Iterable[str]) -> None:
        """Stop quantizing the weights of the named layers (used by sensitivity analysis)."""
        for n in names:
            m = self.gm.get_submodule(n)
            m.quant_weights = False  # type: ignore[assignment]


_RESIDUAL_REASON = (
    "float: residual stream read by LayerNorm (float); quantizing it costs a Q/DQ pair "
    "and the class token's precision (ViT-tiny/2 top-1 agreement 0.85 vs 0.99)"
)


def prepare(
    model: nn.Module, spec: QuantSpec | None = None, example_input: torch.Tensor | None = None
) -> QuantSim:
    """Trace, fold BN and insert fake quantizers; ``model`` is not modified.

    Self-attention (``nn.MultiheadAttention``) is first decomposed into Linear layers and
    ``torch.matmul``/``torch.softmax`` (:func:`~nasforge.compression.attention.decompose_attention`)
    so attention runs on the same integer kernels as everything else; SiLU becomes
    ``x * sigmoid(x)`` unless ``"silu"`` is in ``spec.float_ops``. Quantizers are placed only on
    values that are floating tensors: with ``example_input`` this is known from running it
    (``ShapeProp``); without it, from the graph, and :meth:`QuantSim.calibrate` checks it on
    the first batch.

    Raises:
        UnsupportedModelError: ``torch.fx`` cannot trace the model (names the layer).
    """
    spec = spec or QuantSpec()
    model = decompose_attention_of(copy.deepcopy(model).eval())
    gm = fold_bn_graph(trace_model(model))
    fold_scalar_mul(gm)
    if spec.quantizes("silu"):
        decompose_silu(gm)
    if example_input is not None:
        is_float = float_values_shapeprop(gm, example_input)
    else:
        is_float = float_values_static(gm)
    nodes = list(gm.graph.nodes)
    out_node = next(n for n in nodes if n.op == "output")
    # values computed from parameters alone (``class_token.expand(n, -1, -1)``)
    learned: dict[fx.Node, bool] = {}
    for n in nodes:
        fins = [a for a in n.all_input_nodes if is_float.get(a, False)]
        learned[n] = n.op == "get_attr" or (
            n.op in ("call_function", "call_method")
            and bool(fins)
            and all(learned[a] for a in fins)
        )
    weighted: list[str] = []
    quant_ops: set[fx.Node] = set()
    decisions: list[dict[str, Any]] = []
    seen_silu: set[str] = set()

    def decide(n: fx.Node, kind: str, quantized: bool, reason: str) -> None:
        silu = n.meta.get("silu")
        if silu is not None:  # one row for a decomposed SiLU
            if silu in seen_silu:
                return
            seen_silu.add(silu)
            decisions.append({"name": silu, "op": "silu", "quantized": quantized, "reason": reason})
            return
        decisions.append(
            {"name": node_name(n), "op": kind, "quantized": quantized, "reason": reason}
        )

    for n in nodes:
        kind = op_kind(gm, n)
        if kind is None:
            continue
        if n.meta.get("silu") is not None:
            kind_for_spec = "silu"
        else:
            kind_for_spec = kind
        scope = str(n.target) if n.op == "call_module" else str(n.meta.get("scope", ""))
        if _excluded(scope, spec.exclude):
            decide(n, kind, False, "float: QuantSpec.exclude")
            continue
        if not spec.quantizes(kind_for_spec) or not spec.quantizes(kind) and kind in OP_KINDS:
            why = (
                "float: QuantSpec.float_ops"
                if kind_for_spec in spec.float_ops or kind in spec.float_ops
                else KIND_DEFAULTS.get(kind, (False, "float: no integer kernel"))[1]
            )
            decide(n, kind, False, why)
            continue
        tensor_ins = [a for a in n.all_input_nodes if is_float.get(a, False)]
        if not is_float.get(n, False) or not tensor_ins:
            continue  # integer/shape arithmetic (``h // p``, ``n_h * n_w``): not a layer
        if kind == "add" and feeds_float_norm(gm, n, not spec.quantizes("layernorm")):
            decide(n, kind, False, _RESIDUAL_REASON)
            continue
        if kind in ("add", "cat") and any(learned.get(a, False) for a in tensor_ins):
            decide(
                n,
                kind,
                False,
                "float: a learned constant operand (class token, position "
                "embedding) would be rounded to the activation's grid; runs once",
            )
            continue
        if kind in BINARY_KINDS and (
            len(tensor_ins) < 2 or any(not isinstance(a, fx.Node) for a in n.args[:2])
        ):
            decide(n, kind, False, "float: a scalar operand (no integer kernel)")
            continue
        if kind in ("conv", "linear"):
            m = gm.get_submodule(str(n.target))
            if type(m) not in _QCLASS:
                decide(n, kind, False, f"float: {type(m).__name__} has no integer kernel")
                continue
            set_submodule(gm, str(n.target), _to_quant(m, spec.weights == "int8_per_channel"))
            weighted.append(str(n.target))
        quant_ops.add(n)
        decide(n, kind, True, KIND_DEFAULTS[kind_for_spec][1])
    need: list[fx.Node] = []

    def want(t: object) -> None:
        if isinstance(t, fx.Node) and is_float.get(t, False) and t not in need:
            need.append(t)

    for n in nodes:
        if n not in quant_ops:
            continue
        for a in n.all_input_nodes:
            want(a)
        out = n
        users = list(n.users)
        if len(users) == 1 and is_fused_act(gm, users[0]):
            out = users[0]
        if len(out.users) == 1 and next(iter(out.users)) is out_node:
            continue
        if op_kind(gm, n) == "linear" and spec.linear_output == "float":
            continue  # quantized only when a quantized consumer asks for it
        want(out)
    # A movement op's quantizer is shared with its input, so the runtime can drop the pair.
    for n in need:
        if is_movement(gm, n) and n.all_input_nodes:
            want(n.all_input_nodes[0])
    quantizers: dict[str, ActQuant] = {}
    fq_of: dict[fx.Node, str] = {}
    order = {n: i for i, n in enumerate(nodes)}
    first_input = {n: n.all_input_nodes[0] for n in need if n.all_input_nodes}
    for n in sorted(need, key=order.__getitem__):
        src = first_input.get(n) if is_movement(gm, n) else None
        if src is not None and src in fq_of:
            name = fq_of[src]
        else:
            name = f"act_quant_{len(quantizers)}"
            quantizers[name] = ActQuant(spec)
            gm.add_submodule(name, quantizers[name])
        fq_of[n] = name
        with gm.graph.inserting_after(n):
            q = gm.graph.call_module(name, (n,))
        n.replace_all_uses_with(q, delete_user_cb=_not(q))
    gm.graph.lint()
    gm.recompile()
    sim = QuantSim(gm, spec, quantizers, weighted)
    sim.decisions = decisions
    sim.checked = example_input is not None
    return sim
