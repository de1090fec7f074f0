"""INT4 weight-only quantization: grouped symmetric 4-bit weights with one scale per group.

Each conv/linear weight is viewed as (out_channels, fan_in), split along fan_in into groups
of ``group_size`` values, and quantized to [-8, 7] with an FP16 scale per group. Storage is
two weights per byte plus the scales; everything else stays FP32.

Honest limits: neither ONNX Runtime nor PyTorch has an INT4 *convolution* kernel for x86
CPUs, so an INT4 conv net runs by dequantizing to FP32 -- no faster than FP32. INT4 here
buys size (about 7x smaller weights), at the accuracy the report shows. ONNX Runtime's
``MatMulNBits`` speeds up INT4 only for MatMul/linear-heavy models (transformers).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nasforge.compression.errors import QuantizationError

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Int4Weight:
    """One packed weight: ``packed`` uint8 (two 4-bit values each), FP16 ``scales`` of
    shape (out, n_groups), the original ``shape`` and ``group_size``."""

    packed: torch.Tensor
    scales: torch.Tensor
    shape: tuple[int, ...]
    group_size: int

    @property
    def size_bytes(self) -> int:
        return self.packed.numel() + self.scales.numel() * 2

    def dequantize(self) -> torch.Tensor:
        q = unpack_int4(self.packed, self.scales.shape[0] * self.scales.shape[1] * self.group_size)
        q = q.reshape(self.scales.shape[0], self.scales.shape[1], self.group_size).float()
        w = (q * self.scales.float().unsqueeze(-1)).reshape(self.shape[0], -1)
        fan_in = math.prod(self.shape[1:])
        return w[:, :fan_in].reshape(self.shape)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int values in [-8, 7] two per byte (low nibble first)."""
    u = (q.flatten().to(torch.int16) & 0xF).to(torch.uint8)
    if u.numel() % 2:
        u = torch.cat([u, torch.zeros(1, dtype=torch.uint8)])
    return u[0::2] | (u[1::2] << 4)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    lo = (packed & 0xF).to(torch.int16)
    hi = (packed >> 4).to(torch.int16)
    u = torch.stack([lo, hi], 1).flatten()[:n]
    return torch.where(u >= 8, u - 16, u).to(torch.int8)


def quantize_weight_int4(w: torch.Tensor, group_size: int = 32) -> Int4Weight:
    if group_size < 2 or group_size % 2:
        raise QuantizationError(
            f"quantize.int4_group_size must be an even number >= 2, got {group_size}"
        )
    w2 = w.detach().float().reshape(w.shape[0], -1)
    fan_in = w2.shape[1]
    n_groups = math.ceil(fan_in / group_size)
    pad = n_groups * group_size - fan_in
    if pad:
        w2 = torch.cat([w2, torch.zeros(w2.shape[0], pad)], 1)
    g = w2.reshape(w2.shape[0], n_groups, group_size)
    scales = (g.abs().amax(-1) / 7.0).clamp(min=1e-8).half()
    q = torch.clamp(torch.round(g / scales.float().unsqueeze(-1)), -8, 7).to(torch.int8)
    return Int4Weight(pack_int4(q), scales, tuple(w.shape), group_size)


@dataclass(frozen=True)
class Int4Model:
    """An INT4 weight-only model: packed weights by module name plus the FP32 rest."""

    weights: dict[str, Int4Weight]
    rest: dict[str, torch.Tensor]

    @property
    def size_bytes(self) -> int:
        return sum(w.size_bytes for w in self.weights.values()) + sum(
            t.numel() * t.element_size() for t in self.rest.values()
        )

    def materialize(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` (same architecture) carrying the dequantized weights."""
        out = copy.deepcopy(model)
        state = dict(self.rest)
        for name, w in self.weights.items():
            state[f"{name}.weight"] = w.dequantize()
        out.load_state_dict(state)
        return out

    def save(self, path: str | Path) -> None:
        torch.save(
            {
                "format": "nasforge-int4-v1",
                "weights": {
                    k: {
                        "packed": w.packed,
                        "scales": w.scales,
                        "shape": list(w.shape),
                        "group_size": w.group_size,
                    }
                    for k, w in self.weights.items()
                },
                "rest": self.rest,
            },
            str(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> Int4Model:
        d = torch.load(str(path), weights_only=True)
        if d.get("format") != "nasforge-int4-v1":
            raise QuantizationError(f"{path}: not a nasforge INT4 file")
        ws = {
            k: Int4Weight(v["packed"], v["scales"], tuple(v["shape"]), int(v["group_size"]))
            for k, v in d["weights"].items()
        }
        return cls(ws, d["rest"])


def quantize_int4(model: nn.Module, group_size: int = 32, exclude: Iterable[str] = ()) -> Int4Model:
    """INT4 weight-only quantization of every conv/linear weight (``exclude``: name prefixes
    kept FP32, e.g. a 1-channel stem). ``model`` is not modified."""
    ex = tuple(exclude)
    weights = {}
    for name, m in model.named_modules():
        if isinstance(m, _WEIGHTED) and not any(name.startswith(p) for p in ex):
            weights[name] = quantize_weight_int4(m.weight, group_size)
    packed_keys = {f"{n}.weight" for n in weights}
    rest = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in packed_keys}
    return Int4Model(weights, rest)
