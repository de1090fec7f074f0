"""``nasforge repair`` loses nothing readable: the ``epochs`` table (trials' learning curves,
DARTS/OFA per-epoch records) of the damaged store and of the backup, one row per
``(phase, epoch)``, and the reasons of trials whose measured latency stayed unstable (from meta,
else from the events or the progress log); what it cannot read it says.

One real search (digits, 3 trials of 2 epochs, the latency measurement scripted to come out
unstable, as in tests/test_experiment_latency_verdict.py) is copied for each damage; the damage
is done to chosen pages of the store file, found through its schema, so each test knows what is
lost and what must come back.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.evaluators.base import UNSTABLE_METRIC
from nasforge.experiment.config import parse_config
from nasforge.experiment.latency_verdict import UNSTABLE_TRIALS_META
from nasforge.experiment.repair import repair_run
from nasforge.experiment.repair_tables import salvage_table
from nasforge.experiment.runner import Experiment
from nasforge.experiment.store import TrialStore
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.noise import Stability
from nasforge.hardware.timing import LatencyMeasurement
from nasforge.space import Arch

BUSY = (
    "other processes used 1.6 of 2 CPUs while 1 were needed",
    "round medians spread 12% (> 5%)",  # a reason with parentheses of its own
)
DARTS = [{"val_acc": 0.25, "skip_count": 1}, {"val_acc": 0.5, "skip_count": 2}]


def _measure(self: LatencyModel, model: nn.Module, input_shape: Sequence[int]) -> Any:
    return LatencyMeasurement(
        median_ms=3.21,
        iqr_ms=0.1,
        min_ms=3.0,
        repeats=5,
        batch_size=1,
        threads=1,
        q1_ms=3.1,
        q3_ms=3.3,
        mean_ms=3.21,
        p10_ms=3.0,
        stability=Stability(stable=False, reasons=BUSY),
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished run: 3 trials with curves and unstable latencies, a backup after trial 2
    (and the final one, after trial 3), then two DARTS epoch records (after the backups)."""
    root = tmp_path_factory.mktemp("repair-run")
    cfg = parse_config(
        {
            "name": "v",
            "runs_dir": str(root),
            "data": {"name": "digits"},
            "space": {
                "name": "mobile",
                "options": {
                    "stages": [[8, 1, 1], [16, 1, 2]],
                    "kernels": [3],
                    "expands": [1, 3],
                    "activations": ["relu"],
                    "se": [False],
                },
            },
            "search": {"trials": 3, "executor": "inline"},
            "train": {"epochs": 2},
            "latency": {"mode": "measure"},
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LatencyModel, "measure", _measure)
        Experiment(cfg, console=Console(file=io.StringIO()), backup_every=2).run(final=False)
    with TrialStore(root / "v" / "trials.db", create=False) as store:
        for epoch, record in enumerate(DARTS):
            store.add_epoch("darts", epoch, record)
    yield root / "v"


def _truth(run: Path) -> dict[str, Any]:
    with TrialStore(run / "trials.db", create=False) as s:
        return {
            "trials": {t.id: (t.state, t.metrics) for t in s.trials(("complete", "failed"))},
            "curves": s.curves(),
            "epochs": s.epochs(),
            "verdicts": s.get_meta(UNSTABLE_TRIALS_META),
        }


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock", "*-shm"))
    return dest


def _garble_tables(db: Path, *tables: str) -> None:
    """Overwrite the root page of each table with random bytes (a small table is one page)."""
    con = sqlite3.connect(db)
    roots = dict(con.execute("SELECT name, rootpage FROM sqlite_master WHERE type='table'"))
    size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    rng = random.Random(0)
    with db.open("r+b") as fh:
        for table in tables:
            fh.seek((roots[table] - 1) * size)
            fh.write(rng.randbytes(size))


def _reasons(run: Path) -> dict[int, list[str]]:
    with TrialStore(run / "trials.db", create=False) as s:
        verdicts = s.get_meta(UNSTABLE_TRIALS_META) or {}
    return {int(k): v["reasons"] for k, v in verdicts.items() if v["stable"] is False}


def test_curves_epoch_records_and_reasons_survive_a_lost_trials_and_meta_table(
    finished_run: Path, tmp_path: Path
) -> None:
    truth = _truth(finished_run)
    assert len(truth["trials"]) == 3 and len(truth["curves"]) == 3
    assert all(len(c) == 2 for c in truth["curves"].values())
    run = _copy(finished_run, tmp_path / "v")
    shutil.rmtree(run / "backups")  # nothing to fall back on but the store, journal and log
    _garble_tables(run / "trials.db", "trials", "meta")

    report = repair_run(run)

    after = _truth(run)
    assert after["trials"] == truth["trials"]  # from the journal
    assert report.from_journal == 3 and report.finished == 3
    assert after["curves"] == truth["curves"]
    assert after["epochs"] == truth["epochs"]
    assert [r["val_acc"] for r in after["epochs"]] == [0.25, 0.5]
    # meta was lost with its page: the reasons are read back from the latency_unstable events
    assert _reasons(run) == {tid: list(BUSY) for tid in truth["trials"]}
    assert all(t[1][UNSTABLE_METRIC] == 1.0 for t in after["trials"].values())
    assert report.reasons_lost == ()
    assert any("meta table" in u for u in report.unreadable), report.unreadable
    assert report.epochs == 3 * 2 + len(DARTS)
    assert "8 epoch record(s)" in report.summary()
    with TrialStore(run / "trials.db", create=False) as s:  # the events came along too
        kinds = [kind for _, kind, _ in s.events()]
    assert kinds.count("latency_unstable") == 3 and kinds[-1] == "repair"


def test_a_wholly_garbled_store_takes_curves_and_reasons_from_the_backup_and_the_log(
    finished_run: Path, tmp_path: Path
) -> None:
    truth = _truth(finished_run)
    run = _copy(finished_run, tmp_path / "v")
    backups = sorted((run / "backups").glob("trials-*.db"))
    assert [b.name for b in backups] == ["trials-000002.db", "trials-000003.db"]
    backups[-1].unlink()  # the newest backup holds trials 1-2 only
    db = run / "trials.db"
    db.write_bytes(random.Random(1).randbytes(db.stat().st_size))

    report = repair_run(run)

    after = _truth(run)
    assert after["trials"] == truth["trials"]
    assert (report.from_backup, report.from_journal) == (2, 1)
    ids = sorted(truth["trials"])
    # the backup's curves of trials 1-2; trial 3's curve was only in the garbled store
    assert after["curves"] == {t: truth["curves"][t] for t in ids[:2]}
    assert after["epochs"] == []  # the DARTS records were written after the backup
    # trials 1-2's reasons from the backup's meta, trial 3's from the progress log
    assert _reasons(run) == {tid: list(BUSY) for tid in ids}
    assert report.unreadable and "trials.db as a whole" in report.unreadable[0]
    assert "could not read: trials.db as a whole" in report.summary()


def test_an_unreadable_epochs_table_still_repairs_the_trials_and_says_so(
    finished_run: Path, tmp_path: Path
) -> None:
    truth = _truth(finished_run)
    run = _copy(finished_run, tmp_path / "v")
    shutil.rmtree(run / "backups")
    _garble_tables(run / "trials.db", "epochs")

    res = CliRunner().invoke(app, ["repair", str(run)], env={"COLUMNS": "400"})

    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "3 finished" in text
    assert "could not read: trials.db's epochs table (per-epoch records and learning curves)" in (
        text
    )
    after = _truth(run)
    assert after["trials"] == truth["trials"]
    assert after["curves"] == {} and after["epochs"] == []
    assert after["verdicts"] == truth["verdicts"]  # meta was readable: kept whole


def test_a_damaged_page_of_epochs_is_made_up_from_the_backup_one_row_per_phase_and_epoch(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    db = run / "trials.db"
    with TrialStore(db) as s:
        tid = s.add_trial(Arch({"x": 1}))
        s.finish_trial(tid, "complete", {"val_acc": 0.5}, 0.5, curve=[0.25, 0.5])
        s.set_meta("nothing", None)  # a JSON null is a value, not garbage
        for e in range(400):  # about ten pages of records
            s.add_epoch("supernet", e, {"loss": 1.0, "mark": f"EPOCH-{e:04d}-" + "x" * 40})
        s.checkpoint_backup()
        s.add_epoch("supernet", 5, {"loss": 0.5, "mark": "AGAIN"})  # epoch 5 run again
        s.add_epoch("supernet", 400, {"loss": 0.25, "mark": "NEWEST"})
    data = db.read_bytes()
    page = data.index(b"EPOCH-0200-") // 4096  # a leaf in the middle of the table
    with db.open("r+b") as fh:
        fh.seek(page * 4096)
        fh.write(random.Random(2).randbytes(4096))
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    salvage = salvage_table(con, "epochs", "phase, epoch, time, record")
    con.close()
    lost = {r[1] for r in salvage.rows.values()} ^ set(range(401))
    # only that page's rows are missing: the rows after it were read past the damage
    assert not salvage.complete and 200 in lost and 0 < len(lost) < 60
    assert {0, 399, 400} <= {r[1] for r in salvage.rows.values()}

    report = repair_run(run)

    with TrialStore(db, create=False) as s:
        records = {r["epoch"]: r for r in s.epochs("supernet")}
        assert s.curve(tid) == [0.25, 0.5]
        assert s.get_meta("nothing", "lost") is None
    assert sorted(records) == list(range(401))  # the damaged page's rows from the backup
    assert records[5]["mark"] == "AGAIN" and records[400]["mark"] == "NEWEST"  # store's wins
    assert records[200]["mark"].startswith("EPOCH-0200-")
    assert report.epochs == 401 + 2
    assert any("epochs table" in u and "backup" in u for u in report.unreadable)


def test_repair_of_an_intact_run_keeps_every_epochs_row_meta_and_event(
    finished_run: Path, tmp_path: Path
) -> None:
    truth = _truth(finished_run)
    run = _copy(finished_run, tmp_path / "v")
    with TrialStore(run / "trials.db", create=False) as s:
        meta = dict(s._db.execute("SELECT key, value FROM meta").fetchall())
        events = s.events()
    report = repair_run(run)
    assert report.was_healthy and report.unreadable == ()
    assert _truth(run) == truth
    with TrialStore(run / "trials.db", create=False) as s:
        assert dict(s._db.execute("SELECT key, value FROM meta").fetchall()) == {
            k: json.dumps(json.loads(v)) for k, v in meta.items()
        }
        assert s.events()[:-1] == events
