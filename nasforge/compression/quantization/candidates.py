"""What INT8 builds are worth measuring on a model, and how each is built:
:class:`Candidate` (a spec and how it is built: nasforge's QDQ graph, onnxruntime's static or
dynamic quantizer, torchao PT2E on torch inductor), the op kinds a model contains
(:func:`op_kinds`), and :func:`format_candidates`, the short list that
:func:`~nasforge.compression.quantization.ptq.select_int8_format` measures (split from
``ptq.py``, which times and chooses); ``_Builder`` builds them, sharing calibration
between nasforge QDQ builds that differ only where quantizers sit.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from nasforge.compression.errors import QuantizationError
from nasforge.compression.quantization.export import export_qdq
from nasforge.compression.quantization.ortquant import quantize_onnx_dynamic, quantize_onnx_static
from nasforge.compression.quantization.qsim import QuantSim, QuantSpec, prepare

__all__ = [
    "MAX_OP_KIND_CANDIDATES",
    "METHODS",
    "OP_KIND_CANDIDATES",
    "Candidate",
    "as_candidate",
    "format_candidates",
    "op_kinds",
]

#: how a candidate is built and where it runs
METHODS = ("qdq", "ort_static", "ort_dynamic", "pt2e")

#: op kinds whose float-vs-INT8 choice is measured when the model has them and the default
#: spec quantizes them (``QuantSpec.quantizes``; kinds float by default have no integer
#: kernel to try), in this order, at most :data:`MAX_OP_KIND_CANDIDATES` of them
OP_KIND_CANDIDATES = ("softmax", "matmul", "silu", "sigmoid", "hardswish", "gelu", "hardsigmoid")
MAX_OP_KIND_CANDIDATES = 2


@dataclass(frozen=True)
class Candidate:
    """One INT8 build to measure.

    ``method``: ``qdq`` (nasforge's :class:`QuantSim` of ``spec`` exported as QDQ, run on
    ONNX Runtime), ``ort_static`` / ``ort_dynamic`` (onnxruntime's own quantizers applied to
    the FP32 export; see :mod:`~nasforge.compression.quantization.ortquant`) or ``pt2e``
    (torchao PT2E run by torch inductor; see :mod:`~nasforge.compression.quantization.
    inductor`, an optional extra).
    """

    spec: QuantSpec = field(default_factory=QuantSpec)
    method: str = "qdq"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizationError(
                f"INT8 candidate method: expected one of {METHODS}, got {self.method!r}"
            )

    @property
    def runtime(self) -> str:
        return "torch-inductor" if self.method == "pt2e" else "onnxruntime"


def as_candidate(c: QuantSpec | Candidate) -> Candidate:
    """A plain :class:`QuantSpec` is nasforge's QDQ build of it."""
    return c if isinstance(c, Candidate) else Candidate(c, "qdq")


def _spec_fields() -> set[str]:
    return {f.name for f in fields(QuantSpec)}


_KIND_MODULES: tuple[tuple[type[nn.Module], tuple[str, ...]], ...] = (
    (nn.SiLU, ("silu",)),
    (nn.Sigmoid, ("sigmoid",)),
    (nn.Hardswish, ("hardswish",)),
    (nn.Hardsigmoid, ("hardsigmoid",)),
    (nn.GELU, ("gelu",)),
    (nn.Softmax, ("softmax",)),
    (nn.LayerNorm, ("layernorm",)),
    (nn.MultiheadAttention, ("attention", "matmul", "softmax", "linear")),
    (nn.Linear, ("linear",)),
    (nn.Conv1d, ("conv",)),
    (nn.Conv2d, ("conv",)),
    (nn.Conv3d, ("conv",)),
)
_KIND_FUNCTIONS = {
    "silu": ("silu",),
    "sigmoid": ("sigmoid",),
    "hardswish": ("hardswish",),
    "hardsigmoid": ("hardsigmoid",),
    "gelu": ("gelu",),
    "softmax": ("softmax",),
    "layer_norm": ("layernorm",),
    "matmul": ("matmul",),
    "bmm": ("matmul",),
}


