"""Budgets and rungs of the multi-fidelity strategies (see :mod:`nasforge.strategies.fidelity`).

The ladder of budgets (:class:`Ladder`), the record of one configuration, and the schedulers
that decide promotions; the strategy keeps the configurations and the Optuna study.

* :class:`PrunerScheduler`: Optuna's pruner decides as each result arrives (asynchronous:
  ASHA with ``SuccessiveHalvingPruner``, asynchronous Hyperband with ``HyperbandPruner``).
* :class:`SyncScheduler`: synchronous successive halving in brackets, as in the successive
  halving and Hyperband papers. Written by hand: Optuna's pruners decide each trial when it
  reports, against whatever reached the rung before it, and cannot wait for a whole rung.

Protocol (called by the strategy): :meth:`pick` proposes the next slot ``(config_id or None
for a new configuration, rung, bracket)`` or ``None`` (wait); :meth:`claim` records that the
slot was asked; :meth:`claimable` says whether a replayed request fits the schedule;
:meth:`result` takes a finished rung's value (``None``: failed) and returns the verdicts
``(config_id, "complete" | "pruned" | "failed")`` of configurations that end now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nasforge.space import Arch
from nasforge.strategies.base import Score
from nasforge.strategies.fidelity_base import TrialRequest

RESOURCES = ("epochs", "data_fraction")
Slot = tuple[int | None, int, int]
Verdicts = list[tuple[int, str]]


@dataclass(frozen=True)
class Ladder:
    """The budgets of the rungs: rung ``k`` trains ``epochs[k]`` epochs on ``fractions[k]``
    of the training split; Optuna sees rung ``k``'s score at step ``eta**k``."""

    epochs: tuple[int, ...]
    fractions: tuple[float, ...]
    eta: int

    @property
    def top(self) -> int:
        """The highest rung (full fidelity)."""
        return len(self.epochs) - 1

    def step(self, rung: int) -> int:
        return int(self.eta**rung)

    def rung_of(self, epochs: int, fraction: float) -> int | None:
        for k, (e, f) in enumerate(zip(self.epochs, self.fractions, strict=True)):
            if e == int(epochs) and math.isclose(f, float(fraction), rel_tol=1e-6):
                return k
        return None


def _levels(ratio: float, eta: int) -> int:
    """``floor(log_eta(ratio))`` without floating-point surprises at exact powers."""
    k = 0
    while eta ** (k + 1) <= ratio * (1 + 1e-9):
        k += 1
    return k


def make_ladder(
    resource: str, min_epochs: int, max_epochs: int, min_fraction: float, eta: int
) -> Ladder:
    """Hyperband's budgets ``R * eta**-i`` (top = the maximum), rounded to whole epochs."""
    if resource == "epochs":
        k = _levels(max_epochs / min_epochs, eta)
        epochs = tuple(
            max(min_epochs, math.floor(max_epochs * float(eta) ** (i - k) + 0.5))
            for i in range(k + 1)
        )
        return Ladder(epochs, (1.0,) * (k + 1), eta)
    k = _levels(1.0 / min_fraction, eta)
    fractions = tuple(round(float(eta) ** (i - k), 6) for i in range(k + 1))
    return Ladder((max_epochs,) * (k + 1), fractions, eta)


@dataclass
class FidelityConfig:
    """One configuration: its arch, Optuna trial and the scores of the rungs it ran."""

    config_id: int
    arch: Arch
    trial: Any  # optuna.trial.Trial (live: reports and should_prune go through it)
    bracket: int
    scores: dict[int, Score] = field(default_factory=dict)


def request_to_json(request: TrialRequest) -> dict[str, Any]:
    return {
        "arch": request.arch.to_json(),
        "epochs": request.epochs,
        "data_fraction": request.data_fraction,
        "rung": request.rung,
        "bracket": request.bracket,
        "config_id": request.config_id,
    }


def request_from_json(data: dict[str, Any]) -> TrialRequest:
    return TrialRequest(
        arch=Arch.from_json(data["arch"]),
        epochs=int(data["epochs"]),
        data_fraction=float(data["data_fraction"]),
        rung=int(data["rung"]),
        bracket=int(data["bracket"]),
        config_id=int(data["config_id"]),
    )


class PrunerScheduler:
    """Promotions by the study's Optuna pruner (``trial.should_prune()`` after each report).

    A configuration that is not pruned is promoted to the next rung at once; promoted ones
    are asked before new configurations, the highest rung first (ASHA's order). Every new
    configuration starts at rung 0; nothing ever waits.
    """

    def __init__(self, top: int) -> None:
        self.top = top
        self.promotions: list[tuple[int, int]] = []  # (rung, config_id), arrival order

    def pick(self) -> Slot:
        if self.promotions:
            rung, config_id = max(self.promotions, key=lambda p: p[0])  # first of the highest
            return config_id, rung, 0
        return None, 0, 0

    def claimable(self, config_id: int, rung: int, bracket: int) -> bool:
        return rung == 0 or (rung, config_id) in self.promotions

    def claim(self, config_id: int, rung: int, bracket: int) -> None:
        if (rung, config_id) in self.promotions:
            self.promotions.remove((rung, config_id))

    def result(self, config: FidelityConfig, rung: int, value: float | None) -> Verdicts:
        if value is None:
            return [(config.config_id, "failed")]
        if rung >= self.top:
            return [(config.config_id, "complete")]
        if config.trial.should_prune():
            return [(config.config_id, "pruned")]
        self.promotions.append((rung + 1, config.config_id))
        return []

    def done(self) -> bool:
        return False


