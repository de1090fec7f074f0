"""How a run shows the noise verdict of the latencies it measured.

The timing harness attaches a :class:`~nasforge.hardware.noise.Stability` verdict to every
measured latency and re-measures a pass that comes out unstable (issue 10). A figure that
stays unstable is never shown as a fact: a trial's measured latency carries the metric
:data:`~nasforge.evaluators.base.UNSTABLE_METRIC` (0/1) in the store, its reasons are kept in
the run's meta :data:`UNSTABLE_TRIALS_META` (trial id -> ``Stability.to_dict()``), and the
progress line, the card and the report mark it ``unstable: host busy (<reasons>)``. This
module holds the wording and the tallies, so the console, the log, the card and the report say
the same thing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from nasforge.evaluators.base import UNSTABLE_METRIC
from nasforge.experiment.store import TrialRecord, TrialStore
from nasforge.hardware.noise import UNSTABLE, Stability

#: store meta key: ``{str(trial_id): Stability.to_dict()}`` for each trial whose measured
#: latency stayed unstable (stable trials are not listed; their metric says 0)
UNSTABLE_TRIALS_META = "latency_unstable_trials"


def is_unstable(metrics: Mapping[str, Any]) -> bool:
    """Whether a trial's metrics mark its measured ``latency_ms`` as unstable."""
    flag = metrics.get(UNSTABLE_METRIC)
    return isinstance(flag, (int, float)) and flag >= 0.5


def latency_text(
    value_ms: float, stability: Stability | None = None, unstable: bool = False
) -> str:
    """``3.210 ms``, or ``3.210 ms (unstable: host busy (<reasons>))`` when the verdict (or,
    without one, ``unstable``) says the host was too busy to trust the figure."""
    text = f"{value_ms:.3f} ms"
    if stability is not None and not stability.stable:
        return f"{text} ({stability.label})"
    if unstable:
        return f"{text} ({UNSTABLE})"
    return text


def search_summary(
    trials: Iterable[TrialRecord], verdicts: Mapping[str, Any] | None
) -> dict[str, Any]:
    """How many finished trials had their latency measured, and how many of those stayed
    unstable (ids, and how often each reason was given).

    Args:
        trials: the run's trials (only those with :data:`UNSTABLE_METRIC` count as measured).
        verdicts: the store's :data:`UNSTABLE_TRIALS_META` (may be ``None``: reasons unknown).

    Returns:
        ``measured``, ``unstable``, ``unstable_trial_ids``, ``reasons`` (each kind of reason,
        its numbers written ``#``, -> in how many trials it was given) and ``examples`` (kind
        -> the first such reason, with its numbers).
    """
    verdicts = verdicts or {}
    measured = [t for t in trials if UNSTABLE_METRIC in t.metrics]
    bad = [t.id for t in measured if is_unstable(t.metrics)]
    reasons: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for tid in bad:
        for reason in (verdicts.get(str(tid)) or {}).get("reasons", ()):
            kind = reason_kind(str(reason))
            reasons[kind] += 1
            examples.setdefault(kind, str(reason))
    return {
        "measured": len(measured),
        "unstable": len(bad),
        "unstable_trial_ids": bad,
        "reasons": dict(reasons.most_common()),
        "examples": examples,
    }


def reason_kind(reason: str) -> str:
    """A reason without its numbers, so that equal causes are counted together
    (``other processes used 1.3 of 2 CPUs ...`` -> ``other processes used # of # CPUs ...``)."""
    return re.sub(r"\d+(?:\.\d+)?", "#", reason)


def summary_text(summary: Mapping[str, Any]) -> str:
    """One line for the console and the log; empty when no measured latency was unstable."""
    if not summary.get("unstable"):
        return ""
    ids = summary.get("unstable_trial_ids") or []
    shown = ", ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
    examples = summary.get("examples") or {}
    why = "; ".join(
        f"in {n} trials, e.g. {examples.get(kind, kind)}"
        if n > 1
        else f"in 1 trial: {examples.get(kind, kind)}"
        for kind, n in (summary.get("reasons") or {}).items()
    )
    return (
        f"warning: {summary['unstable']} of {summary['measured']} trials' measured latencies "
        f"are {UNSTABLE} (trials {shown})"
        + (f": {why}" if why else "")
        + "; their latency_ms is not a trustworthy figure"
    )


def card_stability(card: Mapping[str, Any]) -> Stability | None:
    """The final latency's verdict from a card (``None`` for a card without one)."""
    d = card.get("latency_stability")
    return Stability.from_dict(d) if isinstance(d, dict) else None


def record_trial_verdict(
    store: TrialStore, trial_id: int, latency_ms: float, verdict: Mapping[str, Any] | None
) -> Stability:
    """Keep an unstable trial's verdict in the store (meta :data:`UNSTABLE_TRIALS_META` and
    one ``latency_unstable`` event); returns it (reasons unknown: a bare unstable verdict)."""
    stability = Stability.from_dict(dict(verdict)) if verdict else Stability()
    if stability.stable:  # the metric said unstable but the evaluator gave no verdict
        stability = Stability(stable=False, reasons=("no reasons reported",))
    known = dict(store.get_meta(UNSTABLE_TRIALS_META, None) or {})
    known[str(trial_id)] = stability.to_dict()
    store.set_meta(UNSTABLE_TRIALS_META, known)
    store.log_event(
        "latency_unstable", f"trial {trial_id}: latency {latency_text(latency_ms, stability)}"
    )
    return stability


def trial_latency_text(trial: TrialRecord, stability: Stability | None = None) -> str:
    """A finished trial's latency for a progress line: ``latency_ms 3.21``, with
    `` (unstable: host busy (<reasons>))`` when its measurement stayed unstable."""
    value = trial.metrics.get("latency_ms")
    if not isinstance(value, (int, float)):
        return ""
    text = f"latency_ms {value:.4g}"
    if not is_unstable(trial.metrics):
        return text
    known = stability is not None and not stability.stable
    return f"{text} ({stability.label if stability is not None and known else UNSTABLE})"
