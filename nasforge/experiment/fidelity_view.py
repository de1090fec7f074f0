"""Which trials of a multi-fidelity run count as finished evaluations (issue 15).

A multi-fidelity strategy evaluates one configuration at growing budgets; each evaluation is
its own trial row, whose metrics carry the budget (:data:`BUDGET_EPOCHS`,
:data:`BUDGET_FRACTION`) and the rung (:data:`RUNG`). The final model, the summary's best
and the report's ranking come from the highest budget reached, never from a cheaper rung
whose score is not comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def budget_of(metrics: dict[str, Any]) -> tuple[float, float] | None:
    """``(epochs, fraction)`` of a multi-fidelity trial's metrics, ``None`` for a plain one."""
    if BUDGET_EPOCHS not in metrics and BUDGET_FRACTION not in metrics:
        return None
    return float(metrics.get(BUDGET_EPOCHS, float("inf"))), float(
        metrics.get(BUDGET_FRACTION, 1.0)
    )


def full_fidelity(trials: Sequence[Any]) -> list[Any]:
    """The trials (records with ``.metrics``) at the highest budget any of them reached;
    all of them when none carries a budget (a plain search)."""
    budgets = [budget_of(t.metrics or {}) for t in trials]
    known = [b for b in budgets if b is not None]
    if not known:
        return list(trials)
    top = max(known)
    return [t for t, b in zip(trials, budgets, strict=True) if b is None or b == top]
