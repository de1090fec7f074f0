"""Single-path one-shot training (SPOS / FairNAS) and inherited-weight evaluation.

:class:`SupernetTrainer` trains a :class:`~nasforge.oneshot.supernet.Supernet` on the train
split: every step draws its paths from the sampler (one uniform path, or the ``m`` strictly
fair paths of FairNAS, all on the same batch, gradients accumulated, one update), SGD/AdamW
with a cosine schedule over all steps, label smoothing. :meth:`SupernetTrainer.accuracy`
scores an arch with the inherited weights after BN recalibration on fixed training batches.

Determinism and resume: the batch order and the sampler of epoch ``e`` are seeded by
``(seed, e)``, so :meth:`state_dict` (weights, optimizer, schedule, epoch, records) is all a
resumed run needs to continue exactly as an uninterrupted one. :meth:`save` / :meth:`load` use
``torch.save`` / ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain values,
never code.

Data parallelism (``torchrun``, :mod:`nasforge.oneshot.distributed`): when the process group is
joined, :meth:`SupernetTrainer.step_epoch` trains the supernet wrapped in DDP; every rank draws
the same global batches and paths (same seeds) and runs its slice of each batch
(:func:`~nasforge.oneshot.distributed.shard`); DDP averages the gradients, so the ranks hold
identical weights after every step. An epoch's loss is the mean over all ranks and its
``cpu_seconds`` the sum (the search cost of every process).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from nasforge.checkpoint import load_state, save_state
from nasforge.data import Dataset
from nasforge.errors import ConfigError, TrainingDiverged
from nasforge.oneshot import distributed
from nasforge.oneshot.bn import calibration_batches, recalibrate_bn
from nasforge.oneshot.budget import choice_passes_per_epoch, supernet_budget_warning
from nasforge.oneshot.recipe import (
    BoundArch,
    check_recipe,
    cosine_schedule,
    make_optimizer,
)
from nasforge.oneshot.sampling import PathSampler, make_sampler
from nasforge.oneshot.supernet import Supernet
from nasforge.space import Arch, SearchSpace
from nasforge.train import evaluate_accuracy


class SupernetConfig(BaseModel):
    """How the supernet is trained and how archs are scored on it (CPU-sized defaults).

    Attributes:
        sampling: ``uniform`` (SPOS) or ``fair`` (FairNAS strict fairness).
        epochs: passes over the train split.
        batch_size, optimizer, lr, weight_decay, momentum, label_smoothing: the recipe.
        grad_clip: max gradient norm per update (0: off); single-path training with a high
            learning rate can spike.
        bn_batches, bn_batch_size: training batches forwarded to recalibrate BN per evaluation.
        seed: weights init, batch order, paths and calibration batches.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sampling: Literal["uniform", "fair"] = "uniform"
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(4e-5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(5.0, ge=0)
    bn_batches: int = Field(4, ge=1)
    bn_batch_size: int = Field(128, ge=2)
    seed: int = 0

    @classmethod
    def from_options(cls, where: str, **options: Any) -> SupernetConfig:
        """Build from config options; a bad field is a :class:`ConfigError` naming
        ``<where>.<field>``."""
        try:
            return cls(**options)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"{where}.{field}: {err['msg']}") from None


@dataclass(frozen=True)
class EpochRecord:
    """One training epoch: mean loss over paths (and ranks), steps, paths run, the learning
    rate at its end, its wall-clock seconds, its CPU seconds (summed over the ranks), the
    number of data-parallel processes that trained it, and ``choice_passes``: the passes over
    the training split the least-trained op choice has had up to this epoch's end
    (:func:`~nasforge.oneshot.budget.choice_passes_per_epoch`; 0 in records written before
    it was kept)."""

    epoch: int
    loss: float
    steps: int
    paths: int
    lr: float
    seconds: float
    cpu_seconds: float = 0.0
    world_size: int = 1
    choice_passes: float = 0.0


