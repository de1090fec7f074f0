"""How a run shows the noise verdict of the latencies it measured.

The timing harness attaches a :class:`~nasforge.hardware.noise.Stability` verdict to every
measured latency and re-measures a pass that comes out unstable (issue 10). A figure that
stays unstable is never shown as a fact: a trial's measured latency carries the metric
:data:`~nasforge.evaluators.base.UNSTABLE_METRIC` (0/1) in the store, its reasons are kept in
the run's meta :data:`UNSTABLE_TRIALS_META` (trial id -> ``Stability.to_dict()``) and in the
journal of finished trials (:mod:`~nasforge.experiment.store_journal`: a replayed or repaired
store gets them back), and the progress line, the card and the report mark it
``unstable: host busy (<reasons>)``. This module holds the wording and the tallies, so the
console, the log, the card and the report say the same thing.

A search that *predicts* latency ranks every candidate by a latency table, and the table has
its own verdict (trust / do not trust / cannot tell,
:func:`~nasforge.hardware.trust.table_verdict`). Before, "cannot tell" reached the user only as
a console warning at the start. :func:`table_verdict_record` keeps that verdict with the run
(meta :data:`TABLE_VERDICT_META`: the table's path, its verdict and reasons, the held-out
figures it rests on, the machine the table was built on and this one), so the report shows it
next to the latency figures and can be written again later, on any machine, unchanged.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from nasforge.evaluators.base import UNSTABLE_METRIC
from nasforge.experiment.store import TrialRecord, TrialStore
from nasforge.experiment.store_journal import UNSTABLE_TRIALS_META as UNSTABLE_TRIALS_META
from nasforge.hardware.fingerprint import DeviceFingerprint, device_fingerprint
from nasforge.hardware.noise import UNSTABLE, Stability
from nasforge.hardware.table import LatencyTable, TableError
from nasforge.hardware.trust import TRUST, TableVerdict, table_verdict

if TYPE_CHECKING:
    from nasforge.hardware.model import LatencyModel

# UNSTABLE_TRIALS_META, the store meta key: ``{str(trial_id): Stability.to_dict()}`` for each
# trial whose measured latency stayed unstable (stable trials are not listed; their metric says
# 0); defined beside the journal, which carries the same verdicts
#: store meta key: the verdict of the latency table a ``predict`` search ranked by
#: (:func:`table_verdict_record`)
TABLE_VERDICT_META = "latency_table_verdict"
#: when a verdict was taken: as the search began, or (a run whose start did not record it)
#: when its report was first written, on the machine that ran the search
JUDGED_AT_START = "at the start of the search"
JUDGED_AT_REPORT = "when the report was first written"


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
    """Keep a finished unstable trial's verdict: in the journal first (with the trial's
    record, :meth:`TrialStore.journal_stability`), then in the store (meta
    :data:`UNSTABLE_TRIALS_META` and one ``latency_unstable`` event); returns it (reasons
    unknown: a bare unstable verdict)."""
    stability = Stability.from_dict(dict(verdict)) if verdict else Stability()
    if stability.stable:  # the metric said unstable but the evaluator gave no verdict
        stability = Stability(stable=False, reasons=("no reasons reported",))
    store.journal_stability(trial_id, stability.to_dict())
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


# -- the latency table's verdict (predict mode) --------------------------------------------------
def table_verdict_record(
    table: LatencyTable, verdict: TableVerdict, allowed: bool, judged: str = JUDGED_AT_START
) -> dict[str, Any]:
    """What a run keeps of the verdict of the table it predicts latency from (JSON).

    Args:
        table: the table the search predicts from.
        verdict: its verdict for the statistic and aggregation the predictions use.
        allowed: the config's ``latency.allow_untrusted_table``.
        judged: when the verdict was taken (:data:`JUDGED_AT_START` or
            :data:`JUDGED_AT_REPORT`).

    Returns:
        ``table`` (path), ``table_created``, ``status`` / ``label`` (the verdict in words),
        ``verdict`` (:meth:`TableVerdict.to_dict`: reasons, notes, the figures it rests on and
        where they come from), ``held_out`` (the build's own held-out score for the
        predictions' ``statistic/aggregation``, or ``None``), ``built_on`` / ``this_host``
        (each ``{"host", "summary"}``), ``allowed_untrusted``, ``judged`` and ``judged_time``.
    """
    built = DeviceFingerprint.from_dict(table.fingerprint)
    here = device_fingerprint(table.backend.threads)
    held = (table.accuracy or {}).get(verdict.key)
    return {
        "table": str(table.path) if table.path else None,
        "table_created": table.created,
        "status": verdict.status,
        "label": verdict.label,
        "verdict": verdict.to_dict(),
        "held_out": dict(held) if isinstance(held, Mapping) else None,
        "built_on": {"host": built.hostname, "summary": built.summary()},
        "this_host": {"host": here.hostname, "summary": here.summary()},
        "allowed_untrusted": bool(allowed),
        "judged": judged,
        "judged_time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def record_table_verdict(
    store: TrialStore, latency: LatencyModel | None, allowed: bool
) -> dict[str, Any] | None:
    """Keep the verdict of the table ``latency`` predicts from in the run's store (meta
    :data:`TABLE_VERDICT_META` and one ``latency_table`` event) and return it; ``None`` (and
    nothing stored) when ``latency`` does not predict from a table. Call it once the store is
    open, before the first trial: the verdict is the one the search ran under."""
    if latency is None or latency.predictor is None or latency.verdict is None:
        return None
    record = table_verdict_record(latency.predictor.table, latency.verdict, allowed)
    store.set_meta(TABLE_VERDICT_META, record)
    store.log_event("latency_table", table_verdict_text(record))
    return record


def run_table_verdict(store: TrialStore, latency: Any) -> dict[str, Any] | None:
    """The run's table verdict for its report: the one stored (:func:`record_table_verdict`),
    else, for a run that predicts from a table, taken now (:data:`JUDGED_AT_REPORT`) and
    stored, so every later report shows the same one; ``None`` when the run predicts nothing.

    Args:
        store: the run's store.
        latency: the run's validated ``latency`` section (``mode``, ``table``, ``statistic``,
            ``allow_untrusted_table``).

    A table that can no longer be read gives ``{"table", "status": "unknown", "label"}``
    (not stored: a later report may read it again).
    """
    stored = store.get_meta(TABLE_VERDICT_META)
    if isinstance(stored, Mapping):
        return dict(stored)
    if getattr(latency, "mode", None) != "predict" or not getattr(latency, "table", None):
        return None
    try:
        table = LatencyTable.load(latency.table, warn=False)
    except TableError as exc:
        why = str(exc).splitlines()[0]
        return {"table": str(latency.table), "status": "unknown", "label": f"unknown ({why})"}
    # the statistic and aggregation LatencyModel's predictor uses (its ``auto`` mode)
    verdict = table_verdict(table, statistic=latency.statistic)
    allowed = bool(getattr(latency, "allow_untrusted_table", False))
    record = table_verdict_record(table, verdict, allowed, JUDGED_AT_REPORT)
    store.set_meta(TABLE_VERDICT_META, record)
    return record


def _fraction(value: Any) -> str:
    ok = isinstance(value, (int, float)) and not math.isnan(value)
    return f"{100 * value:.0f}%" if ok else "-"


def _figure(value: Any, fmt: str) -> str:
    ok = isinstance(value, (int, float)) and not math.isnan(value)
    return format(value, fmt) if ok else "-"


def table_evidence_text(record: Mapping[str, Any]) -> str:
    """The figures a verdict rests on: ``validation: 85% of 20 models within +-10%, MAPE
    4.1%, Kendall tau 0.91 (min/sum)``, or ``no accuracy figures``."""
    v = record.get("verdict") or {}
    if not v.get("n"):
        return "no accuracy figures"
    source = {"held-out": "held-out at build"}.get(str(v.get("source")), str(v.get("source")))
    return (
        f"{source}: {_fraction(v.get('within_10pct'))} of {v['n']} models within +-10%, MAPE "
        f"{_figure(v.get('mape'), '.1f')}%, Kendall tau {_figure(v.get('kendall_tau'), '.2f')} "
        f"({v.get('key', '')})"
    )


def table_verdict_text(record: Mapping[str, Any]) -> str:
    """One line for the log, the events and the report: the table, its verdict, the figures
    and, when they differ, the machines."""
    text = f"latency table {record.get('table')}: {record.get('label')}"
    if "verdict" not in record:
        return text
    text += f"; {table_evidence_text(record)}"
    built, here = record.get("built_on") or {}, record.get("this_host") or {}
    if (record.get("verdict") or {}).get("mismatches"):
        text += f"; built on {built.get('summary')}, this host {here.get('summary')}"
    if record.get("status") != TRUST and record.get("allowed_untrusted"):
        text += "; used because latency.allow_untrusted_table is set"
    return text


def table_is_trusted(record: Mapping[str, Any] | None) -> bool:
    """Whether a run's table verdict (``None``: no table) leaves nothing to warn about."""
    return record is None or record.get("status") == TRUST
