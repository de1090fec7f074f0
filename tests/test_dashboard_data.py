"""The dashboard's data (`nasforge.dashboard.data`) and what it reads from the store: real small
runs on digits (a search, a successive-halving ladder, a DARTS search), the learning curve the
loop stores per trial, the read-only store (never changes the file, reads while another process
writes and after it was killed with `kill -9`, refuses a damaged file by name) and the
snapshot's leaderboard against the ranking `nasforge show` prints. No timing is asserted."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from runproc import TINY, kill_group, start_search, wait_for, write_config

from nasforge.dashboard.data import UnknownTrial, _front, lock_held, snapshot, trial_detail
from nasforge.experiment import report
from nasforge.experiment.config import parse_config
from nasforge.experiment.report import leaderboard
from nasforge.experiment.report_oneshot import oneshot_section
from nasforge.experiment.runner import Experiment
from nasforge.experiment.store import CURVE_PHASE, StoreError, TrialStore
from nasforge.objectives import pareto_front
from nasforge.space import Arch
from nasforge.strategies.base import scalar
from nasforge.yamlfile import parse_yaml

EPOCHS = 2


def _run(tmp_path: Path, name: str, **sections: Any) -> Path:
    cfg: dict[str, Any] = {
        "name": name,
        "runs_dir": str(tmp_path / "runs"),
        "data": {"name": "digits"},
        "space": parse_yaml(TINY, "TINY"),
        "search": {"trials": 5, "executor": "inline"},
        "train": {"epochs": EPOCHS, "lr": 0.1},
        "strategy": {"name": "random"},
        "objective": {"kind": "accuracy"},
        "latency": {"mode": "flops"},
    }
    cfg.update(sections)
    run = tmp_path / "runs" / name
    with pytest.MonkeyPatch.context() as mp:  # the report (plots) is not read here: spare it
        mp.setattr(report, "write_report", lambda *a, **k: None)
        exp = Experiment(parse_config(cfg), run, console=Console(quiet=True), progress=False)
        exp.run(final=False)
    return run


@pytest.fixture(scope="module")
def search_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 5-trial search (inline, 2 epochs each)."""
    return _run(tmp_path_factory.mktemp("search"), "s")


