"""Iterative magnitude pruning with weight rewinding (the lottery-ticket procedure).

Train the dense model, remembering the weights at ``rewind_step`` (0 = initialisation, as
in Frankle & Carbin; a few hundred steps, as in Frankle et al. 2020, is more stable). Then
per round: prune ``rate`` of the surviving weights by global magnitude, rewind the
survivors to their remembered values, retrain with the masks held. The result carries the
sparsity/accuracy curve for the report.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from nasforge.compression.pruning.unstructured import WeightMasks, magnitude_masks
from nasforge.train import TrainConfig, evaluate_accuracy, train_model


@dataclass(frozen=True)
class IMPRound:
    """One point of the curve: round 0 is the dense model."""

    round: int
    sparsity: float
    val_acc: float
    pruned_weights: int
    total_weights: int


@dataclass(frozen=True)
class IMPResult:
    rounds: tuple[IMPRound, ...]
    rate: float
    rewind_step: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def imp_sparsity(rate: float, round_: int) -> float:
    """Sparsity after ``round_`` rounds pruning ``rate`` of the survivors each time."""
    return 1.0 - (1.0 - rate) ** round_


class _Snapshot:
    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0
        self.state: dict[str, torch.Tensor] | None = None

    def __call__(self, model: nn.Module) -> None:
        self.seen += 1
        if self.seen == self.step:
            self.state = copy.deepcopy(model.state_dict())


def iterative_magnitude_pruning(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    train: TrainConfig,
    rounds: int = 3,
    rate: float = 0.2,
    rewind_step: int = 0,
    progress: Callable[[IMPRound], None] | None = None,
) -> tuple[nn.Module, WeightMasks, IMPResult]:
    """Run ``rounds`` of prune-rewind-retrain on ``model`` (modified in place).

    Returns the final model (masks applied), its masks and the curve. Round ``r`` leaves
    exactly ``round(imp_sparsity(rate, r) * n)`` conv/linear weights pruned.
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"imp.rate must be in (0, 1), got {rate}")
    if rounds < 1:
        raise ValueError(f"imp.rounds must be >= 1, got {rounds}")
    rewind_state = copy.deepcopy(model.state_dict()) if rewind_step <= 0 else None
    snap = _Snapshot(rewind_step)
    train_model(model, x, y, train, step_hook=snap if rewind_step > 0 else None)
    if rewind_state is None:
        rewind_state = snap.state if snap.state is not None else copy.deepcopy(model.state_dict())
    masks = magnitude_masks(model, 0.0)
    total = sum(m.numel() for m in masks.masks.values())
    curve = [IMPRound(0, 0.0, evaluate_accuracy(model, x_val, y_val), 0, total)]
    if progress:
        progress(curve[-1])
    for r in range(1, rounds + 1):
        masks = magnitude_masks(model, imp_sparsity(rate, r), "global", masks)
        model.load_state_dict(rewind_state)
        masks.apply(model)
        train_model(model, x, y, train, step_hook=masks.hook)
        pruned = total - sum(int(m.sum()) for m in masks.masks.values())
        val_acc = evaluate_accuracy(model, x_val, y_val)
        curve.append(IMPRound(r, masks.sparsity, val_acc, pruned, total))
        if progress:
            progress(curve[-1])
    return model, masks, IMPResult(tuple(curve), rate, rewind_step)
