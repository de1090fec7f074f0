"""Per-layer quantization sensitivity and a mixed-precision plan within a drop budget.

Sensitivity of a layer = the error of the model with *only that layer* quantized (its INT8
weights and its INT8 input), everything else float: the SQNR of the logits against the
float model, and the top-1 accuracy. When full INT8 loses more than the budget, the plan
keeps the most sensitive layers in FP32, one at a time, until the drop fits.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from nasforge.compression.quantization.ptq import quantize_static_int8
from nasforge.compression.quantization.qsim import QuantSim, QuantSpec
from nasforge.train import evaluate_accuracy, predict_logits


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    sqnr_db: float
    accuracy: float


@dataclass(frozen=True)
class MixedPrecisionPlan:
    """Layers kept FP32 so the INT8 drop fits ``budget`` (accuracy points as fractions)."""

    keep_fp32: tuple[str, ...]
    float_accuracy: float
    int8_accuracy: float
    mixed_accuracy: float
    budget: float
    met: bool
    sensitivities: tuple[LayerSensitivity, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> MixedPrecisionPlan:
        d = json.loads(text)
        d["keep_fp32"] = tuple(d["keep_fp32"])
        d["sensitivities"] = tuple(LayerSensitivity(**s) for s in d.get("sensitivities", ()))
        return cls(**d)


def _input_quantizer(sim: QuantSim, layer: str) -> str | None:
    for node in sim.gm.graph.nodes:
        if node.op == "call_module" and node.target == layer and node.args:
            src = node.args[0]
            if getattr(src, "op", "") == "call_module" and str(src.target) in sim.quantizers:
                return str(src.target)
    return None


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    noise = float(((ref - test) ** 2).mean())
    signal = float((ref**2).mean())
    return 10 * math.log10(signal / noise) if noise > 0 else float("inf")


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    calib_x: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: QuantSpec | None = None,
) -> list[LayerSensitivity]:
    """Sensitivity of every quantizable layer, most sensitive (lowest SQNR) first."""
    sim = quantize_static_int8(model, calib_x, spec)
    sim.set_mode("float")
    sim.float_weights(sim.weighted)
    ref = predict_logits(sim, x)
    out = []
    for layer in sim.weighted:
        mod: Any = sim.gm.get_submodule(layer)
        mod.quant_weights = True
        q = _input_quantizer(sim, layer)
        if q:
            sim.quantizers[q].mode = "quant"
        logits = predict_logits(sim, x)
        out.append(
            LayerSensitivity(
                layer, sqnr_db(ref, logits), float((logits.argmax(1) == y).float().mean())
            )
        )
        mod.quant_weights = False
        if q:
            sim.quantizers[q].mode = "float"
    return sorted(out, key=lambda s: s.sqnr_db)


def mixed_precision_plan(
    model: nn.Module,
    calib_x: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    budget: float,
    spec: QuantSpec | None = None,
    max_fp32_layers: int = 8,
) -> MixedPrecisionPlan:
    """Keep the most sensitive layers FP32 until ``float - int8`` accuracy <= ``budget``
    (evaluated on ``x``/``y``, a validation split), at most ``max_fp32_layers`` of them."""
    spec = spec or QuantSpec()
    float_acc = evaluate_accuracy(model, x, y)
    int8_acc = evaluate_accuracy(quantize_static_int8(model, calib_x, spec), x, y)
    if float_acc - int8_acc <= budget:
        return MixedPrecisionPlan((), float_acc, int8_acc, int8_acc, budget, True)
    sens = layer_sensitivity(model, calib_x, x, y, spec)
    keep: list[str] = []
    acc = int8_acc
    for s in sens[:max_fp32_layers]:
        keep.append(s.layer)
        mixed = replace(spec, exclude=tuple(spec.exclude) + tuple(keep))
        sim = quantize_static_int8(model, calib_x, mixed)
        acc = evaluate_accuracy(sim, x, y)
        if float_acc - acc <= budget:
            break
    return MixedPrecisionPlan(
        tuple(keep), float_acc, int8_acc, acc, budget, float_acc - acc <= budget, tuple(sens)
    )