def op_kinds(model: nn.Module) -> set[str]:
    """The op kinds ``model`` contains (module types, and functions when it traces with
    ``torch.fx``): what INT8 candidates are worth measuring."""
    kinds: set[str] = set()
    for m in model.modules():
        for t, ks in _KIND_MODULES:
            if isinstance(m, t):
                kinds.update(ks)
        if type(m).__name__ == "SelfAttention" and hasattr(m, "num_heads"):
            kinds.update(("attention", "matmul", "softmax", "linear"))
    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(model))
    except Exception:  # not traceable as is: the module types above are what we know
        return kinds
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method"):
            name = node.target if isinstance(node.target, str) else node.target.__name__
            kinds.update(_KIND_FUNCTIONS.get(name, ()))
    return kinds


def _linear_heavy(model: nn.Module) -> bool:
    """More weights in Linear layers than in convolutions (transformers, MLPs)."""
    lin = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))
    return lin > conv


def format_candidates(
    model: nn.Module,
    base: QuantSpec | None = None,
    *,
    onnxruntime_quantizer: bool = True,
    dynamic: bool | None = None,
    torch_runtime: bool = False,
) -> dict[str, QuantSpec | Candidate]:
    """INT8 builds worth measuring on ``model``, the default (nasforge QDQ, uint8
    activations, int8 per-channel weights) first:

    * int8 activations; a narrow-input stem (<= 4 input channels) kept in FP32, where
      integer kernels have too little work per output to win;
    * per op kind the model contains (:data:`OP_KIND_CANDIDATES`, at most
      :data:`MAX_OP_KIND_CANDIDATES`): that kind kept in float (``QuantSpec.float_ops``),
      when the spec has that field;
    * ``onnxruntime_quantizer``: onnxruntime's own static QDQ quantizer (the peer; measured
      so nasforge never ships something slower than it);
    * ``dynamic`` (default: models with attention or more Linear than conv weights):
      onnxruntime's dynamic quantization of MatMul/Gemm;
    * ``torch_runtime``: torchao PT2E on torch inductor (pass ``inductor.available()``).

    Plain :class:`QuantSpec` values are nasforge QDQ builds; the others are
    :class:`Candidate` with their method.
    """
    base = base or QuantSpec()
    cands: dict[str, QuantSpec | Candidate] = {
        "u8act_s8w_per_channel": replace(base, activations="uint8"),
        "s8act_s8w_per_channel": replace(base, activations="int8"),
    }
    stem = next(
        (n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))),
        None,
    )
    if stem is not None and cast(Any, model.get_submodule(stem)).in_channels <= 4:
        cands["u8act_s8w_per_channel_fp32_stem"] = replace(
            base, activations="uint8", exclude=tuple(base.exclude) + (stem,)
        )
    kinds = op_kinds(model)
    if "float_ops" in _spec_fields():
        have = tuple(getattr(base, "float_ops", ()))
        quantizes = getattr(base, "quantizes", lambda k: True)
        tried = [k for k in OP_KIND_CANDIDATES if k in kinds and quantizes(k)]
        for k in tried[:MAX_OP_KIND_CANDIDATES]:
            cands[f"u8act_float_{k}"] = replace(
                base, activations="uint8", **cast(Any, {"float_ops": (*have, k)})
            )
    if "linear_output" in _spec_fields() and "attention" in kinds:
        cands["u8act_linear_float_output"] = replace(
            base, activations="uint8", **cast(Any, {"linear_output": "float"})
        )
    if onnxruntime_quantizer:
        cands["ort_static_qdq"] = Candidate(replace(base, activations="uint8"), "ort_static")
    if dynamic is None:
        dynamic = "attention" in kinds or _linear_heavy(model)
    if dynamic:
        cands["ort_dynamic_matmul"] = Candidate(base, "ort_dynamic")
    if torch_runtime:
        cands["pt2e_inductor"] = Candidate(base, "pt2e")
    return cands


