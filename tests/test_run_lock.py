"""One writer per run: an OS lock on runs/<name>/.lock, refused with the holder's PID, exit 2;
a lock dies with its process (kill -9 leaves none behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from runproc import finished_count, kill_group, start_search, wait_for, write_config

from nasforge.experiment.lock import RunLock, RunLocked
from nasforge.experiment.store import TrialStore


def test_lock_refuses_a_second_holder_and_names_it(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunLocked) as info:
            RunLock(tmp_path / "run").acquire()
        assert info.value.pid == os.getpid()
        assert f"process {os.getpid()}" in str(info.value)
        assert "\n" not in str(info.value)
    RunLock(tmp_path / "run").acquire().release()  # released: free again


def test_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from nasforge.experiment.lock import RunLock\n"
            f"RunLock({str(tmp_path / 'run')!r}).acquire()\n"
            "print('held', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"process {holder.pid}"):
            RunLock(tmp_path / "run").acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        RunLock(tmp_path / "run").acquire().release()  # no stale lock after kill -9
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)


@pytest.mark.slow  # ~10 s: two spawned searches
def test_two_searches_started_together_run_once(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, search="{trials: 6, executor: inline}")
    procs = [start_search(cfg), start_search(cfg)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    # refused by the lock (naming the holder, or "another process" when the winner holds the
    # lock but has not written its PID yet) or, if the winner had already finished, by the
    # existing run: either way one line and no trial of its own
    assert "in use by" in loser or "a run with this name exists" in loser, loser
    with TrialStore(tmp_path / "runs" / "r" / "trials.db", create=False) as s:
        trials = s.trials()
        assert len(trials) == 6 and s.count(("complete",)) == 6
        assert len({t.key for t in trials}) == 6


def test_resume_while_the_run_lives_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, search="{trials: 500, executor: inline}")
    db = tmp_path / "runs" / "r" / "trials.db"
    first = start_search(cfg)
    try:
        wait_for(lambda: finished_count(db) >= 1, what="the first trial")
        with TrialStore(db, create=False) as s:
            running = [t.id for t in s.trials(("running",))]
        second = start_search(cfg, "--resume")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        assert f"in use by process {first.pid}" in err
        assert first.poll() is None  # the first run goes on
        with TrialStore(db, create=False) as s:
            assert s.count(("interrupted",)) == 0  # its running trial was not touched
            assert all(s.trial(t).state in ("running", "complete") for t in running)
    finally:
        kill_group(first)
