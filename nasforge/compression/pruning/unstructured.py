"""Unstructured magnitude pruning: per-weight masks, layer-wise or global, with schedules.

Masks are boolean tensors (True = keep) held by :class:`WeightMasks`. They are applied by
zeroing the weights, and re-applied after every optimizer step through ``train_model``'s
``step_hook`` -- so they survive training (momentum and weight decay cannot revive a pruned
weight) and are already folded into the weights when the model is exported: the exported
model is a plain dense model with zeros, no hooks or reparametrisations.

Unstructured sparsity shrinks a compressed file but does not speed up dense kernels; the
pipeline reports it as such and uses structured pruning for latency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

SCHEDULES = ("constant", "linear", "cubic")
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_weights(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Conv and linear weights by module name (modules under an ``exclude`` prefix skipped)."""
    ex = tuple(exclude)
    return {
        name: cast(nn.Parameter, m.weight)
        for name, m in model.named_modules()
        if isinstance(m, _WEIGHTED) and not any(name.startswith(p) for p in ex)
    }


@dataclass(frozen=True)
class SparsitySchedule:
    """Target sparsity at a training step.

    ``constant``: ``final`` from ``start_step`` on. ``linear``: from 0 at ``start_step`` to
    ``final`` at ``end_step``. ``cubic``: Zhu & Gupta's gradual schedule
    ``final * (1 - (1 - t)^3)``, pruning fast early and gently near the end.
    ``frequency``: masks are recomputed every that many steps.
    """

    final: float
    kind: str = "cubic"
    start_step: int = 0
    end_step: int = 0
    frequency: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.final < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.final}")
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {SCHEDULES}, got {self.kind!r}")
        if self.frequency < 1:
            raise ValueError("schedule.frequency must be >= 1")

    def at(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if self.kind == "constant" or self.end_step <= self.start_step:
            return self.final
        t = min(1.0, (step - self.start_step) / (self.end_step - self.start_step))
        if self.kind == "linear":
            return self.final * t
        return self.final * (1.0 - (1.0 - t) ** 3)


class WeightMasks:
    """Keep-masks for named weights. ``apply`` zeroes the pruned weights in place; use
    ``hook`` as ``train_model(step_hook=...)`` to keep them zero during training."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = {k: v.bool() for k, v in masks.items()}

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        for name, mask in self.masks.items():
            w = cast(torch.Tensor, model.get_submodule(name).weight)
            w.mul_(mask.to(w.dtype))
        return model

    def hook(self, model: nn.Module) -> None:
        self.apply(model)

    @property
    def sparsity(self) -> float:
        """Fraction of masked weights over all weights the masks cover."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / total if total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        return {k: 1.0 - float(m.float().mean()) for k, m in self.masks.items()}


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep-mask with exactly ``k`` of the smallest scores removed (ties by index)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores.flatten(), stable=True)[:k]] = False
    return keep.reshape(scores.shape)


@torch.no_grad()
def magnitude_masks(
    model: nn.Module,
    sparsity: float,
    scope: str = "global",
    previous: WeightMasks | None = None,
    exclude: Iterable[str] = (),
) -> WeightMasks:
    """Masks removing the ``sparsity`` fraction of smallest-|w| weights, exactly
    ``round(sparsity * n)`` of them (globally or in each layer).

    Weights pruned by ``previous`` stay pruned (they rank first), so repeated calls with
    rising sparsity give nested masks, as iterative magnitude pruning requires.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"prune.sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"prune.scope: expected 'global' or 'layer', got {scope!r}")
    weights = prunable_weights(model, exclude)
    scores = {}
    for name, w in weights.items():
        s = w.detach().abs().float().clone()
        if previous is not None and name in previous.masks:
            s[~previous.masks[name]] = -1.0
        scores[name] = s
    if scope == "layer":
        return WeightMasks(
            {n: _smallest(s, round(sparsity * s.numel())) for n, s in scores.items()}
        )
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = _smallest(flat, round(sparsity * flat.numel()))
    out, i = {}, 0
    for n, s in scores.items():
        out[n] = keep[i : i + s.numel()].reshape(s.shape)
        i += s.numel()
    return WeightMasks(out)


class GradualMagnitudePruner:
    """A ``step_hook`` that raises sparsity along a schedule during training.

    Every ``schedule.frequency`` steps it recomputes magnitude masks at the scheduled
    sparsity (nested in the previous ones); on every step it re-applies the current masks.
    """

    def __init__(
        self, schedule: SparsitySchedule, scope: str = "global", exclude: Iterable[str] = ()
    ) -> None:
        self.schedule = schedule
        self.scope = scope
        self.exclude = tuple(exclude)
        self.step = 0
        self.masks: WeightMasks | None = None

    def __call__(self, model: nn.Module) -> None:
        self.step += 1
        if self.masks is None or self.step % self.schedule.frequency == 0:
            target = self.schedule.at(self.step)
            if self.masks is None or target > self.masks.sparsity + 1e-9:
                self.masks = magnitude_masks(model, target, self.scope, self.masks, self.exclude)
        self.masks.apply(model)


def fold_masks(model: nn.Module, masks: WeightMasks) -> nn.Module:
    """Zero the masked weights for export (in place). Masks live outside the model, so the
    result is a plain module; returns ``model``."""
    return masks.apply(model)


def weight_sparsity(model: nn.Module, exclude: Iterable[str] = ()) -> float:
    """Fraction of exactly-zero conv/linear weights."""
    ws = list(prunable_weights(model, exclude).values())
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / total if total else 0.0


def sparse_size_bytes(model: nn.Module, bits_per_value: int = 32) -> int:
    """Bytes of a compressed-sparse (CSR-style) encoding: nonzeros + a bitmap per weight,
    dense for everything else -- what unstructured sparsity saves on disk, not in latency."""
    total = 0
    weights = {id(w) for w in prunable_weights(model).values()}
    for p in model.state_dict(keep_vars=True).values():
        if id(p) in weights:
            nz = int((p != 0).sum())
            total += nz * bits_per_value // 8 + math.ceil(p.numel() / 8)
        else:
            total += p.numel() * p.element_size()
    return total
