"""Quantization simulation on a ``torch.fx`` graph: the one model behind PTQ, QAT and export.

:func:`prepare` traces a float model, folds every conv -> BN pair, swaps conv/linear layers
for versions with per-channel symmetric INT8 fake-quantized weights, and inserts activation
fake-quantizers (:class:`ActQuant`) on exactly the tensors an INT8 runtime quantizes:

* every input of a quantized op (conv, linear, add, mul, concat, average pooling);
* the output of every quantized conv/linear/add -- after its ReLU/ReLU6 when one follows,
  so the runtime fuses the activation into the requantization;
* data-movement ops (flatten, max-pool, dropout) share their input's quantizer, so the
  runtime can drop their Q/DQ pair;
* the model output stays float.

That placement is the one ONNX Runtime's QDQ fusions expect (``DQ -> Conv -> Q`` becomes
``QLinearConv``), so :func:`export_qdq` produces a graph that runs on INT8 kernels end to end.
Fake quantization uses ``torch.fake_quantize_*`` whose backward is the straight-through
estimator (gradient 1 inside the range, 0 outside), which is what QAT trains through.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from nasforge.compression.errors import QuantizationError
from nasforge.compression.pruning.graph import trace
from nasforge.compression.quantization.calibrate import RangeObserver, qparams
from nasforge.nn.fuse import fold_conv_bn

ACTIVATION_TYPES = ("uint8", "int8")
WEIGHT_TYPES = ("int8_per_channel", "int8_per_tensor")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FUSED_ACT_MODULES = (nn.ReLU, nn.ReLU6)
_FUSED_ACT_FUNCTIONS = {F.relu, F.relu6, torch.relu}
_ELEMENTWISE_QUANT = {
    operator.add,
    operator.iadd,
    torch.add,
    operator.mul,
    torch.mul,
    torch.cat,
    torch.concat,
}
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_MOVEMENT_MODULES = (nn.Flatten, nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d)
_MOVEMENT_FUNCTIONS = {torch.flatten, F.max_pool2d, F.dropout}
_MOVEMENT_METHODS = {"flatten", "view", "reshape", "contiguous"}


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
    """

    activations: str = "uint8"
    weights: str = "int8_per_channel"
    calibration: str = "minmax"
    percentile: float = 99.99
    exclude: tuple[str, ...] = ()

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


def fold_bn_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every BN whose input is a conv used only by it (in place, eval semantics)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BN):
            continue
        src = node.args[0]
        if not (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and len(src.users) == 1
            and isinstance(gm.get_submodule(str(src.target)), _CONV)
        ):
            continue
        bn = gm.get_submodule(node.target)
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        conv = gm.get_submodule(str(src.target))
        _set_submodule(gm, str(src.target), fold_conv_bn(conv, bn))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _set_submodule(gm: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


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


def _is_fused_act(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        if isinstance(m, _FUSED_ACT_MODULES):
            return True
        return isinstance(m, nn.Hardtanh) and m.min_val == 0.0
    return n.op == "call_function" and n.target in _FUSED_ACT_FUNCTIONS


def _is_movement(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(str(n.target)), _MOVEMENT_MODULES)
    if n.op == "call_function":
        return n.target in _MOVEMENT_FUNCTIONS
    return n.op == "call_method" and n.target in _MOVEMENT_METHODS


def prepare(model: nn.Module, spec: QuantSpec | None = None) -> QuantSim:
    """Trace, fold BN and insert fake quantizers; ``model`` is not modified.

    Raises:
        UnsupportedModelError: ``torch.fx`` cannot trace the model (names the layer).
    """
    spec = spec or QuantSpec()
    model = copy.deepcopy(model).eval()
    gm = fold_bn_graph(trace(model))
    nodes = list(gm.graph.nodes)
    out_node = next(n for n in nodes if n.op == "output")
    weighted: list[str] = []
    quant_ops: set[fx.Node] = set()
    for n in nodes:
        scope = str(n.target) if n.op == "call_module" else str(n.meta.get("scope", ""))
        if _excluded(scope, spec.exclude):
            continue
        if n.op == "call_module":
            m = gm.get_submodule(str(n.target))
            if type(m) in _QCLASS:
                _set_submodule(gm, str(n.target), _to_quant(m, spec.weights == "int8_per_channel"))
                weighted.append(str(n.target))
                quant_ops.add(n)
            elif isinstance(m, _POOL_MODULES):
                quant_ops.add(n)
        elif n.op == "call_function" and n.target in _ELEMENTWISE_QUANT:
            quant_ops.add(n)
    need: list[fx.Node] = []

    def want(t: object) -> None:
        if isinstance(t, fx.Node) and t.op != "get_attr" and t not in need:
            need.append(t)

    for n in nodes:
        if n not in quant_ops:
            continue
        for a in n.all_input_nodes:
            want(a)
        out = n
        users = list(n.users)
        if len(users) == 1 and _is_fused_act(gm, users[0]):
            out = users[0]
        if not (len(out.users) == 1 and next(iter(out.users)) is out_node):
            want(out)
    # A movement op's quantizer is shared with its input, so the runtime can drop the pair.
    for n in need:
        if _is_movement(gm, n) and n.all_input_nodes:
            want(n.all_input_nodes[0])
    quantizers: dict[str, ActQuant] = {}
    fq_of: dict[fx.Node, str] = {}
    order = {n: i for i, n in enumerate(nodes)}
    for n in sorted(need, key=order.__getitem__):
        src = n.all_input_nodes[0] if _is_movement(gm, n) and n.all_input_nodes else None
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
    return QuantSim(gm, spec, quantizers, weighted)
