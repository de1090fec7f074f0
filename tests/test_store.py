"""SQLite trial store: round trip, concurrent writers, interruption, strategy replay; checks
on open (empty file, newer schema), journal replay, online backups, repair."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from nasforge.experiment.repair import repair_run
from nasforge.experiment.store import SCHEMA_VERSION, StoreError, TrialStore
from nasforge.space import Arch
from nasforge.spaces import create_space
from nasforge.strategies import EvolutionStrategy


def test_round_trip_and_states(tmp_path: Path) -> None:
    with TrialStore(tmp_path / "t.db") as s:
        a = Arch({"x": 1})
        tid = s.add_trial(a)
        assert s.trial(tid).state == "running"
        s.finish_trial(tid, "complete", {"val_acc": 0.5, "bad": float("nan")}, (0.5, -2.0), 1.5)
        t = s.trial(tid)
        assert t.arch == a and t.score == (0.5, -2.0) and t.metrics["val_acc"] == 0.5
        assert np.isnan(t.metrics["bad"]) and t.cost_seconds == 1.5
        t2 = s.add_trial(Arch({"x": 2}))
        assert s.mark_interrupted() == 1 and s.trial(t2).state == "interrupted"
        assert (found := s.finished_by_key(a.key)) is not None and found.id == tid
        s.set_meta("k", {"a": [1, 2]})
        assert s.get_meta("k") == {"a": [1, 2]}
        assert s.total_cost_seconds() == 1.5
        # where a trial ran is recorded when it finishes (a Ray node, a pool process)
        t3 = s.add_trial(Arch({"x": 3}))
        s.finish_trial(t3, "failed", error="NodeDiedError", worker="127.0.0.2:42")
        assert s.trial(t3).worker == "127.0.0.2:42" and s.trial(tid).worker is None


def _writer(path: str, worker: int, n: int) -> None:
    with TrialStore(path) as s:
        for i in range(n):
            tid = s.add_trial(Arch({"w": worker, "i": i}), worker=str(worker))
            s.finish_trial(tid, "complete", {"val_acc": i / n}, i / n, 0.01)


def test_several_processes_write_one_store(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    TrialStore(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 50)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)  # generous: spawning and importing torch is slow on a loaded host
        assert p.exitcode == 0
    with TrialStore(path) as s:
        assert s.count(("complete",)) == 150
        assert len({t.key for t in s.trials()}) == 150


def test_store_replay_equals_live_strategy_state(tmp_path: Path) -> None:
    space = create_space("mobile", (1, 8, 8), 10)
    live = EvolutionStrategy(space, seed=3, population=5, tournament=2)
    with TrialStore(tmp_path / "t.db") as s:
        for i in range(12):
            arch = live.ask(1)[0]
            tid = s.add_trial(arch)
            score = float(np.sin(i))
            s.finish_trial(tid, "complete", {"val_acc": score}, score)
            live.tell(arch, score)
        replayed = EvolutionStrategy(space, seed=3, population=5, tournament=2)
        replayed.replay((t.arch, t.score) for t in s.trials(("complete",), order="finished"))
    assert [a.key for a, _ in replayed.population] == [a.key for a, _ in live.population]
    assert replayed.asked == live.asked
    state = json.loads(json.dumps(live.state_dict()))
    restored = EvolutionStrategy(space, seed=0, population=5, tournament=2)
    restored.load_state_dict(state)
    assert [a.key for a in restored.ask(3)] == [a.key for a in live.ask(3)]


def test_existing_empty_file_is_refused_and_left_empty(tmp_path: Path) -> None:
    db = tmp_path / "trials.db"
    db.write_bytes(b"")
    for create in (True, False):
        with pytest.raises(StoreError, match="empty .0 bytes.*nasforge repair"):
            TrialStore(db, create=create)
    assert db.read_bytes() == b""  # no schema was written into it
    with pytest.raises(StoreError, match="no such store"):
        TrialStore(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "trials.db"
    TrialStore(db).close()
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer nasforge"):
        TrialStore(db)


def test_journal_restores_a_finished_trial_the_store_lost(tmp_path: Path) -> None:
    db = tmp_path / "trials.db"
    with TrialStore(db) as s:
        tid = s.add_trial(Arch({"x": 1}))
        s.finish_trial(tid, "complete", {"val_acc": 0.75}, 0.75, 2.0)
        # the store loses the result (a torn WAL, a failed write): only the journal has it
        s._db.execute(
            "UPDATE trials SET state='running', score=NULL, metrics='{}' WHERE id=?", (tid,)
        )
        assert s.journal_gap() == [tid]
        assert s.replay_journal() == 1
        t = s.trial(tid)
        assert t.state == "complete" and t.metrics == {"val_acc": 0.75} and t.score == 0.75
        assert t.arch == Arch({"x": 1}) and s.journal_gap() == []
        assert any(kind == "journal" for _, kind, _ in s.events())


def test_online_backup_is_a_valid_store(tmp_path: Path) -> None:
    with TrialStore(tmp_path / "trials.db") as s:
        for i in range(3):
            tid = s.add_trial(Arch({"x": i}))
            s.finish_trial(tid, "complete", {"val_acc": i}, float(i))
        path = s.checkpoint_backup()
        assert path is not None and path.name == "trials-000003.db"
    with TrialStore(path, create=False) as b:
        assert b.count(("complete",)) == 3


def test_repair_of_a_healthy_store_keeps_everything(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with TrialStore(run / "trials.db") as s:
        for i in range(4):
            tid = s.add_trial(Arch({"x": i}))
            s.finish_trial(tid, "complete", {"val_acc": i}, float(i))
        s.add_trial(Arch({"x": 9}))  # left running
    report = repair_run(run)
    assert report.was_healthy and report.finished == 4 and report.interrupted == 1
    assert report.kept is not None and report.kept.name.startswith("replaced-")
    with TrialStore(run / "trials.db", create=False) as s:
        assert s.count(("complete",)) == 4 and s.count(("interrupted",)) == 1


def test_epoch_records_round_trip_replace_and_migrate_an_older_store(tmp_path: Path) -> None:
    db = tmp_path / "trials.db"
    with TrialStore(db) as store:
        store.add_epoch("darts", 1, {"val_acc": 0.5, "eig": float("nan")})
        store.add_epoch("darts", 0, {"val_acc": 0.25})
        store.add_epoch("supernet", 0, {"loss": 2.0})
        store.add_epoch("darts", 1, {"val_acc": 0.75})  # the epoch run again after a resume
        assert [r["val_acc"] for r in store.epochs("darts")] == [0.25, 0.75]
        assert store.epochs("supernet") == [{"loss": 2.0, "phase": "supernet", "epoch": 0}]
        assert len(store.epochs()) == 3
    # a store written before the epochs table (schema 1) gets it on open, trials kept
    old = tmp_path / "old.db"
    con = sqlite3.connect(old)
    con.executescript(
        "CREATE TABLE trials (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, "
        "arch TEXT NOT NULL, state TEXT NOT NULL, score TEXT, metrics TEXT NOT NULL DEFAULT "
        "'{}', error TEXT, cost_seconds REAL NOT NULL DEFAULT 0, created REAL NOT NULL, "
        "started REAL, finished REAL, worker TEXT); PRAGMA user_version=1;"
    )
    con.close()
    with TrialStore(old) as store:
        store.add_epoch("darts", 0, {"x": 1})
        assert store.epochs("darts")[0]["x"] == 1
