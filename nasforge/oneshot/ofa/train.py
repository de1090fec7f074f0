"""Progressive shrinking (Once-for-All, Cai et al. 2020) with in-place distillation.

:class:`OFATrainer` trains an :class:`~nasforge.oneshot.ofa.elastic.ElasticMobileSupernet` on
the train split through the phases of :class:`OFAConfig`: each phase names the elastic
dimensions it samples (the others stay at their largest value) and runs as its own training,
with its own optimizer and cosine schedule. OFA's schedule trains the full network first, then
makes the kernel elastic, then the depth (first the two deepest choices, then all), then the
expansion (likewise), so that small subnets are fitted after, and distilled from, a good large
one. At the start of a phase that newly makes ``expand`` elastic, the hidden channels are
sorted by importance (:meth:`ElasticMobileSupernet.reorganize_channels`) so that a narrow
subnet takes the most important ones.

One step (in-place distillation, Yu & Huang 2019, as OFA trains): the largest arch forward
with cross-entropy; its logits, detached, teach the phase's smallest subnet (the sandwich
rule of BigNAS, Yu et al. 2020, on by default) and ``subnets_per_step`` subnets sampled in the
phase's elastic dimensions, each with cross-entropy plus ``distill`` *
KL(teacher / T || student / T) * T^2; gradients accumulate, one update (gradient clipping).

Determinism and resume follow :class:`~nasforge.oneshot.spos.SupernetTrainer`: epoch ``e``'s
batch order and subnets are seeded by ``(seed, e)`` and phases start at fixed epochs, so
:meth:`OFATrainer.state_dict` (weights, the current phase's optimizer and schedule, epoch,
records) is all a resumed run needs to continue exactly, also across a phase boundary.

Data parallel (under ``torchrun``, after :func:`nasforge.oneshot.distributed.init`): the
trainer wraps the supernet in torch's DDP, every rank draws the same batch order and the same
subnets (the seeds above), and each trains on its slice of every global batch
(:func:`~nasforge.oneshot.distributed.shard`); the step's passes accumulate locally
(``no_sync``) and DDP averages the accumulated gradients once, in the step's last backward, so
one step sees the global batch (batch-norm statistics per rank). The epoch record's losses are
the mean over the ranks and it says the ``world_size``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from nasforge.checkpoint import load_state, save_state
from nasforge.data import Dataset
from nasforge.errors import ConfigError, TrainingDiverged
from nasforge.oneshot import distributed
from nasforge.oneshot.bn import calibration_batches, recalibrate_bn
from nasforge.oneshot.ofa.elastic import ELASTIC_DIMS, ElasticMobileSupernet, elastic_dim
from nasforge.oneshot.recipe import (
    BoundArch,
    check_recipe,
    cosine_schedule,
    make_optimizer,
)
from nasforge.oneshot.sampling import choice_values
from nasforge.space import Arch
from nasforge.space.arch import Value
from nasforge.spaces.mobile import MobileSpace
from nasforge.train import evaluate_accuracy

ElasticDim = Literal["resolution", "kernel", "depth", "expand", "width", "act", "se"]
"""One elastic dimension (the names of :data:`~nasforge.oneshot.ofa.elastic.ELASTIC_DIMS`)."""


class PhaseConfig(BaseModel):
    """One phase of progressive shrinking.

    Attributes:
        name: shown in records and reports.
        elastic: the dimensions sampled in this phase; the others stay at their largest value
            (``()``: the largest net only). A dimension the space does not have is ignored
            (``resolution`` on a space with one resolution).
        epochs: passes over the train split (0: the phase is skipped).
        lr: the phase's peak learning rate (``None``: :attr:`OFAConfig.lr`).
        choices: per elastic dimension, how many of its largest choices are sampled (OFA's
            first depth / expand step samples the two largest only); unlisted: all.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    elastic: tuple[ElasticDim, ...] = ()
    epochs: int = Field(ge=0)
    lr: float | None = Field(None, gt=0)
    choices: dict[ElasticDim, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> PhaseConfig:
        if len(set(self.elastic)) != len(self.elastic):
            raise ValueError(f"elastic: lists a dimension twice: {list(self.elastic)}")
        for dim, n in self.choices.items():
            if dim not in self.elastic:
                raise ValueError(f"choices.{dim}: {dim!r} is not elastic in this phase")
            if n < 1:
                raise ValueError(f"choices.{dim}: must be at least 1, got {n}")
        return self


_ALL: tuple[ElasticDim, ...] = ("resolution", "kernel", "depth", "expand", "width", "act", "se")

DEFAULT_PHASES: tuple[PhaseConfig, ...] = (
    PhaseConfig(name="full", elastic=(), epochs=2),
    PhaseConfig(name="kernel", elastic=("resolution", "kernel"), epochs=1),
    PhaseConfig(name="depth", elastic=("resolution", "kernel", "depth"), epochs=1),
    PhaseConfig(name="expand", elastic=_ALL, epochs=10),
)
"""OFA's order (full -> kernel -> depth -> expand), its time shares re-measured at CPU size.

Elastic resolution is sampled from the kernel phase on (OFA samples it throughout); the
stage width, activation and squeeze-excitation (dimensions of the ``mobile`` space that OFA's
MobileNetV3 space fixes) become elastic with the expansion. 14 epochs, with
:attr:`OFAConfig.sandwich` and 6 random subnets per step: about 2.5 CPU minutes for the
benchmarks' 3-stage mobile space on mnist1d (3,311 training samples).

OFA gives most of its epochs to the early phases (180 full : 120 kernel : 25 + 120 depth :
25 + 120 expand). At CPU size that starves the last phase, the only one that trains the small
subnets, which make most of the space. Measured on mnist1d (9,200 samples, the pinned mobile
space of the benchmarks, 5 seeded random archs spread over sizes, not the benchmark's),
validation accuracy extracted with BN recalibrated minus the same arch trained from scratch
for the same 14 epochs, mean in points: OFA's proportions (5 / 2 / 1+2 / 1+3 epochs, 2
subnets per step) -14.4, with the sandwich rule -10.3; shares 4 / 2 / 1+1 / 1+5 -4.8;
3 / 1 / 1+1 / 1+7 -2.9; 2 / 1 / 1 / 10 -2.0 (its largest net the better too); then 3 subnets
per step -1.2, 4 -0.2 (seeds 1 and 2: -1.4, -0.5), 6 +0.1 (-0.1, +0.1); 1 / 1 / 1 / 11 with 4
-0.7. Per arch the smallest gains most from distillation (+4 with 6) and the others stay
about 1 point below scratch. Progressive shrinking still matters: the same 14 epochs with
every dimension elastic from the start, with the sandwich rule, -6.1 (2 subnets per step)
and -2.8 (4; the same with shrinking -0.2 / -1.4 / -0.5). The gap left is largest for
subnets with ``expand == 1`` blocks, whose depthwise conv runs on the block's input channels
with filters shared with the hidden channels of the larger expansions (after OFA's
proportions with the sandwich rule, the largest net at expansion 1 everywhere scores 0.68
val, at any other single dimension at its smallest 0.90-0.97; separate weights for expansion
1, trained from the expand phase on, did not help: -14.3 vs -14.4, sandwich -10.2 vs -10.3).
Every phase restarts from the config's ``lr`` (a peak of 0.1 in the last phase: -1.8 with 2
subnets, -1.3 with 3; OFA lowers it after the full phase, which at CPU size left the subnets
worse: mnist1d, 1,280 samples, 8 epochs: mean subnet val acc 0.70 with 0.05 in every phase,
0.64 with 0.01 after the full phase).
"""


class OFAConfig(BaseModel):
    """How the elastic supernet is trained and how subnets are scored (CPU-sized defaults).

    Attributes:
        phases: the progressive-shrinking schedule, trained in order (at least one).
        batch_size, optimizer, lr, weight_decay, momentum, label_smoothing: the recipe (each
            phase restarts its optimizer and cosine schedule from its own peak ``lr``).
        grad_clip: max gradient norm per update (0: off).
        subnets_per_step: random subnets per step besides the largest net (and the smallest
            with ``sandwich``), in phases with elastic dimensions. 6 by default: in 14 epochs
            the subnets get too few updates otherwise (measured with :data:`DEFAULT_PHASES`:
            mean extracted-vs-scratch gap -2.0 points with 2, -1.2 with 3, -0.7 with 4 over 3
            seeds, +0.05 with 6 over 3; each subnet costs about one forward and backward
            of the largest net per step: 6 make the supernet about 2.2x as long to train as 2
            did with OFA's proportions).
        sandwich: BigNAS's sandwich rule: each step also trains the phase's smallest subnet
            (every elastic dimension at its smallest sampled choice), after the largest and
            before the ``subnets_per_step`` random ones. The smallest subnets are the ones
            weight sharing serves worst (measured: see :data:`DEFAULT_PHASES`; with OFA's
            proportions it closed the mean extracted-vs-scratch gap from -14.4 to -10.3).
        distill: weight of the distillation loss from the largest net (0: off).
        temperature: the distillation temperature T.
        bn_batches, bn_batch_size: training batches forwarded to recalibrate BN per evaluation.
        seed: weights init, batch order, subnets and calibration batches.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    phases: tuple[PhaseConfig, ...] = Field(DEFAULT_PHASES, min_length=1)
    batch_size: int = Field(64, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(4e-5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(5.0, ge=0)
    subnets_per_step: int = Field(6, ge=1)
    sandwich: bool = True
    distill: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    bn_batches: int = Field(4, ge=1)
    bn_batch_size: int = Field(128, ge=2)
    seed: int = 0

    @classmethod
    def from_options(cls, where: str, **options: Any) -> OFAConfig:
        """Build from config options.

        Raises:
            ConfigError: a bad field, named ``<where>.<field>`` (``ofa.train.phases.1.elastic.0``).
        """
        try:
            return cls(**options)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [str(p) for p in err["loc"]]
            msg = err["msg"].removeprefix("Value error, ")
            head, sep, rest = msg.partition(": ")
            if sep and head.split(".")[0] in PhaseConfig.model_fields:
                loc.append(head)  # the phase's validator names the field it refuses
                msg = rest
            field = ".".join(p for p in loc if p)
            raise ConfigError(f"{where}.{field}: {msg}") from None

    @property
    def total_epochs(self) -> int:
        """Epochs over all phases."""
        return sum(p.epochs for p in self.phases)

    @classmethod
    def no_shrinking(cls, cfg: OFAConfig) -> OFAConfig:
        """``cfg`` without progressive shrinking: one phase of all its epochs in which every
        dimension is elastic from the start (the baseline OFA compares against)."""
        phase = PhaseConfig(name="all", elastic=tuple(ELASTIC_DIMS), epochs=cfg.total_epochs)
        return cfg.model_copy(update={"phases": (phase,)})


@dataclass(frozen=True)
class OFAEpochRecord:
    """One training epoch.

    Attributes:
        epoch: index over all phases; phase, elastic: the phase's name and elastic dimensions.
        loss: mean loss of the sampled subnets (cross-entropy + distillation; the largest
            net's loss in a phase without elastic dimensions); teacher_loss: mean
            cross-entropy of the largest net.
        steps: updates; subnets: subnet forwards besides the largest; lr: at the epoch's end;
        seconds: wall-clock; world_size: the processes that trained it data-parallel (1:
        one process; the losses are the mean over them).
    """

    epoch: int
    phase: str
    elastic: list[str]
    loss: float
    teacher_loss: float
    steps: int
    subnets: int
    lr: float
    seconds: float
    world_size: int = 1


def _largest_first(dim: str, values: Sequence[Value]) -> tuple[Value, ...]:
    """``values`` from the largest to the smallest as
    :meth:`ElasticMobileSupernet.largest_arch` orders them (``act``: the space's order, whose
    first choice is the largest net's; ``se``: True first)."""
    if dim == "act":
        return tuple(values)
    return tuple(sorted(values, key=lambda v: float(v), reverse=True))  # type: ignore[arg-type]


class OFATrainer:
    """Trains the elastic supernet of ``space`` on ``dataset``'s train split with ``config``.

    Args:
        space: a ``mobile`` space (any other is a :class:`ConfigError`).
        dataset: train split for training and BN recalibration, validation for scoring.
        config: the recipe and the schedule.
        dist: the data-parallel job this rank is part of (default: the one
            :func:`nasforge.oneshot.distributed.init` joined; alone without torchrun).

    Call :meth:`step_epoch` (or :meth:`train`) to train, :meth:`accuracy` to score an arch,
    :meth:`extract` for its stand-alone net. The trainer owns the supernet (:attr:`supernet`);
    nothing else mutates it. The constructor seeds torch's global generator with
    ``config.seed`` to initialise the weights.

    Data parallel: build it after :func:`nasforge.oneshot.distributed.init` on every rank of
    the job and call
    :meth:`step_epoch` on all of them in lock step; :attr:`supernet` stays the plain module
    (checkpoints, evaluation), the DDP wrapper is :attr:`net`.

    Raises:
        ConfigError: data-parallel with ``batch_size`` below 2 samples per rank.
    """

    def __init__(
        self,
        space: MobileSpace,
        dataset: Dataset,
        config: OFAConfig,
        dist: distributed.DistContext | None = None,
    ) -> None:
        self.space, self.dataset, self.config = space, dataset, config
        self.dist = dist or distributed.current()
        if config.batch_size < 2 * self.dist.world_size:  # batch norm needs 2 samples a rank
            raise ConfigError(
                f"ofa.train.batch_size: {config.batch_size} is too small for "
                f"{self.dist.world_size} data-parallel processes; the global batch is split "
                f"among them: use at least {2 * self.dist.world_size}"
            )
        torch.manual_seed(config.seed)
        self.supernet = ElasticMobileSupernet(space)
        self._net: nn.Module | None = None  # the DDP wrapper, built at the first step
        self._choices = {
            label: _largest_first(elastic_dim(label), values)
            for label, values in choice_values(space).items()
        }
        self.largest = self.supernet.largest_arch()  # the teacher of every step
        self.steps_per_epoch = max(1, len(dataset.y_train) // config.batch_size)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.epoch = 0
        self.records: list[OFAEpochRecord] = []
        self.train_seconds = 0.0
        #: index of the phase whose optimizer is built (-1: none yet)
        self._opt_phase = -1
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._calib = calibration_batches(
            dataset.x_train, config.bn_batches, config.bn_batch_size, config.seed
        )

    # -- schedule -------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Whether all phases are trained."""
        return self.epoch >= self.config.total_epochs

    def phase_index(self, epoch: int) -> int:
        """The index of the phase that trains ``epoch`` (the last phase once done)."""
        end = 0
        for i, p in enumerate(self.config.phases):
            end += p.epochs
            if epoch < end:
                return i
        return len(self.config.phases) - 1

    @property
    def phase(self) -> PhaseConfig:
        """The phase of the next epoch (the last one once done)."""
        return self.config.phases[self.phase_index(self.epoch)]

    def _previous_trained(self, index: int) -> PhaseConfig | None:
        """The phase trained just before phase ``index`` (skipping phases of 0 epochs)."""
        for p in reversed(self.config.phases[:index]):
            if p.epochs > 0:
                return p
        return None

    def adds_expand(self, index: int) -> bool:
        """Whether phase ``index`` newly makes ``expand`` elastic: the phase trained just
        before it (skipping phases of 0 epochs) exists and keeps ``expand`` at its largest."""
        phase, before = self.config.phases[index], self._previous_trained(index)
        return "expand" in phase.elastic and before is not None and "expand" not in before.elastic

    def _build_optimizer(self, index: int) -> None:
        """The optimizer and cosine schedule (over its epochs) of phase ``index``."""
        cfg, phase = self.config, self.config.phases[index]
        lr = phase.lr if phase.lr is not None else cfg.lr
        params = [p for p in self.supernet.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, cfg.optimizer, lr, cfg.momentum, cfg.weight_decay)
        self.scheduler = cosine_schedule(self.optimizer, phase.epochs * self.steps_per_epoch)
        self._opt_phase = index

    # -- sampling -------------------------------------------------------------------------------
    def sample_arch(
        self,
        rng: np.random.Generator,
        elastic: Sequence[str],
        limit: Mapping[str, int] | None = None,
        smallest: bool = False,
    ) -> Arch:
        """A subnet: labels of the ``elastic`` dimensions drawn uniformly from ``rng`` (from
        their ``limit[dim]`` largest choices when given), all others at their largest value.

        With ``elastic=()`` this is the largest arch; with ``smallest`` every elastic label
        takes the last of its choices instead (the smallest; for ``act`` the space's last
        activation) and ``rng`` is not drawn from. Raises :class:`ConfigError` for a name
        that is not an elastic dimension.
        """
        for dim in elastic:
            if dim not in ELASTIC_DIMS:
                raise ConfigError(f"elastic dimension {dim!r}: expected one of {ELASTIC_DIMS}")
        limit = limit or {}
        vals: dict[str, Value] = {}
        for d in self.space.dimensions():
            if not d.active(vals):
                continue
            ordered = self._choices[d.label]
            dim = elastic_dim(d.label)
            if dim in elastic:
                pool = ordered[: limit.get(dim, len(ordered))]
                vals[d.label] = pool[-1] if smallest else pool[int(rng.integers(len(pool)))]
            else:
                vals[d.label] = ordered[0]
        return self.space.make(vals)

    # -- training -------------------------------------------------------------------------------
    def _seed(self, epoch: int) -> int:
        return self.config.seed * 100_003 + epoch

    @property
    def net(self) -> nn.Module:
        """The module the steps run: the supernet in DDP when data-parallel, else the supernet.
        Built on first use (a collective: DDP starts from rank 0's weights and buffers)."""
        if self._net is None:
            self._net = distributed.wrap(self.supernet, self.dist)
        return self._net

    def _accumulate(self, net: nn.Module, last: bool) -> AbstractContextManager[Any]:
        """The context of one forward + backward of a step: all but the step's ``last`` pass
        keep their gradients local (DDP's ``no_sync``); the last backward averages the sum."""
        no_sync = getattr(net, "no_sync", None)
        return nullcontext() if last or no_sync is None else no_sync()

    def step_epoch(self) -> OFAEpochRecord:
        """Train one epoch of the current phase and return (and keep) its record.

        Starts the phase first when the epoch is its first (see the module docstring).

        Raises:
            TrainingDiverged: a loss became NaN or infinite.
            RuntimeError: every epoch is trained already (:attr:`done`).
        """
        if self.done:
            raise RuntimeError(f"OFA training: all {self.config.total_epochs} epochs are trained")
        t0 = time.perf_counter()
        cfg, d = self.config, self.dataset
        index = self.phase_index(self.epoch)
        if index != self._opt_phase:  # the phase's first epoch
            if self.adds_expand(index):
                self.supernet.reorganize_channels()  # before the optimizer sees the weights
            self._build_optimizer(index)
        assert self.optimizer is not None and self.scheduler is not None  # built just above
        phase = cfg.phases[index]
        rng = np.random.default_rng(self._seed(self.epoch))
        gen = torch.Generator().manual_seed(self._seed(self.epoch))
        perm = torch.randperm(len(d.y_train), generator=gen)
        net = self.net
        net.train()
        n_sub = (cfg.subnets_per_step + cfg.sandwich) if phase.elastic else 0
        limit = {str(dim): n for dim, n in phase.choices.items()}
        t_sum, s_sum, subnets = 0.0, 0.0, 0
        temp = cfg.temperature
        for step in range(self.steps_per_epoch):
            batch = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            idx = distributed.shard(batch, self.dist)  # this rank's slice of the global batch
            xb, yb = d.x_train[idx], d.y_train[idx]
            self.optimizer.zero_grad(set_to_none=True)
            with self._accumulate(net, last=n_sub == 0):
                logits = net(xb, self.largest)
                loss = self.loss_fn(logits, yb)
                self._check(loss, step)
                loss.backward()
            t_sum += loss.item()
            teacher = F.softmax(logits.detach() / temp, dim=1)
            for k in range(n_sub):
                small = cfg.sandwich and k == 0
                arch = self.sample_arch(rng, phase.elastic, limit, smallest=small)
                with self._accumulate(net, last=k == n_sub - 1):
                    out = net(xb, arch)
                    loss = self.loss_fn(out, yb)
                    if cfg.distill > 0:
                        kd = F.kl_div(
                            F.log_softmax(out / temp, dim=1), teacher, reduction="batchmean"
                        )
                        loss = loss + cfg.distill * kd * temp * temp
                    self._check(loss, step)
                    loss.backward()  # gradients of the largest net and the subnets accumulate
                s_sum += loss.item()
                subnets += 1
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
        if self.dist.active:  # the record's losses: the mean over the ranks' shards
            sums = torch.tensor([t_sum, s_sum], dtype=torch.float64)
            distributed.all_reduce_mean_([sums], self.dist)
            t_sum, s_sum = float(sums[0]), float(sums[1])
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        teacher_loss = t_sum / self.steps_per_epoch
        record = OFAEpochRecord(
            self.epoch,
            phase.name,
            list(phase.elastic),
            s_sum / subnets if subnets else teacher_loss,
            teacher_loss,
            self.steps_per_epoch,
            subnets,
            float(self.optimizer.param_groups[0]["lr"]),
            seconds,
            self.dist.world_size,
        )
        self.records.append(record)
        self.epoch += 1
        return record

    def _check(self, loss: torch.Tensor, step: int) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"OFA loss became {loss.item()} at epoch {self.epoch} "
                f"(phase {self.phase.name!r}), step {step}"
            )

    def train(self, checkpoint: str | Path | None = None) -> list[OFAEpochRecord]:
        """Train the remaining epochs; with ``checkpoint``, save after every epoch."""
        while not self.done:
            self.step_epoch()
            if checkpoint is not None:
                self.save(checkpoint)
        return list(self.records)

    # -- evaluation -----------------------------------------------------------------------------
    def recalibrate(self, arch: Mapping[str, Any]) -> None:
        """Reset BN statistics and re-estimate them for ``arch`` on the fixed training batches."""
        self.space.validate(arch)
        recalibrate_bn(self.supernet, lambda x: self.supernet(x, arch), self._calib)

    def accuracy(self, arch: Mapping[str, Any], split: Literal["val", "test"] = "val") -> float:
        """Top-1 accuracy in [0, 1] of ``arch`` with inherited weights after BN recalibration
        (on ``split``; search uses ``val``)."""
        self.recalibrate(arch)
        x, y = (
            (self.dataset.x_val, self.dataset.y_val)
            if split == "val"
            else (self.dataset.x_test, self.dataset.y_test)
        )
        return evaluate_accuracy(BoundArch(self.supernet, arch), x, y)

    def extract(self, arch: Mapping[str, Any]) -> nn.Module:
        """The stand-alone net of ``arch`` (eval mode) with the inherited weights and BN
        recalibrated for it; shares no storage with the supernet."""
        self.recalibrate(arch)
        return self.supernet.extract(arch)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed trainer needs (tensors and plain values only)."""
        return {
            "config": self.config.model_dump(mode="json"),
            "epoch": self.epoch,
            "opt_phase": self._opt_phase,
            "supernet": self.supernet.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "records": [asdict(r) for r in self.records],
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the current phase's optimizer included).

        Raises:
            ConfigError: the checkpoint was trained with another recipe or schedule.
        """
        check_recipe(state["config"], self.config.model_dump(mode="json"), "OFA checkpoint")
        self.supernet.load_state_dict(state["supernet"])
        index = int(state["opt_phase"])
        self.optimizer, self.scheduler, self._opt_phase = None, None, -1
        if index >= 0:  # the weights are reorganized already: only the optimizer is rebuilt
            self._build_optimizer(index)
            assert self.optimizer is not None and self.scheduler is not None
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.records = [OFAEpochRecord(**r) for r in state["records"]]
        self.train_seconds = float(state["train_seconds"])

    def save(self, path: str | Path) -> None:
        """Write :meth:`state_dict` atomically (a temporary file, then a rename)."""
        save_state(self.state_dict(), path)

    def load(self, path: str | Path) -> None:
        """Read a checkpoint written by :meth:`save` (``weights_only``: no code is run).

        Raises:
            ConfigError: the file is not an OFA checkpoint of this recipe (names it).
        """
        self.load_state_dict(load_state(path, "OFA checkpoint", ("supernet", "opt_phase")))
