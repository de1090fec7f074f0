"""One compact training loop: SGD or AdamW, cosine schedule, label smoothing, NaN guard."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nasforge.errors import TrainingDiverged

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, targets, inputs) -> loss``; replaces cross-entropy (e.g. distillation)."""


class TrainSection(BaseModel):
    """The training recipe: the config's ``train:`` section and the one source of its
    defaults and checks (the experiment config uses this class as its section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(2, ge=0)
    batch_size: int = Field(64, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(4e-5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    cosine: bool = True
    augment: Literal["none", "shift"] = Field(
        "none", description="'shift': random +-2 pixel translation"
    )


class TrainConfig(TrainSection):
    """What :func:`train_model` runs: the recipe plus the seed (same defaults and checks).

    Build it from a config with ``TrainConfig.from_section(cfg.train, seed=cfg.seed)``;
    change one field with ``model_copy(update={"epochs": 5})``.
    """

    seed: int = 0

    @classmethod
    def from_section(cls, section: TrainSection, seed: int, **update: Any) -> TrainConfig:
        """The section's recipe with ``seed`` (and ``update``, e.g. other epochs)."""
        return cls(**{**section.model_dump(), "seed": seed, **update})


@dataclass
class TrainHistory:
    losses: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer: expected 'sgd' or 'adamw', got {cfg.optimizer!r}")


def _augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return x
    if kind == "shift":
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
        dims = (-1,) if x.dim() == 3 else (-2, -1)
        shifts = (dx,) if x.dim() == 3 else (dy, dx)
        return torch.roll(x, shifts=shifts, dims=dims)
    raise ValueError(f"train.augment: expected 'none' or 'shift', got {kind!r}")


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
) -> float:
    """Top-1 accuracy in [0, 1] in eval mode."""
    if len(y) == 0:
        return float("nan")
    logits = predict_logits(model, x, batch_size)
    return float((logits.argmax(1) == y).float().mean())


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    reporter: Callable[[int, dict[str, float]], None] | None = None,
    loss_fn: LossFn | None = None,
    step_hook: Callable[[nn.Module], None] | None = None,
) -> TrainHistory:
    """Train ``model`` in place.

    ``reporter(epoch, metrics)`` is called after each epoch (with ``val_acc`` when a
    validation split is given) and may raise to stop the trial early. ``step_hook(model)``
    runs after every optimizer step (pruning masks re-apply themselves there).
    Raises :class:`TrainingDiverged` when the loss becomes NaN or infinite.
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    steps_per_epoch = max(1, math.ceil(len(x) / cfg.batch_size))
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)) if cfg.cosine else 1.0
    )
    ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    hist = TrainHistory()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        running, n = 0.0, 0
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            xb, yb = _augment(x[idx], cfg.augment, gen), y[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb, xb) if loss_fn is not None else ce(logits, yb)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch}, step {i // cfg.batch_size}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step_hook is not None:
                step_hook(model)
            running += loss.item() * len(idx)
            n += len(idx)
        hist.losses.append(running / max(n, 1))
        metrics = {"loss": hist.losses[-1]}
        if x_val is not None and y_val is not None:
            hist.val_acc.append(evaluate_accuracy(model, x_val, y_val))
            metrics["val_acc"] = hist.val_acc[-1]
        if reporter is not None:
            reporter(epoch, metrics)
    hist.seconds = time.perf_counter() - t0
    return hist
