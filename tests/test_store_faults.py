"""Fault injection (not only kill -9): a failing write, a full disk, a torn WAL or journal,
power loss at every write, a damaged store. After each, ``--resume`` continues with every
finished trial or stops with a clear one-line error; never a silent restart, never a lost
trial. The same harness reports the counts in BENCHMARKS.md (benchmarks/reliability.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import storefaults as sf
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.experiment.store import StoreError, TrialStore

TESTS = Path(__file__).resolve().parent
runner = CliRunner()


def test_power_loss_and_torn_writes_at_every_write_point(tmp_path: Path) -> None:
    trials = 6
    with sf.capture_points(tmp_path / "live" / "f", tmp_path / "snaps") as points:
        sf.run_search(sf.make_config(tmp_path / "live", trials))
    assert len(points) > 3 * trials  # every add, journal append, finish, meta write
    tally = sf.Tally()
    # every other point (all kinds and variants appear); benchmarks/reliability.py runs all
    for p in points[::2]:
        sf.resume_and_classify(
            p.snapshot, p.truth, trials, tally, f"{p.variant} {p.where}", tmp_path / "resume"
        )
    assert tally.failures == []
    assert set(tally.outcomes) <= {"survived", "refused"}, tally.outcomes
    assert tally.outcomes["survived"] > 0


@pytest.mark.parametrize("nth", [1, 3, 6])
def test_exception_while_recording_a_trial(tmp_path: Path, nth: int) -> None:
    tally = sf.Tally()
    fault = sf.failing_statement(nth, "UPDATE trials SET state=?")
    outcome = sf.inject("store write fails", fault, tmp_path, 8, tally)
    assert outcome == "survived", tally.failures
    with TrialStore(tmp_path / "f" / "trials.db", create=False) as s:
        assert any(kind == "journal" for _, kind, _ in s.events())  # restored, not re-run


@pytest.mark.parametrize("nth", [1, 4])
def test_exception_while_adding_a_trial_or_appending_the_journal(tmp_path: Path, nth: int) -> None:
    tally = sf.Tally()
    assert sf.inject(
        "add fails", sf.failing_statement(nth, "INSERT INTO trials"), tmp_path, 6, tally
    )
    assert sf.inject("journal fails", sf.failing_journal(nth), tmp_path / "j", 6, tally)
    assert tally.failures == [] and set(tally.outcomes) == {"survived"}, tally.outcomes


def test_failed_write_is_one_clear_line(tmp_path: Path) -> None:
    fault = sf.failing_journal(2)
    with fault(), pytest.raises(StoreError) as info:
        sf.run_search(sf.make_config(tmp_path, 6))
    msg = str(info.value)
    assert "\n" not in msg and "No space left on device" in msg and "--resume" in msg


@pytest.mark.parametrize("limit_kb", [64, 256, 1024])
def test_full_disk_file_size_limit_in_a_real_process(tmp_path: Path, limit_kb: int) -> None:
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "import storefaults as sf\n"
        "from nasforge.experiment.store import StoreError\n"
        "cfg = sf.make_config(Path(sys.argv[1]), 40)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_kb * 1024}, {limit_kb * 1024}))\n"
        "try:\n"
        "    sf.run_search(cfg)\n"
        "except StoreError as exc:\n"
        "    print(exc, file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])},
    )
    assert res.returncode == 2, res.stderr  # stopped with an error, not a traceback
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    db = tmp_path / "f" / "trials.db"
    truth = sf.finished_truth(db)
    snapshot = tmp_path / "after-fault"
    shutil.copytree(tmp_path / "f", snapshot)
    tally = sf.Tally()
    outcome = sf.resume_and_classify(snapshot, truth, 40, tally, "full disk", tmp_path / "r")
    assert outcome in ("survived", "refused"), tally.failures


@pytest.mark.parametrize("damage", sorted(sf.damage_points()))
def test_damaged_store_is_refused_by_show_resume_export_and_repaired(
    tmp_path: Path, damage: str
) -> None:
    cfg = sf.make_config(tmp_path, 12)
    sf.run_search(cfg)
    run = tmp_path / "f"
    truth = sf.finished_truth(run / "trials.db")
    sf.damage_points()[damage](run / "trials.db")
    before = (run / "trials.db").read_bytes() if (run / "trials.db").exists() else None
    commands = [["show", str(run)], ["export", str(run)]] if before is not None else []
    for args in commands:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert f"nasforge repair {run}" in res.output, res.output
        assert "Traceback" not in res.output
    with pytest.raises(StoreError, match="nasforge repair") as info:
        sf.run_search(cfg, resume=True)  # never a silent restart from trial 1
    assert "\n" not in str(info.value)
    if before is not None:  # nothing rewrote the damaged file in place
        assert (run / "trials.db").read_bytes() == before
        assert not (run / "trials.db-wal").exists() or damage != "zero-length"
    res = runner.invoke(app, ["repair", str(run)])
    assert res.exit_code == 0, res.output
    assert "12 finished" in res.output
    assert sf.finished_truth(run / "trials.db") == truth  # every finished trial salvaged
    sf.run_search(cfg, resume=True)
    assert sf.finished_truth(run / "trials.db") == truth


def test_backups_are_taken_with_the_online_api_and_are_valid(tmp_path: Path) -> None:
    sf.run_search(sf.make_config(tmp_path, 9), backup_every=4)
    backups = sorted((tmp_path / "f" / "backups").glob("trials-*.db"))
    assert [b.name for b in backups] == ["trials-000008.db", "trials-000009.db"]  # 2 newest
    with TrialStore(backups[-1], create=False) as s:
        assert s.count(("complete",)) == 9


def test_periodic_backups_are_rate_limited_first_and_final_always_taken(tmp_path: Path) -> None:
    sf.run_search(sf.make_config(tmp_path, 9), backup_every=2, backup_min_interval_s=3600)
    backups = sorted((tmp_path / "f" / "backups").glob("trials-*.db"))
    assert [b.name for b in backups] == ["trials-000002.db", "trials-000009.db"]
