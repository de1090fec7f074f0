"""What the weight-sharing trainers share: their optimizer and cosine schedule, checkpoint
files, the recipe check on resume, and the single-argument view of ``supernet(x, arch)``.

:class:`~nasforge.oneshot.spos.SupernetTrainer` (SPOS / FairNAS) and
:class:`~nasforge.oneshot.ofa.train.OFATrainer` (Once-for-All) train different supernets with
the same recipe fields (``optimizer``, ``lr``, ``momentum``, ``weight_decay``) and the same
checkpoint contract: a dict of tensors and plain values, written atomically, read with
``weights_only=True`` (no code runs), refused when it was trained with another recipe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError


def make_optimizer(
    params: Iterable[nn.Parameter],
    kind: str,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (``kind="sgd"``) or AdamW (``"adamw"``) over ``params``."""
    params = list(params)
    if kind == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True
        )
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"optimizer: expected sgd or adamw, got {kind!r}")


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate from its initial value down to 0 along a half cosine over
    ``total_steps`` optimizer steps (flat at 0 after them)."""
    total = max(1, int(total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )


def check_recipe(saved: Mapping[str, Any], mine: Mapping[str, Any], what: str) -> None:
    """Refuse a checkpoint trained with another recipe.

    Raises:
        ConfigError: ``saved`` differs from ``mine``; names the fields that differ.
    """
    if dict(saved) != dict(mine):
        diff = sorted(k for k in set(mine) | set(saved) if saved.get(k) != mine.get(k))
        raise ConfigError(f"{what}: trained with another recipe (differs in {diff})")


class BoundArch(nn.Module):
    """``supernet(x, arch)`` as a one-argument module (for
    :func:`~nasforge.train.evaluate_accuracy` and BN recalibration)."""

    def __init__(self, supernet: nn.Module, arch: Mapping[str, Any]) -> None:
        super().__init__()
        self.supernet, self.arch = supernet, arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.supernet(x, self.arch)
        return out
