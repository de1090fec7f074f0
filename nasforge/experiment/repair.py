"""`nasforge repair RUN`: salvage every readable trial of a damaged store into a new one.

Sources, merged by trial id (a finished record wins over an unfinished one):

1. the damaged ``trials.db`` (with its WAL), read from a *copy*, row by row where a whole
   scan fails, so the original files are never written;
2. the newest backup in ``backups/`` (:meth:`TrialStore.checkpoint_backup`);
3. the journal of finished trials (``trials.jsonl``), which holds every finished trial.

The run's other tables come along (:mod:`nasforge.experiment.repair_tables`): every readable
``epochs`` row (DARTS/OFA per-epoch records, trials' learning curves) of the store and the backup,
one per ``(phase, epoch)``; the events; the meta, with each unstable trial's latency reasons
(taken from the journal where meta lost them, or, for an older journal without them, read
back from the events or the progress log). What could not be read is
said in the report, never silently dropped.

The new store is written beside the old one, checked, and only then moved into place; the
damaged files are moved to ``damaged-<time>/`` in the run directory, never deleted. Trials
left ``running`` become ``interrupted`` (``--resume`` runs them again).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasforge.experiment.lock import RunLock
from nasforge.experiment.repair_tables import (
    recover_reasons,
    salvage_side_tables,
    unstable_trial_ids,
)
from nasforge.experiment.store import (
    FINISHED,
    STATES,
    TRIAL_COLUMNS,
    StoreError,
    TrialStore,
    check_store,
    journal_path,
    latest_backup,
    read_journal,
    row_from_dict,
)
from nasforge.experiment.store_journal import journal_verdicts
from nasforge.space import Arch

Row = tuple[Any, ...]


@dataclass(frozen=True)
class RepairReport:
    """What :func:`repair_run` did.

    Attributes:
        store: the new store.
        kept: where the damaged files were moved (``None`` if there were none).
        from_store: trials read from the damaged store.
        from_backup: trials taken from the backup (not readable in the store).
        from_journal: finished trials taken from the journal (lost or unfinished elsewhere).
        finished: finished trials in the new store.
        interrupted: unfinished trials (``--resume`` runs them again).
        was_healthy: the old store passed its checks (repair then only restores from the
            journal what the store lacked).
        epochs: ``epochs`` rows (per-epoch records and curve points) in the new store.
        unreadable: what could not be read, one phrase each (a damaged table of the store).
        reasons_lost: unstable trials whose latency reasons were found nowhere.
    """

    store: Path
    kept: Path | None
    from_store: int
    from_backup: int
    from_journal: int
    finished: int
    interrupted: int
    was_healthy: bool
    epochs: int = 0
    unreadable: tuple[str, ...] = field(default=())
    reasons_lost: tuple[int, ...] = field(default=())

    def summary(self) -> str:
        where = f"; damaged files kept in {self.kept}" if self.kept else ""
        text = (
            f"repaired {self.store}: {self.finished} finished and {self.interrupted} interrupted "
            f"trial(s) ({self.from_store} read from the store, {self.from_backup} from the "
            f"backup, {self.from_journal} from the journal), {self.epochs} epoch record(s) and "
            f"curve point(s){where}; continue with --resume"
        )
        if self.unreadable:
            text += "; could not read: " + "; ".join(self.unreadable)
        if self.reasons_lost:
            ids = ", ".join(str(t) for t in self.reasons_lost)
            text += f"; the unstable-latency reasons of trial(s) {ids} were found nowhere"
        return text


def _open_copy(files: list[Path], tmp: Path) -> sqlite3.Connection | None:
    """Copy a store (and its WAL) into ``tmp`` and open the copy; ``None`` if unopenable."""
    if not files or not files[0].is_file() or files[0].stat().st_size == 0:
        return None
    for f in files:
        if f.is_file():
            shutil.copyfile(f, tmp / f.name.replace(files[0].name, "copy.db"))
    _pad_to_header_size(tmp / "copy.db")
    try:
        db = sqlite3.connect(tmp / "copy.db", isolation_level=None)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return db
    except sqlite3.Error:
        return None


def _pad_to_header_size(path: Path) -> None:
    """Zero-extend a truncated copy to the size its header states: SQLite refuses to read the
    schema of a file shorter than that, but reads every page that is still there."""
    with path.open("rb") as fh:
        header = fh.read(100)
    if len(header) < 100:
        return
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if path.stat().st_size < page_size * pages <= 1 << 34:
        with path.open("r+b") as fh:
            fh.truncate(page_size * pages)


def _salvage_rows(db: sqlite3.Connection, max_id: int) -> dict[int, Row]:
    """Every readable ``trials`` row: a scan, else one row at a time (damaged pages skipped)."""
    sql = f"SELECT {TRIAL_COLUMNS} FROM trials"
    try:
        return {int(r[0]): tuple(r) for r in db.execute(sql + " ORDER BY id")}
    except sqlite3.Error:
        pass
    out: dict[int, Row] = {}
    try:
        known = [int(r[0]) for r in db.execute("SELECT seq FROM sqlite_sequence")]
    except sqlite3.Error:
        known = []
    for tid in range(1, max([max_id, *known]) + 200):
        try:
            r = db.execute(sql + " WHERE id=?", (tid,)).fetchone()
        except sqlite3.Error:
            continue
        if r is not None:
            out[tid] = tuple(r)
    return out


def _valid_rows(rows: dict[int, Row]) -> dict[int, Row]:
    """Rows whose fields parse (a damaged page can yield a row of garbage)."""
    out: dict[int, Row] = {}
    for tid, r in rows.items():
        try:
            Arch.from_json(r[2])
            json.loads(r[5])
            if r[4] is not None:
                json.loads(r[4])
            ok = len(r) == 12 and r[3] in STATES and isinstance(r[1], str) and r[8] is not None
        except (TypeError, ValueError, IndexError):
            ok = False
        if ok:
            out[tid] = r
    return out


def repair_run(run_dir: str | Path) -> RepairReport:
    """Rebuild ``run_dir/trials.db`` from every readable source (see the module docs).

    Takes the run's lock (a live search of the run is refused).

    Raises:
        RunLocked: another process writes the run.
        StoreError: nothing to repair (no store, no journal, no backup).
    """
    run = Path(run_dir)
    db_path = run / "trials.db"
    with RunLock(run, "repair"):
        return _repair(run, db_path)


def _repair(run: Path, db_path: Path) -> RepairReport:
    journal = read_journal(journal_path(db_path))
    backup = latest_backup(db_path)
    store_files = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
    if not any(f.exists() for f in store_files) and not journal and backup is None:
        raise StoreError(f"{run}: nothing to repair (no trials.db, journal or backup)")
    try:
        check_store(db_path)
        healthy = True
    except StoreError:
        healthy = False
    max_id = max(journal, default=0)
    with tempfile.TemporaryDirectory(dir=run) as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "store").mkdir()
        (tmp / "backup").mkdir()
        old = _open_copy(store_files, tmp / "store")
        bak = _open_copy([backup], tmp / "backup") if backup is not None else None
        from_old = _valid_rows(_salvage_rows(old, max_id)) if old is not None else {}
        from_bak = _valid_rows(_salvage_rows(bak, max_id)) if bak is not None else {}
        rows: dict[int, Row] = {}
        counts = {"store": 0, "backup": 0, "journal": 0}
        for tid in sorted(set(from_old) | set(from_bak) | set(journal)):
            candidates = [
                ("store", from_old.get(tid)),
                ("backup", from_bak.get(tid)),
                ("journal", row_from_dict(journal[tid]) if tid in journal else None),
            ]
            present = [(src, r) for src, r in candidates if r is not None]
            # a finished record wins; among equals, the store, then the backup, then the journal
            src, row = next(((s, r) for s, r in present if r[3] in FINISHED), present[0])
            if row[3] == "running":
                row = (*row[:3], "interrupted", *row[4:])
            rows[tid] = row
            counts[src] += 1
        side = salvage_side_tables(old, bak, db_path.name)
        if old is None and any(f.exists() for f in store_files):
            source = "the backup and the journal" if bak is not None else "the journal"
            side.unreadable.insert(0, f"{db_path.name} as a whole (all came from {source})")
        meta, reasons_lost = recover_reasons(
            side.meta, unstable_trial_ids(rows), side.events, run, journal_verdicts(journal)
        )
        for conn in (old, bak):
            if conn is not None:
                conn.close()
        new_path = tmp / "new.db"
        with TrialStore(new_path) as new:
            new._db.execute("BEGIN")
            new._db.executemany(
                f"INSERT INTO trials({TRIAL_COLUMNS}) VALUES ({','.join('?' * 12)})",
                [rows[t] for t in sorted(rows)],
            )
            new._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", meta)
            new._db.executemany(
                "INSERT INTO events(id, time, kind, message) VALUES (?,?,?,?)", side.events
            )
            new._db.executemany(
                "INSERT INTO epochs(phase, epoch, time, record) VALUES (?,?,?,?)", side.epochs
            )
            new._db.execute("COMMIT")
            unread = "; could not read: " + "; ".join(side.unreadable) if side.unreadable else ""
            new.log_event(
                "repair",
                f"store rebuilt by nasforge repair: {counts['store']} trial(s) from the store, "
                f"{counts['backup']} from the backup, {counts['journal']} from the journal, "
                f"{len(side.epochs)} epoch record(s) and curve point(s){unread}",
            )
            finished = new.count(FINISHED)
            unfinished = new.count(("interrupted",))
            new._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        check_store(new_path)
        kept: Path | None = None
        if any(f.exists() for f in store_files):
            kept = run / time.strftime(("replaced" if healthy else "damaged") + "-%Y%m%d-%H%M%S")
            kept.mkdir(exist_ok=True)
            for f in store_files:
                if f.exists():
                    f.rename(kept / f.name)
        for f in (Path(f"{new_path}-wal"), Path(f"{new_path}-shm")):
            f.unlink(missing_ok=True)
        new_path.rename(db_path)
    return RepairReport(
        db_path,
        kept,
        counts["store"],
        counts["backup"],
        counts["journal"],
        finished,
        unfinished,
        healthy,
        len(side.epochs),
        tuple(side.unreadable),
        tuple(reasons_lost),
    )