class SupernetTrainer:
    """Trains the supernet of ``space`` on ``dataset``'s train split with ``config``.

    Args:
        space: the search space (must have a registered supernet).
        dataset: train split for training and BN recalibration, validation for scoring.
        config: the recipe.

    Call :meth:`step_epoch` (or :meth:`train`) to train, :meth:`accuracy` to score an arch.
    The trainer owns the supernet (:attr:`supernet`); nothing else mutates it. The constructor
    seeds torch's global generator with ``config.seed`` to initialise the weights.
    """

    def __init__(self, space: SearchSpace, dataset: Dataset, config: SupernetConfig) -> None:
        self.space, self.dataset, self.config = space, dataset, config
        torch.manual_seed(config.seed)
        self.supernet = Supernet(space)
        params = [p for p in self.supernet.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(
            params, config.optimizer, config.lr, config.momentum, config.weight_decay
        )
        self.steps_per_epoch = max(1, len(dataset.y_train) // config.batch_size)
        #: passes over the training split per epoch of the least-trained op choice
        self.choice_passes_per_epoch = choice_passes_per_epoch(space, config.sampling)
        self.scheduler = cosine_schedule(self.optimizer, config.epochs * self.steps_per_epoch)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.epoch = 0
        self.records: list[EpochRecord] = []
        self.train_seconds = 0.0
        self._net: nn.Module | None = None  # the supernet as trained (in DDP under torchrun)
        self._calib = calibration_batches(
            dataset.x_train, config.bn_batches, config.bn_batch_size, config.seed
        )

    # -- training -------------------------------------------------------------------------------
    def sampler_for(self, epoch: int) -> PathSampler:
        """The path sampler of ``epoch`` (seeded by ``(seed, epoch)``)."""
        return make_sampler(self.config.sampling, self.space, self.config.seed * 100_003 + epoch)

    @property
    def done(self) -> bool:
        """Whether all ``config.epochs`` are trained."""
        return self.epoch >= self.config.epochs

    def step_epoch(self) -> EpochRecord:
        """Train one epoch and return (and keep) its record.

        Raises:
            TrainingDiverged: the loss became NaN or infinite.
        """
        t0, cpu0 = time.perf_counter(), time.process_time()
        cfg, d = self.config, self.dataset
        ctx = distributed.current()
        sampler = self.sampler_for(self.epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + self.epoch)
        perm = torch.randperm(len(d.y_train), generator=gen)
        if self._net is None:  # wrapped once, by every rank at the same step (DDP syncs here)
            self._net = distributed.wrap(self.supernet, ctx)
        net = self._net
        net.train()
        total, count, paths = 0.0, 0.0, 0
        for step in range(self.steps_per_epoch):
            # the global batch, the same on every rank; this rank trains on its slice
            idx = distributed.shard(perm[step * cfg.batch_size : (step + 1) * cfg.batch_size], ctx)
            xb, yb = d.x_train[idx], d.y_train[idx]
            self.optimizer.zero_grad(set_to_none=True)
            for arch in sampler.paths():
                loss = self.loss_fn(net(xb, arch), yb)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"supernet loss became {loss.item()} at epoch {self.epoch}, step {step}"
                    )
                loss.backward()  # FairNAS: gradients of all paths accumulate, one update
                # (under DDP each backward averages over the ranks; the sum stays averaged)
                total += loss.item()
                count += 1
                paths += 1
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.supernet.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
        # loss: the mean over every rank's paths; CPU seconds: the sum over the ranks
        sums = torch.tensor([total, count, time.process_time() - cpu0], dtype=torch.float64)
        distributed.all_reduce_mean_([sums], ctx)
        total, count, cpu = (float(v) * ctx.world_size for v in sums)
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        record = EpochRecord(
            self.epoch,
            total / max(count, 1.0),
            self.steps_per_epoch,
            paths,
            float(self.optimizer.param_groups[0]["lr"]),
            seconds,
            cpu,
            ctx.world_size,
            (self.epoch + 1) * self.choice_passes_per_epoch,
        )
        self.records.append(record)
        self.epoch += 1
        return record

    def train(self, checkpoint: str | Path | None = None) -> list[EpochRecord]:
        """Train the remaining epochs; with ``checkpoint``, save after every epoch (rank 0 only,
        under torchrun: the other ranks hold the same weights)."""
        while not self.done:
            self.step_epoch()
            if checkpoint is not None and distributed.current().is_main:
                self.save(checkpoint)
        return list(self.records)

    def budget_warning(self, field: str = "oneshot.options.epochs") -> str | None:
        """A warning when ``config.epochs`` give the least-trained op choice fewer than
        ~100 passes over the training split (too few for an honest ranking; see
        :mod:`nasforge.oneshot.budget`), naming ``field`` and the epochs that would be enough;
        ``None`` when they are enough."""
        per_epoch = self.choice_passes_per_epoch
        passes = self.config.epochs * per_epoch
        return supernet_budget_warning(passes, per_epoch, field, self.config.sampling)

    # -- evaluation -----------------------------------------------------------------------------
    def recalibrate(self, arch: Arch) -> None:
        """Reset BN statistics and re-estimate them for ``arch`` on the fixed training batches."""
        self.space.validate(arch)
        recalibrate_bn(self.supernet, lambda x: self.supernet(x, arch), self._calib)

    def accuracy(self, arch: Arch, split: Literal["val", "test"] = "val") -> float:
        """Top-1 accuracy in [0, 1] of ``arch`` with inherited weights after BN recalibration
        (on ``split``; search uses ``val``)."""
        self.recalibrate(arch)
        x, y = (
            (self.dataset.x_val, self.dataset.y_val)
            if split == "val"
            else (self.dataset.x_test, self.dataset.y_test)
        )
        return evaluate_accuracy(BoundArch(self.supernet, arch), x, y)

    def extract(self, arch: Arch) -> nn.Module:
        """The stand-alone net of ``arch`` with the inherited weights and recalibrated BN."""
        self.recalibrate(arch)
        return self.supernet.extract(arch)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed trainer needs (tensors and plain values only)."""
        return {
            "config": self.config.model_dump(),
            "epoch": self.epoch,
            "supernet": self.supernet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "records": [asdict(r) for r in self.records],
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output.

        Raises:
            ConfigError: the checkpoint was trained with another recipe.
        """
        check_recipe(state["config"], self.config.model_dump(), "supernet checkpoint")
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.records = [EpochRecord(**r) for r in state["records"]]
        self.train_seconds = float(state["train_seconds"])

    def save(self, path: str | Path) -> None:
        """Write :meth:`state_dict` atomically (a temporary file, then a rename)."""
        save_state(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Read a checkpoint written by :meth:`save` (``weights_only``: no code is run).

        Raises:
            ConfigError: the file is not a supernet checkpoint of this recipe (names it).
        """
        self.load_state_dict(load_state(path, "supernet checkpoint", ("supernet",)))
