"""Which trials of a multi-fidelity run count as finished evaluations (issue 15).

A multi-fidelity strategy evaluates one configuration at growing budgets; each evaluation is
its own trial row, whose metrics carry the budget (:data:`BUDGET_EPOCHS`,
:data:`BUDGET_FRACTION`) and the rung (:data:`RUNG`). The final model, the summary's best
and the report's ranking come from the highest budget reached, never from a cheaper rung
whose score is not comparable.

A promoted trial continues its lower rung's checkpoint (:mod:`nasforge.evaluators.
rung_checkpoint`): its metrics say the epoch it started from (:data:`BUDGET_STARTED_FROM`)
and its cost is the increment. :func:`~nasforge.experiment.setup.rung_policy` turns a config
into the train evaluator's :class:`~nasforge.evaluators.rung_checkpoint.RungPolicy`;
:func:`discard_finished_rungs` removes the checkpoints of configurations the strategy has
finished with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nasforge.evaluators.rung_checkpoint import (
    BUDGET_STARTED_FROM,
    RungCheckpoints,
)

#: the epochs a trial was trained for (a multi-fidelity trial's budget)
BUDGET_EPOCHS = "budget_epochs"
#: the fraction of the training split a trial was trained on (1.0: all of it)
BUDGET_FRACTION = "budget_fraction"
#: the rung of a multi-fidelity trial (0: the smallest budget)
RUNG = "rung"
#: the Hyperband bracket of a multi-fidelity trial
BRACKET = "bracket"
#: the strategy's id of the configuration (equal across its rungs)
CONFIG_ID = "config_id"

__all__ = [
    "BRACKET",
    "BUDGET_EPOCHS",
    "BUDGET_FRACTION",
    "BUDGET_STARTED_FROM",
    "CONFIG_ID",
    "RUNG",
    "budget_of",
    "discard_finished_rungs",
    "full_fidelity",
    "rung_start_text",
]


def budget_of(metrics: dict[str, Any]) -> tuple[float, float] | None:
    """``(epochs, fraction)`` of a multi-fidelity trial's metrics, ``None`` for a plain one."""
    if BUDGET_EPOCHS not in metrics and BUDGET_FRACTION not in metrics:
        return None
    return float(metrics.get(BUDGET_EPOCHS, float("inf"))), float(metrics.get(BUDGET_FRACTION, 1.0))


def full_fidelity(trials: Sequence[Any]) -> list[Any]:
    """The trials (records with ``.metrics``) at the highest budget any of them reached;
    all of them when none carries a budget (a plain search)."""
    budgets = [budget_of(t.metrics or {}) for t in trials]
    known = [b for b in budgets if b is not None]
    if not known:
        return list(trials)
    top = max(known)
    return [t for t, b in zip(trials, budgets, strict=True) if b is None or b == top]


def rung_start_text(metrics: dict[str, Any]) -> str:
    """For the trial's progress line: ``", from epoch 3"`` for a trial that continued a
    checkpoint, ``", from scratch"`` for a promoted one that could not (none on this node,
    damaged, or ``continue_rungs: false``), ``""`` otherwise (a plain trial, rung 0)."""
    started = metrics.get(BUDGET_STARTED_FROM)
    if not isinstance(started, (int, float)):
        return ""
    if started > 0:
        return f", from epoch {int(started)}"
    return ", from scratch" if float(metrics.get(RUNG, 0.0)) > 0 else ""


def discard_finished_rungs(run_dir: str | Path, strategy: Any) -> int:
    """Delete the rung checkpoints of configurations ``strategy`` has finished with (a search's
    end; its :meth:`~nasforge.strategies.fidelity_base.FidelityStrategy.live_keys`); keeps
    them all when it cannot tell. Returns how many configurations' checkpoints went."""
    live = getattr(strategy, "live_keys", lambda: None)()
    if live is None:
        return 0
    return RungCheckpoints(run_dir).discard_except(set(live))
