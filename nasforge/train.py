"""One compact training loop: SGD or AdamW, a learning-rate schedule (cosine, step, one-cycle,
constant; linear warm-up), label smoothing, batch augmentation (:mod:`nasforge.augment`),
NaN guard."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from nasforge.augment import MAX_MAGNITUDE, augment_batch
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
    schedule: Literal["cosine", "step", "onecycle", "constant"] = Field(
        "cosine",
        description="learning rate per batch: 'cosine' to 0, 'step' (x step_gamma every "
        "step_every_epochs), 'onecycle' (torch's OneCycleLR, peak lr), 'constant'",
    )
    cosine: bool | None = Field(
        None,
        exclude=True,  # folded into schedule: a dump (a run's config.yaml) holds schedule only
        description="the older switch, still accepted: false = schedule 'constant', true = "
        "'cosine'; a schedule that says otherwise is refused; after validation it is folded "
        "into schedule and reads None",
    )
    warmup_epochs: float = Field(
        0.0,
        ge=0,
        description="linear warm-up from lr/(W+1) to lr over this many epochs (W batches), "
        "then the schedule over the rest; capped at the run's length; for 'onecycle' it is the "
        "rising phase (pct_start), default 0.3 of the run",
    )
    step_every_epochs: float | None = Field(
        None, gt=0, description="'step': epochs between drops; default a third of the epochs"
    )
    step_gamma: float = Field(0.1, gt=0, le=1, description="'step': lr factor at each drop")
    augment: Literal["none", "shift", "randaugment", "trivialaugment"] = Field(
        "none",
        description="'shift': random +-2 pixel translation of the batch; 'randaugment': "
        "augment_n ops per sample at magnitude augment_m; 'trivialaugment': one op per sample "
        "at a random magnitude (TrivialAugmentWide); 1-D data gets the signal ops",
    )
    augment_n: int = Field(2, ge=0, le=10, description="'randaugment': ops per sample")
    augment_m: int = Field(
        9, ge=0, le=MAX_MAGNITUDE, description="'randaugment': magnitude 0..30 (0 = no change)"
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_cosine(cls, data: Any) -> Any:
        """``cosine:`` (the older switch) becomes ``schedule``; a contradiction is refused."""
        if not isinstance(data, dict) or data.get("cosine") is None:
            return data
        cosine = data["cosine"]
        if not isinstance(cosine, bool):
            return data  # the field's own check names it
        implied = "cosine" if cosine else "constant"
        given = data.get("schedule")
        if given is not None and given != implied:
            raise ValueError(
                f"cosine: {str(cosine).lower()} contradicts schedule: {given} (cosine: is the "
                f"older switch for schedule: {implied}); keep only schedule:"
            )
        return {**data, "schedule": implied, "cosine": None}


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


@dataclass(frozen=True)
class LoopState:
    """Where a training run stopped, enough to continue it exactly: the epochs done, the
    optimizer's and the scheduler's state dicts, the batch-order generator's and torch's
    global random state. Plain tensors, numbers and strings: a checkpoint of it loads with
    ``torch.load(weights_only=True)``."""

    epoch: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    generator: torch.Tensor
    torch_rng: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies every tensor of the optimizer's state
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopState:
        """Raises ``KeyError``/``TypeError`` on a dict that is not one (the caller decides)."""
        if not isinstance(data["generator"], torch.Tensor):
            raise TypeError("generator: not a tensor")
        if not isinstance(data["torch_rng"], torch.Tensor):
            raise TypeError("torch_rng: not a tensor")
        return cls(
            int(data["epoch"]),
            dict(data["optimizer"]),
            dict(data["scheduler"]),
            data["generator"],
            data["torch_rng"],
        )


@dataclass(frozen=True)
class TrainSpan:
    """A part of a longer run (multi-fidelity rungs that continue each other): the schedule
    spans ``schedule_epochs`` (``None``: ``cfg.epochs``) and training stops after
    ``cfg.epochs``; ``start`` continues a run stopped there (``None``: from scratch). Training
    ``r`` epochs, then continuing to ``3r`` with the same span, is exactly the run that trains
    ``3r`` epochs of the ``schedule_epochs`` schedule."""

    schedule_epochs: int | None = None
    start: LoopState | None = None


@dataclass
class TrainHistory:
    losses: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0
    #: where the run stopped (only when trained with a :class:`TrainSpan`)
    state: LoopState | None = None


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer: expected 'sgd' or 'adamw', got {cfg.optimizer!r}")


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate scheduler of ``cfg``, stepped once per batch.

    'onecycle' is torch's OneCycleLR (peak ``cfg.lr``; warm-up = its rising phase; momentum
    stays the configured one). The others are one LambdaLR of closed-form factors: linear
    warm-up over W = round(warmup_epochs * steps_per_epoch) batches, then cosine / step /
    constant over the remaining batches. One LambdaLR rather than SequentialLR(LinearLR, ...):
    the cosine factor must stay bit-identical to the recipe of runs made before warm-up
    existed, and SequentialLR restarts its second scheduler through the deprecated
    ``step(epoch)`` path.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        # OneCycleLR divides by (rise - 1) and (total - rise): keep the rise off 1 and total
        rise = min(max(float(warm) if warm else 0.3 * total, 1.5), total - 0.5)
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=rise / total, cycle_momentum=False
        )
    main = max(1, total - warm)
    every_epochs = cfg.step_every_epochs or max(cfg.epochs - cfg.warmup_epochs, 0) / 3
    every = max(1, round(every_epochs * steps_per_epoch))
    schedule, gamma = cfg.schedule, cfg.step_gamma

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / (warm + 1)
        t = s - warm
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, main) / main))
        if schedule == "step":
            return float(gamma ** (t // every))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


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
    span: TrainSpan | None = None,
) -> TrainHistory:
    """Train ``model`` in place.

    ``reporter(epoch, metrics)`` is called after each epoch (with ``val_acc`` when a
    validation split is given) and may raise to stop the trial early. ``step_hook(model)``
    runs after every optimizer step (pruning masks re-apply themselves there).
    ``span`` trains a part of a longer schedule, or continues one (:class:`TrainSpan`; the
    model must hold the weights the start state was saved with); the history's ``state``
    then says where it stopped. Epoch numbers (``reporter``) count from the run's start.
    Raises :class:`TrainingDiverged` when the loss becomes NaN or infinite.
    """
    t0 = time.perf_counter()
    span = span or TrainSpan()
    schedule_epochs = cfg.epochs if span.schedule_epochs is None else span.schedule_epochs
    if schedule_epochs < cfg.epochs:
        raise ValueError(
            f"schedule_epochs ({schedule_epochs}) is shorter than the epochs to train "
            f"({cfg.epochs})"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    steps_per_epoch = max(1, math.ceil(len(x) / cfg.batch_size))
    sched_cfg = (
        cfg if schedule_epochs == cfg.epochs else cfg.model_copy(update={"epochs": schedule_epochs})
    )
    sched = make_scheduler(opt, sched_cfg, steps_per_epoch)
    first = 0
    if span.start is not None:
        # the optimizer's state after the scheduler's: its saved param groups hold the lr of
        # the step the run stopped at (a new scheduler has just set step 0's)
        opt.load_state_dict(span.start.optimizer)
        sched.load_state_dict(span.start.scheduler)
        gen.set_state(span.start.generator)
        torch.set_rng_state(span.start.torch_rng)
        first = span.start.epoch
    ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    hist = TrainHistory()
    for epoch in range(first, cfg.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        running, n = 0.0, 0
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            xb = augment_batch(x[idx], cfg.augment, gen, cfg.augment_n, cfg.augment_m)
            yb = y[idx]
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
    if span.schedule_epochs is not None or span.start is not None:
        hist.state = LoopState(
            max(first, cfg.epochs),
            opt.state_dict(),
            sched.state_dict(),
            gen.get_state(),
            torch.get_rng_state(),
        )
    hist.seconds = time.perf_counter() - t0
    return hist