def _files(run: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of every file of the run (the store, its WAL, journal, backups...) but
    the ``-shm`` file: SQLite's shared-memory index of the WAL, where every reader, read-only
    too, marks what it reads (it holds no data; SQLite rebuilds it from the WAL)."""
    return {
        str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(run.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


# -- a real search -------------------------------------------------------------------------------
def test_snapshot_leaderboard_equals_the_stores_ranking(search_run: Path) -> None:
    snap = snapshot(search_run)
    json.dumps(snap, allow_nan=False)  # JSON-ready: no NaN for the browser
    with TrialStore(search_run / "trials.db", create=False) as store:
        ranking = leaderboard(store)  # what `nasforge show` and the report rank
        trials = store.trials()
    assert [r["id"] for r in snap["leaderboard"]] == [t.id for t in ranking]
    assert [r["score"] for r in snap["leaderboard"]] == [scalar(t.score) for t in ranking]
    assert [r["rank"] for r in snap["leaderboard"]] == list(range(1, len(ranking) + 1))
    top = snap["leaderboard"][0]
    assert top["metrics"]["val_acc"] == ranking[0].metrics["val_acc"]
    assert snap["columns"][:2] == ["val_acc", "mflops"]  # latency.mode: flops
    assert snap["run"]["kind"] == "search" and snap["run"]["status"] == "finished"
    assert snap["run"]["lock_held"] is False and snap["run"]["name"] == "s"
    progress = snap["progress"]
    assert (progress["complete"], progress["failed"], progress["total"]) == (5, 0, 5)
    assert progress["eta_s"] is None and progress["elapsed_s"] > 0
    assert [t["id"] for t in snap["trials"]] == sorted((t.id for t in trials), reverse=True)
    assert snap["oneshot"] is None and snap["ofa"] is None
    # best so far: rises with each new best, ends at the leaderboard's top
    best = [b["score"] for b in snap["best_so_far"]]
    assert best == sorted(best) and len(set(best)) == len(best)
    assert best[-1] == top["score"]


def test_each_trial_stores_its_learning_curve(search_run: Path) -> None:
    with TrialStore(search_run / "trials.db", create=False) as store:
        trials = store.trials(("complete",))
        curves = store.curves()
        assert oneshot_section(store) is None  # curves are no weight-sharing phase
        assert not [r for r in store.epochs() if r["phase"].startswith(CURVE_PHASE)]
    assert sorted(curves) == [t.id for t in trials]
    for t in trials:
        assert len(curves[t.id]) == EPOCHS
        assert curves[t.id][-1] == t.metrics["val_acc"]  # the last epoch is the trial's score
    detail = trial_detail(search_run, trials[0].id)
    assert detail["curve"] == curves[trials[0].id]
    assert detail["arch"] == trials[0].arch.to_dict() and detail["key"] == trials[0].key
    assert detail["metrics"] == trials[0].metrics and detail["error"] is None
    snap = snapshot(search_run)
    top5 = [r["id"] for r in snap["leaderboard"][:5]]
    assert snap["curves"] == {str(i): curves[i] for i in top5}


def test_pareto_flags_of_a_real_run(search_run: Path) -> None:
    points = snapshot(search_run)["points"]
    assert len(points) == 5

    def dominated(p: dict[str, Any]) -> bool:
        return any(
            q["y"] >= p["y"] and q["x"] <= p["x"] and (q["y"] > p["y"] or q["x"] < p["x"])
            for q in points
        )

    assert [p["pareto"] for p in points] == [not dominated(p) for p in points]


def test_unknown_trial_is_a_lookup_error(search_run: Path) -> None:
    for bad in (999, "x1", "../1"):
        with pytest.raises(LookupError):
            trial_detail(search_run, bad)
    with pytest.raises(UnknownTrial, match="no trial 999"):
        trial_detail(search_run, "999")


def test_reading_changes_no_file_of_the_run(search_run: Path) -> None:
    before = _files(search_run)
    snapshot(search_run)
    trial_detail(search_run, 1)
    with TrialStore.open_readonly(search_run / "trials.db") as store:
        assert store.count() == 5
        for write in (
            lambda: store.set_meta("status", "x"),
            lambda: store.add_trial(Arch({"a": 1})),
            lambda: store.finish_trial(1, "failed", error="x"),
            lambda: store.add_curve(1, [0.5]),
            store.replay_journal,
            store.checkpoint_backup,
            store.mark_interrupted,
        ):
            with pytest.raises(StoreError, match="read-only"):
                write()
    after = _files(search_run)
    # SQLite may add its empty WAL sidecars to read a WAL store; nothing else appears
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) <= {"trials.db-wal"}
    assert after.get("trials.db-wal", (0, b""))[1] == before.get("trials.db-wal", (0, b""))[1]


# -- a store written by hand: pareto, multi-fidelity, failures, a live writer --------------------
def _store_with(run: Path, rows: list[tuple[str, dict[str, float] | None, str | None]]) -> None:
    run.mkdir(parents=True)
    with TrialStore(run / "trials.db") as store:
        for i, (state, metrics, error) in enumerate(rows):
            tid = store.add_trial(Arch({"i": i}))
            if state != "running":
                score = None if metrics is None else metrics["val_acc"]
                store.finish_trial(tid, state, metrics, score, 1.0, error)


def test_pareto_ranking_and_errors_of_a_known_store(tmp_path: Path) -> None:
    run = tmp_path / "k"
    _store_with(
        run,
        [
            ("complete", {"val_acc": 0.9, "latency_ms": 5.0}, None),  # front
            ("complete", {"val_acc": 0.8, "latency_ms": 3.0}, None),  # front
            ("complete", {"val_acc": 0.7, "latency_ms": 4.0}, None),  # dominated by 2
            ("failed", None, "RuntimeError: boom\nTraceback line"),
            ("complete", {"val_acc": 0.9, "latency_ms": 6.0}, None),  # ties 1, dominated by 1
            ("running", None, None),
        ],
    )
    snap = snapshot(run)
    assert [(p["id"], p["pareto"]) for p in snap["points"]] == [
        (1, True),
        (2, True),
        (3, False),
        (5, False),
    ]
    assert [r["id"] for r in snap["leaderboard"]] == [1, 5, 2, 3]  # ties by id
    assert snap["columns"][:2] == ["val_acc", "latency_ms"]
    assert snap["axes"] == {"x": "latency_ms", "y": "val_acc"}
    failed = next(t for t in snap["trials"] if t["id"] == 4)
    assert failed["error_line"] == "RuntimeError: boom"
    assert trial_detail(run, 4)["error"] == "RuntimeError: boom\nTraceback line"
    assert trial_detail(run, 4)["curve"] == []
    p = snap["progress"]
    assert (p["complete"], p["failed"], p["running"], p["interrupted"]) == (4, 1, 1, 0)
    assert snap["run"]["status"] == "unknown"  # no lock, no status recorded


def test_snapshot_is_one_instant_while_another_connection_writes(tmp_path: Path) -> None:
    run = tmp_path / "w"
    _store_with(run, [("complete", {"val_acc": 0.5}, None)])
    writer = sqlite3.connect(run / "trials.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # the writer is mid-transaction (WAL)
        writer.execute(
            "INSERT INTO trials(key, arch, state, score, metrics, created) "
            "VALUES ('k2', ?, 'complete', '0.7', '{\"val_acc\": 0.7}', 1.0)",
            (Arch({"i": 9}).to_json(),),
        )
        assert snapshot(run)["progress"]["complete"] == 1  # uncommitted: not seen
        writer.execute("COMMIT")
        snap = snapshot(run)
        assert snap["progress"]["complete"] == 2
        assert [r["id"] for r in snap["leaderboard"]] == [2, 1]
    finally:
        writer.close()


def test_old_store_without_epochs_table_reads_empty_curves(tmp_path: Path) -> None:
    run = tmp_path / "old"
    _store_with(run, [("complete", {"val_acc": 0.5}, None)])
    db = sqlite3.connect(run / "trials.db", isolation_level=None)
    db.execute("DROP TABLE epochs")
    db.execute("PRAGMA user_version=1")
    db.close()
    assert trial_detail(run, 1)["curve"] == []
    assert snapshot(run)["leaderboard"][0]["id"] == 1
    with TrialStore.open_readonly(run / "trials.db") as store:
        assert store.curves() == {} and store.epochs() == []


_WRITER = textwrap.dedent(
    """
    import sys, time
    from nasforge.experiment.lock import RunLock
    from nasforge.experiment.store import TrialStore
    from nasforge.space import Arch
    run = sys.argv[1]
    RunLock(run).acquire()
    store = TrialStore(run + "/trials.db")
    store.set_meta("status", "running")
    for i in range(3):
        tid = store.add_trial(Arch({"i": i}))
        store.add_curve(tid, [0.1 * i, 0.2 * i])
        store.finish_trial(tid, "complete", {"val_acc": 0.2 * i}, 0.2 * i, 1.0)
    store.add_trial(Arch({"i": 9}))  # left running
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_reads_a_store_whose_writer_holds_the_lock_then_is_killed(tmp_path: Path) -> None:
    run = tmp_path / "live"
    run.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(run)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert lock_held(run)
        snap = snapshot(run)
        assert snap["run"]["status"] == "running" and snap["run"]["lock_held"] is True
        assert (snap["progress"]["complete"], snap["progress"]["running"]) == (3, 1)
        assert snap["progress"]["eta_s"] is not None  # 3 of 20 planned (the default budget)
        os.killpg(proc.pid, signal.SIGKILL)  # the writer dies mid-run: its WAL stays behind
        proc.wait(30)
    finally:
        kill_group(proc)
    wait_for(lambda: not lock_held(run), timeout_s=30, what="the lock to be dropped")
    snap = snapshot(run)
    assert snap["run"]["status"] == "interrupted" and snap["run"]["lock_held"] is False
    assert [r["id"] for r in snap["leaderboard"]] == [3, 2, 1]
    assert trial_detail(run, 3)["curve"] == [pytest.approx(0.2), pytest.approx(0.4)]


# -- refusals ------------------------------------------------------------------------------------
def test_missing_or_damaged_store_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such run directory"):
        snapshot(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreError, match="no trials.db"):
        snapshot(empty)
    run = tmp_path / "bad"
    _store_with(run, [("complete", {"val_acc": 0.5}, None)])
    db = run / "trials.db"
    data = bytearray(db.read_bytes())
    data[:16] = b"garbage garbage!"
    db.write_bytes(bytes(data))
    before = db.read_bytes()
    for read in (lambda: snapshot(run), lambda: trial_detail(run, 1)):
        with pytest.raises(StoreError, match=f"{db}: not a SQLite database"):
            read()
    assert db.read_bytes() == before  # never rewritten
    db.write_bytes(b"")
    with pytest.raises(StoreError, match="empty"):
        TrialStore.open_readonly(db)


# -- multi-fidelity and weight sharing -----------------------------------------------------------
def test_multi_fidelity_rungs_have_curves_of_their_budget(tmp_path: Path) -> None:
    ladder = {"name": "sh", "options": {"min_epochs": 1, "max_epochs": 2, "eta": 2, "n_configs": 4}}
    run = _run(tmp_path, "mf", strategy=ladder, search={"trials": 6, "executor": "inline"})
    with TrialStore(run / "trials.db", create=False) as store:
        trials = store.trials(("complete",))
        curves = store.curves()
        ranking = leaderboard(store)
    assert len(trials) == 6
    for t in trials:
        assert len(curves[t.id]) == int(t.metrics["budget_epochs"])
    snap = snapshot(run)
    # only the top rung ranks (as in the report): a cheaper rung's score is not comparable
    assert [r["id"] for r in snap["leaderboard"]] == [t.id for t in ranking]
    assert {r["metrics"]["budget_epochs"] for r in snap["leaderboard"]} == {2.0}
    assert "budget_epochs" in snap["columns"] and "rung" in snap["columns"]


def test_darts_run_shows_epochs_and_alpha_trajectories(tmp_path: Path) -> None:
    darts = {
        "method": "darts",
        "options": {
            "epochs": 2,
            "steps_per_epoch": 2,
            "batch_size": 32,
            "channels": 4,
            "hessian_iters": 2,
            "eval_batches": 1,
            "alpha_lr": 0.05,
        },
    }
    run = _run(
        tmp_path,
        "d",
        space={"name": "nb201", "options": {"C": 4, "N": 1}},
        oneshot=darts,
        search={"trials": 3, "executor": "inline"},
        train={"batch_size": 32, "lr": 0.05},
    )
    snap = snapshot(run)
    json.dumps(snap, allow_nan=False)
    assert snap["run"]["kind"] == "darts" and snap["oneshot"]["method"] == "darts"
    assert [e["epoch"] for e in snap["oneshot"]["epochs"]] == [1, 2]
    assert snap["progress"]["epochs_done"] == 2
    alphas = snap["oneshot"]["alphas"]
    assert alphas and all("/edge" in k for k in alphas)
    with TrialStore(run / "trials.db", create=False) as store:
        last = store.epochs("darts")[-1]["cells"]
    for name, a in alphas.items():
        cell, edge = name.rsplit("/edge", 1)
        assert a["epoch_numbers"] == [1, 2] and len(a["epochs"]) == 2
        assert a["ops"] == last[cell]["ops"]
        assert a["epochs"][-1] == last[cell]["weights"][int(edge)]
        assert sum(a["epochs"][-1]) == pytest.approx(1.0, abs=1e-3)
    # each edge is named by its nodes, as in the report (nb201: 0->1, 0->2, 1->2, ...)
    names = [a["name"] for a in alphas.values()]
    assert any(n.endswith("node 0 -> node 1") for n in names)
    assert any(n.endswith("node 2 -> node 3") for n in names)


def test_supernet_and_ofa_runs_are_told_apart(tmp_path: Path) -> None:
    spos_run, ofa_run = tmp_path / "sp", tmp_path / "ofa"
    _store_with(spos_run, [("complete", {"val_acc": 0.5}, None)])
    with TrialStore(spos_run / "trials.db") as store:
        store.add_curve(1, [0.3, 0.5])  # a trial's curve is no supernet epoch
        for e in (1, 2):
            store.add_epoch("supernet", e, {"loss": 2.0 / e, "lr": 0.1, "sampling": "uniform"})
        store.set_meta("oneshot", {"method": "spos", "phase": "supernet", "epochs": 3})
    snap = snapshot(spos_run)
    assert snap["run"]["kind"] == "spos" and snap["ofa"] is None
    assert [e["epoch"] for e in snap["oneshot"]["epochs"]] == [1, 2]
    assert snap["oneshot"]["alphas"] == {} and snap["oneshot"]["sampling"] == "uniform"
    assert (snap["progress"]["epochs_done"], snap["progress"]["epochs_total"]) == (2, 3)
    _store_with(ofa_run, [])
    with TrialStore(ofa_run / "trials.db") as store:
        store.add_epoch("ofa", 1, {"loss": 1.5, "stage": "full", "elastic": []})
        store.add_epoch("ofa", 2, {"loss": float("nan"), "stage": "kernel", "elastic": ["k"]})
    phases = [{"name": "full", "epochs": 1}, {"name": "kernel", "elastic": ["kernel"], "epochs": 2}]
    (ofa_run / "config.yaml").write_text(
        json.dumps({"name": "o", "ofa": {"train": {"phases": phases}}})
    )
    snap = snapshot(ofa_run)
    json.dumps(snap, allow_nan=False)
    assert snap["run"]["kind"] == "ofa" and snap["oneshot"] is None
    assert (snap["progress"]["epochs_done"], snap["progress"]["epochs_total"]) == (2, 3)
    assert snap["progress"]["total"] is None and snap["run"]["name"] == "o"
    assert [p["epochs_planned"] for p in snap["ofa"]["phases"]] == [1, 2]
    assert [(e["phase"], e["loss"]) for e in snap["ofa"]["epochs"]] == [
        ("full", 1.5),
        ("kernel", None),
    ]
    assert snap["leaderboard"] == [] and snap["points"] == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6).map(float), st.integers(0, 6).map(float)), max_size=30))
