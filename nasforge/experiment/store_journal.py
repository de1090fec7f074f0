"""What the journal of finished trials (``trials.jsonl``) holds besides the trial's row.

Each line is one finished trial, :meth:`~nasforge.experiment.store.TrialRecord.to_dict` plus
``arch_json``; the last line of an id wins (:func:`~nasforge.experiment.storefile.read_journal`).
A trial whose measured latency stayed unstable gets a second line, the same record with
:data:`JOURNAL_STABILITY` (its ``Stability.to_dict()``: the reasons and the numbers), so the
reasons survive what the store's meta does not: a lost store write (replayed on ``--resume``)
or a store rebuilt by ``nasforge repair``. A journal written before this field (or a stable
trial's line) lacks it, and a reader that does not know it ignores it (rows are built from
named fields, :func:`~nasforge.experiment.store.row_from_dict`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nasforge.experiment.store_epochs import _clean

#: store meta key: ``{str(trial_id): Stability.to_dict()}`` for each trial whose measured
#: latency stayed unstable (re-exported by :mod:`~nasforge.experiment.latency_verdict`)
UNSTABLE_TRIALS_META = "latency_unstable_trials"
#: the journal line's field holding an unstable trial's verdict (``Stability.to_dict()``)
JOURNAL_STABILITY = "latency_stability"


def append_line(path: Path, entry: Mapping[str, Any]) -> None:
    """Append one JSON line to the journal at ``path`` and sync it (raises ``OSError``)."""
    line = (json.dumps(_clean(dict(entry)), allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def journal_verdicts(journal: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The unstable-latency verdicts a journal (:func:`read_journal`'s) carries, as the meta
    :data:`UNSTABLE_TRIALS_META` holds them (``str(id)`` -> verdict); a line without one (an
    old journal, a stable trial) or with a malformed one gives nothing."""
    out: dict[str, dict[str, Any]] = {}
    for tid, entry in journal.items():
        verdict = entry.get(JOURNAL_STABILITY)
        if isinstance(verdict, dict) and _verdict_ok(verdict):
            out[str(int(tid))] = dict(verdict)
    return out


def _verdict_ok(v: dict[str, Any]) -> bool:
    """An unstable verdict with its reasons in words (what ``Stability.to_dict()`` writes)."""
    if v.get("stable") is not False:
        return False
    reasons = v.get("reasons")
    return isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)