@dataclass
class Bracket:
    """One synchronous successive-halving ladder: ``sizes[i]`` configurations at rung
    ``start + i``; :attr:`step` is the position on it."""

    index: int
    start: int
    sizes: tuple[int, ...]
    step: int = 0
    members: list[int] = field(default_factory=list)  # asked at the current step
    queue: list[int] = field(default_factory=list)  # promoted to the current step, not asked
    results: dict[int, float | None] = field(default_factory=dict)
    finished: bool = False

    @property
    def rung(self) -> int:
        return self.start + self.step

    def open_slot(self) -> bool:
        return self.step == 0 and len(self.members) < self.sizes[0]

    def complete(self) -> bool:
        return (
            not self.queue
            and len(self.results) == len(self.members)
            and (self.step > 0 or len(self.members) == self.sizes[0])
        )


def hyperband_bracket(index: int, top: int, eta: int) -> Bracket:
    """Bracket ``index`` of Hyperband (Li et al. 2018, Algorithm 1) on a ladder of
    ``top + 1`` rungs: ``s = s_max - index mod (s_max + 1)`` halvings, starting with
    ``ceil((s_max + 1) / (s + 1) * eta**s)`` configurations at rung ``s_max - s``."""
    s = top - index % (top + 1)
    n = math.ceil((top + 1) * eta**s / (s + 1))
    return Bracket(index, top - s, tuple(n // eta**i for i in range(s + 1)))


def halving_bracket(n_configs: int, top: int, eta: int) -> Bracket:
    """One successive-halving ladder over all rungs, ``n_configs`` at rung 0."""
    return Bracket(0, 0, tuple(max(1, n_configs // eta**i) for i in range(top + 1)))


class SyncScheduler:
    """Synchronous successive halving: a rung promotes its top ``1/eta`` (failed ones never)
    when all its members reported. With ``repeat`` (Hyperband) brackets follow each other
    forever; a bracket waiting for its rung lets the next one start."""

    def __init__(self, top: int, eta: int, n_configs: int | None = None) -> None:
        self.top = top
        self.eta = eta
        self.n_configs = n_configs  # None: Hyperband's brackets, repeated
        self.brackets: list[Bracket] = []

    def _open(self) -> Bracket:
        index = len(self.brackets)
        if self.n_configs is not None:
            bracket = halving_bracket(self.n_configs, self.top, self.eta)
        else:
            bracket = hyperband_bracket(index, self.top, self.eta)
        self.brackets.append(bracket)
        return bracket

    def _bracket(self, index: int) -> Bracket | None:
        if self.n_configs is not None and index > 0:
            return None
        while len(self.brackets) <= index:
            self._open()
        return self.brackets[index]

    def pick(self) -> Slot | None:
        for b in self.brackets:
            if b.finished:
                continue
            if b.queue:
                return b.queue[0], b.rung, b.index
            if b.open_slot():
                return None, b.rung, b.index
        if self.n_configs is not None and self.brackets:
            return None  # one ladder: wait for its rung (or it is done)
        b = self._open()
        return None, b.rung, b.index

    def claimable(self, config_id: int, rung: int, bracket: int) -> bool:
        b = self._bracket(bracket)
        if b is None or b.finished or rung != b.rung:
            return False
        return config_id in b.queue or (b.open_slot() and config_id not in b.members)

    def claim(self, config_id: int, rung: int, bracket: int) -> None:
        b = self.brackets[bracket]
        if config_id in b.queue:
            b.queue.remove(config_id)
        b.members.append(config_id)

    def result(self, config: FidelityConfig, rung: int, value: float | None) -> Verdicts:
        b = self.brackets[config.bracket]
        b.results[config.config_id] = value
        verdicts: Verdicts = []
        if value is None:
            verdicts.append((config.config_id, "failed"))
        elif rung >= self.top:
            verdicts.append((config.config_id, "complete"))
        if not b.complete():
            return verdicts
        if b.step == len(b.sizes) - 1:
            b.finished = True
            return verdicts
        ranked = sorted(
            ((v, c) for c, v in b.results.items() if v is not None), key=lambda e: (-e[0], e[1])
        )
        keep = [c for _, c in ranked[: b.sizes[b.step + 1]]]
        verdicts += [(c, "pruned") for _, c in ranked[len(keep) :]]
        b.step += 1
        b.members, b.results, b.queue = [], {}, keep
        b.finished = not keep
        return verdicts

    def done(self) -> bool:
        return self.n_configs is not None and bool(self.brackets) and self.brackets[0].finished
