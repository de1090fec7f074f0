"""Training one trial of a multi-fidelity search as a rung that continues its lower one.

The part of an evaluator that trains: :func:`train_rung` plans the trial's rung (the top
budget's schedule, the checkpoint fingerprint), loads the newest usable lower checkpoint of
the same configuration, trains the difference and saves where it stopped
(:mod:`~nasforge.evaluators.rung_checkpoint`). Shared by the train evaluator and the
compressed evaluator, so a compressed trial's training continues exactly as a plain trial's
does; what an evaluator does with the trained model afterwards (score it, compress it) is
its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nasforge.evaluators.base import Fidelity, Reporter, StopTrial
from nasforge.evaluators.rung_checkpoint import (
    BUDGET_STARTED_FROM,
    RungCheckpoints,
    RungPolicy,
    RungStart,
    fingerprint,
)
from nasforge.space import Arch
from nasforge.space.joint import COMPRESS_PREFIX
from nasforge.train import LoopState, TrainConfig, TrainSpan, train_model


@dataclass(frozen=True)
class Rung:
    """A multi-fidelity trial's training: the schedule's length, where its checkpoints go
    (``None``: none), the fingerprint a checkpoint must match and the key its checkpoints
    are filed under."""

    schedule_epochs: int
    store: RungCheckpoints | None
    fingerprint: str
    key: str = ""


@dataclass(frozen=True)
class RungRun:
    """What :func:`train_rung` did: this trial's validation curve (its own epochs only),
    the model's whole curve from epoch 1 (a continued checkpoint's epochs first), whether
    the reporter stopped it, the epoch it started from (0: scratch), its rung (``None``: a
    plain trial) and the checkpoint it continued (``None``: none)."""

    curve: list[float]
    whole: list[float]
    stopped: bool
    started: int
    rung: Rung | None
    start: RungStart | None

    def trained_all(self, epochs: int) -> bool:
        """Whether the last point of :attr:`curve` is the model's accuracy after ``epochs``
        (it trained to the end, at least one epoch)."""
        return (
            not self.stopped and epochs > self.started and len(self.curve) == epochs - self.started
        )

    def record(self, metrics: dict[str, float], info: dict[str, Any]) -> None:
        """Add the rung's fields to a trial's ``metrics`` (``budget_started_from``) and
        ``info`` (``epochs_trained``, ``schedule_epochs``, ``continued_from``); nothing for
        a plain trial."""
        if self.rung is None:
            return
        metrics[BUDGET_STARTED_FROM] = float(self.started)
        info["epochs_trained"] = [self.started, self.started + len(self.curve)]
        info["schedule_epochs"] = self.rung.schedule_epochs
        if self.start is not None:
            info["continued_from"] = str(self.start.path)


def plan_rung(
    policy: RungPolicy | None,
    store: RungCheckpoints | None,
    arch: Arch,
    cfg: TrainConfig,
    budget: Fidelity | float | None,
    fraction: float,
    samples: int,
) -> Rung | None:
    """How a trial of ``arch`` trains as a rung: ``None`` for a plain budget or no policy
    (as before); a rung on the top budget's schedule, with ``store`` when continuing is on
    (its checkpoints filed under ``arch.key`` with ``arch``'s fingerprint)."""
    if policy is None or not isinstance(budget, Fidelity):
        return None
    if not policy.enabled or cfg.epochs > policy.max_epochs:
        return Rung(cfg.epochs, None, "")  # its own schedule, from scratch
    fp = fingerprint(arch, cfg, policy.max_epochs, fraction, samples)
    return Rung(policy.max_epochs, store, fp, arch.key)


def training_arch(space: Any, arch: Arch) -> Arch:
    """``arch`` without its ``compress/`` labels (keyed by ``space``'s canonical form): the
    configuration a compressed trial's *training* depends on. Its rung checkpoint is the
    float model before compression, identical for every compression setting, so
    configurations that differ only in how they are compressed share it."""
    values = {k: v for k, v in arch.items() if not k.startswith(COMPRESS_PREFIX)}
    if len(values) == len(arch):
        return arch
    canonical = getattr(space, "canonical_form", lambda _values: None)(values)
    return Arch(values, canonical=canonical)


def continue_rung(rung: Rung, epochs: int, model: torch.nn.Module) -> RungStart | None:
    """Load the newest usable checkpoint of ``rung.key`` at ``epochs`` or fewer into
    ``model`` (its fresh, seeded build); ``None``: train from scratch."""
    if rung.store is None:
        return None
    start = rung.store.find(rung.key, epochs, rung.fingerprint)
    if start is None:
        return None
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(start.model)
    except RuntimeError as exc:  # the space builds it otherwise now: scratch, said once
        model.load_state_dict(fresh)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        rung.store.note(f"{start.path}: does not fit the model ({first}); not continued")
        return None
    return start


def train_rung(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    val: tuple[torch.Tensor, torch.Tensor],
    reporter: Reporter | None,
    rung: Rung | None,
    owner: str | None = None,
) -> RungRun:
    """Train ``model`` (a fresh, seeded build) for ``cfg.epochs``: as ``rung`` says
    (:func:`plan_rung`: continue its newest usable checkpoint, train the difference on the
    top budget's schedule, save where it stopped) or, with ``rung`` ``None``, from scratch
    on its own schedule. The checkpoint is saved as soon as training ends, before the
    caller changes the model; the top rung keeps none (no rung continues from it). A
    continued checkpoint's epochs go to ``reporter.replay`` before the new ones
    (:func:`replay_carried`); only the new ones are judged (``reporter(...)``).

    ``owner``: the trial's own arch key when ``rung.key`` is a training configuration that
    several configurations share (the compressed evaluator: the same network and recipe,
    other compression settings). A shared key's checkpoints are claimed by each owner that
    saved them; an owner's top rung gives up its claim and removes them only when no other
    owner holds one (:meth:`RungCheckpoints.release`)."""
    epochs = cfg.epochs
    start = continue_rung(rung, epochs, model) if rung is not None else None
    span = None
    if rung is not None:
        span = TrainSpan(rung.schedule_epochs, None if start is None else start.state)
    if start is not None and reporter is not None:
        replay_carried(reporter, start.curve)
    curve, stopped, state = train_span(model, x, y, cfg, val, reporter, span)
    started = start.epoch if start is not None else 0
    # the model's whole curve from epoch 1: the checkpoint's epochs, then this trial's
    whole = [*start.curve, *curve] if start is not None and start.curve else curve
    if rung is not None and rung.store is not None and state is not None and not stopped:
        keep = epochs < rung.schedule_epochs
        if owner is None or keep:
            rung.store.save(rung.key, model, state, rung.fingerprint, keep=keep, curve=whole)
        if owner is not None:
            if keep:
                rung.store.claim(rung.key, owner)
            else:  # other configurations may still continue the shared checkpoints
                rung.store.release(rung.key, owner)
    return RungRun(curve, whole, stopped, started, rung, start)


def replay_carried(reporter: Any, curve: Sequence[float]) -> None:
    """Hand a continued checkpoint's curve (epochs ``0..k-1`` from its start, ``val_acc``
    only) to ``reporter.replay`` before the trial's own epochs: a live curve then starts at
    epoch 1, while a stopper (whose ``replay`` does nothing) judges only the new epochs. A
    plugin's reporter without ``replay`` (a plain callable) is not called for them."""
    replay = getattr(reporter, "replay", None)
    if not callable(replay):
        return
    for step, value in enumerate(curve):
        replay(step, {"val_acc": float(value)})


def train_span(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    val: tuple[torch.Tensor, torch.Tensor],
    reporter: Reporter | None = None,
    span: TrainSpan | None = None,
) -> tuple[list[float], bool, LoopState | None]:
    """Train ``model`` in place, reporting every epoch's ``loss`` and ``val_acc`` to
    ``reporter``; ``(validation accuracy per epoch, stopped early by the reporter, where the
    run stopped)``. With a :class:`TrainSpan` it trains a part of a longer run; the state
    is ``None`` without a span, or when the reporter stopped it."""
    curve: list[float] = []

    def report(epoch: int, values: dict[str, float]) -> None:
        curve.append(float(values.get("val_acc", float("nan"))))
        if reporter is not None:
            reporter(epoch, values)

    try:
        hist = train_model(model, x, y, cfg, val[0], val[1], reporter=report, span=span)
    except StopTrial:
        return curve, True, None
    return curve, False, hist.state
