"""Unstable-latency reasons travel through the journal of finished trials (session 24, H5).

A trial whose measured latency stayed unstable has its verdict (reasons and numbers) in the
store's meta and, since this change, in its journal line: a store rebuilt by ``nasforge repair``
from the journal alone, or a lost store write replayed on resume, shows the same reasons as
before. A journal written before the field (no verdict) still loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nasforge.evaluators.base import UNSTABLE_METRIC
from nasforge.experiment.latency_verdict import (
    UNSTABLE_TRIALS_META,
    record_trial_verdict,
    search_summary,
    summary_text,
    trial_latency_text,
)
from nasforge.experiment.repair import repair_run
from nasforge.experiment.store import FINISHED, TrialStore, journal_path, read_journal
from nasforge.experiment.store_journal import JOURNAL_STABILITY, journal_verdicts
from nasforge.hardware.noise import Stability
from nasforge.space import Arch

# a reason with "; " and parentheses of its own: the progress log's words cannot give it back
# whole (its reasons are joined by "; "), the journal's verdict does
BUSY = Stability(
    stable=False,
    reasons=(
        "other processes used 1.3 of 2 CPUs while 1 were needed; load 2.5",
        "reference kernel 1.42x its quiet baseline (> 1.15x)",
    ),
    reference_ratio=1.42,
    round_spread=0.12,
    others_cpus=1.3,
    load1=2.5,
    cpus=2,
    attempts=3,
)


def _run(tmp_path: Path) -> tuple[Path, int]:
    """A run with one unstable and one stable trial whose latency was measured; the id of the
    unstable one."""
    run = tmp_path / "run"
    with TrialStore(run / "trials.db") as store:
        bad = store.add_trial(Arch({"w": 1}))
        metrics = {"val_acc": 0.5, "latency_ms": 3.21, UNSTABLE_METRIC: 1.0}
        store.finish_trial(bad, "complete", metrics, score=0.5, cost_seconds=1.0)
        record_trial_verdict(store, bad, 3.21, BUSY.to_dict())
        good = store.add_trial(Arch({"w": 2}))
        metrics = {"val_acc": 0.6, "latency_ms": 2.0, UNSTABLE_METRIC: 0.0}
        store.finish_trial(good, "complete", metrics, score=0.6, cost_seconds=1.0)
    return run, bad


def _shown(run: Path) -> dict[str, Any]:
    """What the report and the progress lines say of the run's unstable latencies."""
    with TrialStore(run / "trials.db", create=False) as store:
        trials = store.trials(FINISHED)
        verdicts = store.get_meta(UNSTABLE_TRIALS_META)
        summary = search_summary(trials, verdicts)
        lines = [
            trial_latency_text(t, Stability.from_dict((verdicts or {}).get(str(t.id))))
            for t in trials
        ]
    return {"verdicts": verdicts, "summary": summary, "text": summary_text(summary), "lines": lines}


def _delete_store(run: Path) -> None:
    for name in ("trials.db", "trials.db-wal", "trials.db-shm"):
        (run / name).unlink(missing_ok=True)


def test_repair_from_the_journal_alone_shows_the_same_unstable_reasons(tmp_path: Path) -> None:
    run, bad = _run(tmp_path)
    before = _shown(run)
    assert before["verdicts"] == {str(bad): BUSY.to_dict()}
    assert BUSY.reasons[0] in before["text"] and BUSY.label in before["lines"][0]
    _delete_store(run)  # and no progress log, no backup: the journal is all there is
    assert not (run / "progress.log").exists() and not (run / "backups").exists()
    report = repair_run(run)
    assert report.from_journal == 2 and report.reasons_lost == ()
    after = _shown(run)
    assert after == before  # the verdict whole (numbers too), and every text made from it


def test_a_lost_store_write_replayed_on_resume_brings_the_reasons_back(tmp_path: Path) -> None:
    run, bad = _run(tmp_path)
    before = _shown(run)
    with TrialStore(run / "trials.db") as store:  # what a lost write leaves: a running row
        store._db.execute("UPDATE trials SET state='running', metrics='{}' WHERE id=?", (bad,))
        store._db.execute("DELETE FROM meta WHERE key=?", (UNSTABLE_TRIALS_META,))
        assert store.replay_journal() == 1
    assert _shown(run) == before


def test_an_old_journal_without_verdicts_still_loads_and_says_what_was_lost(
    tmp_path: Path,
) -> None:
    run, bad = _run(tmp_path)
    journal = journal_path(run / "trials.db")
    entries = read_journal(journal)
    assert JOURNAL_STABILITY in entries[bad] and JOURNAL_STABILITY not in entries[bad + 1]
    # the journal as nasforge wrote it before: one line per trial, no verdict field
    old = [{k: v for k, v in e.items() if k != JOURNAL_STABILITY} for e in entries.values()]
    journal.write_text("".join(json.dumps(e) + "\n" for e in old))
    assert journal_verdicts(read_journal(journal)) == {}
    _delete_store(run)
    report = repair_run(run)
    assert report.from_journal == 2 and report.reasons_lost == (bad,)
    after = _shown(run)
    assert after["summary"]["unstable_trial_ids"] == [bad]  # the flag itself survived
    assert not after["verdicts"] and "unstable" in after["lines"][0]


def test_the_journal_carries_the_verdict_on_the_trial_s_last_line(tmp_path: Path) -> None:
    run, bad = _run(tmp_path)
    lines = journal_path(run / "trials.db").read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert ids == [bad, bad, bad + 1]  # the finish, then the same record with its verdict
    first, second = (json.loads(line) for line in lines[:2])
    assert JOURNAL_STABILITY not in first
    assert {k: v for k, v in second.items() if k != JOURNAL_STABILITY} == first
    assert second[JOURNAL_STABILITY] == BUSY.to_dict()


@pytest.mark.parametrize(
    "verdict",
    [
        None,
        "busy",
        {"stable": True, "reasons": []},
        {"stable": False, "reasons": "busy"},
        {"stable": False, "reasons": [1]},
    ],
)
def test_a_malformed_journal_verdict_is_ignored(verdict: Any) -> None:
    assert journal_verdicts({3: {"id": 3, JOURNAL_STABILITY: verdict}}) == {}