def test_pareto_sweep_equals_the_objectives_pareto_front(xy: list[tuple[float, float]]) -> None:
    expected = set(pareto_front([[y, -x] for x, y in xy])) if xy else set()
    assert _front(xy) == expected


@pytest.mark.slow  # two `nasforge search` processes importing torch: 20-40 s on a busy host
def test_follows_a_real_search_through_kill_9_and_resume(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, "live", search="{trials: 8, executor: inline}", train="{epochs: 2, lr: 0.1}"
    )
    run = tmp_path / "runs" / "live"

    def complete() -> int:
        try:
            return int(snapshot(run)["progress"]["complete"])
        except StoreError:  # the run directory or its store is not made yet
            return 0

    proc = start_search(cfg)
    try:
        wait_for(lambda: complete() >= 2, what="2 complete trials, read read-only")
        live = snapshot(run)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_group(proc)
    assert live["run"]["status"] == "running" and live["run"]["lock_held"] is True
    assert live["progress"]["total"] == 8 and live["progress"]["eta_s"] is not None
    assert all(len(live["curves"][str(r["id"])]) == 2 for r in live["leaderboard"][:5])
    killed = snapshot(run)
    assert killed["run"]["status"] == "interrupted", "the run finished before it was killed"
    assert killed["progress"]["complete"] < 8
    res = subprocess.run(
        [sys.executable, "-m", "nasforge.cli", "search", str(cfg), "--quiet", "--no-final"]
        + ["--resume"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    done = snapshot(run)
    with TrialStore.open_readonly(run / "trials.db") as store:
        ranking = leaderboard(store)
        complete_ids = [t.id for t in store.trials(("complete",))]
    assert done["run"]["status"] == "finished" and done["progress"]["complete"] == 8
    assert [r["id"] for r in done["leaderboard"]] == [t.id for t in ranking]
    assert sorted(int(k) for k in done["curves"]) == sorted(
        r["id"] for r in done["leaderboard"][:5]
    )
    assert all(len(trial_detail(run, i)["curve"]) == 2 for i in complete_ids)


def test_a_trial_and_its_curve_are_recorded_at_once(tmp_path: Path) -> None:
    db = tmp_path / "trials.db"
    with TrialStore(db) as store:
        ok = store.add_trial(Arch({"i": 0}))
        store.finish_trial(ok, "complete", {"val_acc": 0.5}, 0.5, 1.0, curve=[0.25, 0.5])
        assert store.curve(ok) == [0.25, 0.5] and store.trial(ok).state == "complete"
        # the curve's insert fails (a real SQLite error, as a full disk would raise)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute(
            "CREATE TRIGGER no_curves BEFORE INSERT ON epochs WHEN NEW.phase LIKE 'trial/%' "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
        tid = store.add_trial(Arch({"i": 1}))
        with pytest.raises(StoreError, match=f"could not record trial {tid}.*kept in"):
            store.finish_trial(tid, "complete", {"val_acc": 0.7}, 0.7, 1.0, curve=[0.7])
        assert store.trial(tid).state == "running" and store.curve(tid) == []  # neither
        other.execute("DROP TRIGGER no_curves")
        other.close()
        assert store.replay_journal() == 1  # the result was journaled first: nothing is lost
        assert store.trial(tid).state == "complete" and store.trial(tid).score == 0.7