def _inductor() -> Any:
    """The torch INT8 runtime module (optional: torchao), imported when a ``pt2e``
    candidate is built."""
    return importlib.import_module("nasforge.compression.quantization.inductor")


class _SameGraph(Exception):
    """A candidate whose prepared graph equals an earlier one's (found before calibrating)."""


class _Builder:
    """Builds candidates; nasforge QDQ builds share work: a prepared graph identical to an
    earlier one (a ``float_ops`` kind the model does not quantize anyway) is found before
    calibrating, and a graph identical to an earlier calibrated one but for the activation
    signedness or excluded weights reuses its observed ranges (the observers see the float
    values, which these choices do not change) instead of calibrating again."""

    def __init__(
        self, model: nn.Module, calib_x: torch.Tensor, input_shape: Sequence[int], d: Path
    ) -> None:
        self.model, self.calib_x, self.input_shape, self.d = model, calib_x, input_shape, d
        self.keys: dict[str, str] = {}
        self.calibrated: list[QuantSim] = []

    def _prepared(self, spec: QuantSpec) -> QuantSim:
        sim = prepare(self.model, spec)
        check = getattr(sim, "_check_float_inputs", None)
        if callable(check):  # what calibrate would do first: drop quantizers on non-floats
            check(self.calib_x[:1])
        return sim

    @staticmethod
    def _key(sim: QuantSim) -> str:
        spec = sim.spec
        if "float_ops" in _spec_fields():
            spec = replace(spec, **cast(Any, {"float_ops": ()}))
        mods = [(n, type(m).__name__) for n, m in sim.gm.named_modules()]
        return repr((sim.gm.code, mods, spec))

    @staticmethod
    def _sources(sim: QuantSim) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
        """The graph without its quantizers (name, op, target of every other node), and
        quantizer -> the node whose value it observes."""
        rest: list[tuple[str, str, str]] = []
        src: dict[str, str] = {}
        for n in sim.gm.graph.nodes:
            if n.op == "call_module" and str(n.target) in sim.quantizers:
                src[str(n.target)] = cast(torch.fx.Node, n.args[0]).name
            else:
                rest.append((n.name, n.op, str(n.target)))
        return rest, src

    def _reuse(self, sim: QuantSim) -> bool:
        """Copy the observed ranges of a calibrated build with the same graph but for where
        quantizers sit (each quantizer of ``sim`` observing a node one of the other's
        observed), then freeze: calibration observes float values, unchanged by these
        choices."""
        how = (sim.spec.calibration, sim.spec.percentile)
        rest, src = self._sources(sim)
        for ref in self.calibrated:
            ref_rest, ref_src = self._sources(ref)
            by_node = {v: k for k, v in ref_src.items()}
            if (ref.spec.calibration, ref.spec.percentile) != how or ref_rest != rest:
                continue
            if not all(v in by_node for v in src.values()):
                continue
            for k, q in sim.quantizers.items():
                q.observer = copy.deepcopy(ref.quantizers[by_node[src[k]]].observer)
                q.freeze()
            sim.eval()
            return True
        return False

    def build(self, name: str, cand: Candidate, fp32: Path) -> Path | nn.Module:
        out = self.d / f"cand_{name}.onnx"
        if cand.method == "qdq":
            sim = self._prepared(cand.spec)
            key = self._key(sim)
            if key in self.keys:
                raise _SameGraph(self.keys[key])
            self.keys[key] = name
            if not self._reuse(sim):
                b = 64
                sim.calibrate([self.calib_x[i : i + b] for i in range(0, len(self.calib_x), b)])
                self.calibrated.append(sim)
            return export_qdq(sim, out, self.input_shape)
        if cand.method == "ort_static":
            return quantize_onnx_static(fp32, out, self.calib_x, cand.spec)
        if cand.method == "ort_dynamic":
            return quantize_onnx_dynamic(fp32, out)
        return cast(
            nn.Module, _inductor().quantize_pt2e(self.model, self.calib_x, tuple(self.input_shape))
        )
