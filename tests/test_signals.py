"""SIGINT and SIGTERM stop a search at once, with real processes and signals: workers are
gone, running trials are recorded as interrupted, one line says what was saved and the exact
resume command, and ``--resume`` runs the interrupted trials again first."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from runproc import (
    alive,
    descendants,
    finished_count,
    kill_group,
    start_search,
    wait_for,
    write_config,
)

from nasforge.experiment.store import TrialStore

FOREVER = "{epochs: 100000, lr: 0.01}"  # a trial that would not end during the test


def _running(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with TrialStore(db, create=False) as s:
            return s.count(("running",))
    except Exception:  # noqa: BLE001 - mid-creation
        return 0


def _stop_and_check(sig: int, tmp_path: Path, to_group: bool) -> tuple[str, Path]:
    cfg = write_config(
        tmp_path, search="{trials: 10, executor: process, workers: 2}", train=FOREVER
    )
    db = tmp_path / "runs" / "r" / "trials.db"
    proc = start_search(cfg)
    kids: set[int] = set()
    try:
        wait_for(lambda: _running(db) == 2, what="two running trials")
        wait_for(lambda: len(descendants(proc.pid)) >= 2, what="the worker processes")
        kids = descendants(proc.pid)
        if to_group:  # Ctrl-C in a terminal signals the whole foreground process group
            os.killpg(proc.pid, sig)
        else:  # kill, timeout, systemd and CI signal the main process only
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=180)  # not waiting for the (endless) trials
        # the resource tracker leaves when it sees its parent gone: give it a moment
        survivors = [p for p in kids if alive(p)]
        if survivors:
            try:
                wait_for(lambda: not [p for p in kids if alive(p)], 30, "the run's processes")
            except AssertionError:
                pass
            survivors = [p for p in kids if alive(p)]
    finally:
        kill_group(proc)
        for pid in kids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err
    assert not survivors, f"processes of the run outlived it: {survivors}"
    assert "leaked" not in err, err
    with TrialStore(db, create=False) as s:
        assert s.count(("running",)) == 0
        assert s.count(("interrupted",)) == 2
        assert s.get_meta("status") == "interrupted"
        assert any(kind == "interrupt" for _, kind, _ in s.events())
    return err, db


def test_sigterm_stops_workers_records_interrupted_and_exits_143(tmp_path: Path) -> None:
    err, db = _stop_and_check(signal.SIGTERM, tmp_path, to_group=False)
    line = [ln for ln in err.splitlines() if "interrupted by SIGTERM" in ln]
    assert len(line) == 1 and f"{db}" in line[0] and "--resume" in line[0], err


def test_sigint_stops_at_once_without_waiting_for_the_running_trial(tmp_path: Path) -> None:
    err, _ = _stop_and_check(signal.SIGINT, tmp_path, to_group=True)
    assert "interrupted by SIGINT: 0 finished trial(s) saved" in err, err
    assert "2 running trial(s) stopped, run again first on resume" in err


def test_sigint_line_gives_the_resume_command_that_reruns_interrupted_first(
    tmp_path: Path,
) -> None:
    cfg = write_config(tmp_path, search="{trials: 5, executor: inline}", train="{epochs: 6}")
    db = tmp_path / "runs" / "r" / "trials.db"
    proc = start_search(cfg)
    try:
        wait_for(lambda: finished_count(db) >= 2 and _running(db) == 1, what="a running trial")
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if "interrupted by SIGINT" in ln]
    assert len(lines) == 1, err
    with TrialStore(db, create=False) as s:
        before = {t.id: t for t in s.trials(("complete", "failed"))}
        interrupted = s.trials(("interrupted",))
        assert s.count(("running",)) == 0
    assert f"{len(before)} finished trial(s) saved in {db}" in lines[0]
    command = lines[0].split("continue with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:2] == ["nasforge", "search"] and "--resume" in argv
    res = subprocess.run(
        [sys.executable, "-m", "nasforge.cli", *argv[1:], "--quiet", "--no-final"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    with TrialStore(db, create=False) as s:
        complete = s.trials(("complete",))
        assert len(complete) == 5 and len({t.key for t in complete}) == 5
        for tid, t in before.items():  # nothing finished was lost or re-run
            assert s.trial(tid).finished == t.finished and s.trial(tid).metrics == t.metrics
        last = max([*before, *(t.id for t in interrupted)])
        new = [t for t in s.trials() if t.id > last]
        if interrupted:  # the stopped trial's network is the first one run on resume
            assert "will be run again first" in res.stderr
            assert new[0].key == interrupted[0].key and new[0].state == "complete"


def test_kill_9_of_the_main_process_takes_its_workers_along(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, search="{trials: 10, executor: process, workers: 2}", train=FOREVER
    )
    db = tmp_path / "runs" / "r" / "trials.db"
    proc = start_search(cfg)
    kids: set[int] = set()
    try:
        wait_for(lambda: _running(db) == 2, what="two running trials")
        kids = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
        workers_gone = True
        try:  # the kernel kills them (parent-death signal); the tracker sees its pipe close
            wait_for(lambda: not [p for p in kids if alive(p)], 60, "the workers to die")
        except AssertionError:
            workers_gone = False
    finally:
        kill_group(proc)
        for pid in kids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert kids and workers_gone, "worker processes outlived a kill -9 of their run"
