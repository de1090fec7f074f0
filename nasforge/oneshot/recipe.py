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
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
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


def save_state(state: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save(state)`` to ``path`` atomically (a temporary file, synced, then renamed):
    a reader, or a resume after ``kill -9``, sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(dict(state), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_state(path: str | Path, what: str, required: Iterable[str] = ()) -> dict[str, Any]:
    """A checkpoint written by :func:`save_state` (``weights_only``: runs no code).

    Args:
        path: the file.
        what: how errors name it (``"supernet checkpoint"``).
        required: keys a checkpoint of this kind must have.

    Raises:
        ConfigError: the file cannot be read, or is not a dict with the ``required`` keys.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{what} {path}: cannot be read ({why})") from None
    if not isinstance(state, dict) or any(k not in state for k in required):
        article = "an" if what[:1] in "AEFHILMNORSXaeiou" else "a"  # an OFA, a supernet
        raise ConfigError(f"{what} {path}: not {article} {what}")
    return state


class BoundArch(nn.Module):
    """``supernet(x, arch)`` as a one-argument module (for
    :func:`~nasforge.train.evaluate_accuracy` and BN recalibration)."""

    def __init__(self, supernet: nn.Module, arch: Mapping[str, Any]) -> None:
        super().__init__()
        self.supernet, self.arch = supernet, arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.supernet(x, self.arch)
        return out
