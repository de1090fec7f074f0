"""The store's files: its schema, the checks made before a store file is opened, its creation,
the journal of finished trials beside it and the backups (what
:class:`~nasforge.experiment.store.TrialStore` and ``nasforge repair`` rely on without opening a
store for writing). Re-exported by :mod:`nasforge.experiment.store`."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from nasforge.errors import NasforgeError

# PRAGMA user_version of a store; 0 = written before versioning (same schema); 2 added the
# ``epochs`` table (weight-sharing runs), created on open in an older store (additive)
SCHEMA_VERSION = 2
SQLITE_HEADER = b"SQLite format 3\x00"
BACKUP_DIR = "backups"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    arch TEXT NOT NULL,
    state TEXT NOT NULL,
    score TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    cost_seconds REAL NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    worker TEXT
);
CREATE INDEX IF NOT EXISTS trials_key ON trials(key);
CREATE INDEX IF NOT EXISTS trials_state ON trials(state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
    phase TEXT NOT NULL, epoch INTEGER NOT NULL, time REAL NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (phase, epoch)
);
"""


class StoreError(NasforgeError):
    """A store is missing, empty, damaged or from a newer nasforge; the message says what is
    wrong and how to recover (``nasforge repair RUN``, or the last backup)."""


def journal_path(db: str | Path) -> Path:
    """The journal of finished trials beside store ``db`` (``trials.db`` -> ``trials.jsonl``)."""
    return Path(db).with_suffix(".jsonl")


def backup_dir(db: str | Path) -> Path:
    return Path(db).parent / BACKUP_DIR


def latest_backup(db: str | Path) -> Path | None:
    """The newest backup of store ``db`` (backups are checked when written), or ``None``."""
    found = sorted(backup_dir(db).glob(f"{Path(db).stem}-*.db"))
    return found[-1] if found else None


def recovery_hint(db: str | Path) -> str:
    """How to recover a damaged store: repair, or the last backup."""
    run = Path(db).parent
    hint = (
        f"recover with `nasforge repair {run}` (salvages every readable trial, from the store, "
        "its journal and backups, into a new store; the damaged files are kept)"
    )
    last = latest_backup(db)
    if last is not None:
        hint += f", or restore the last backup {last}"
    return hint


def check_store(path: str | Path) -> None:
    """Check an existing store without writing to it.

    Checks, in order: a non-empty file, the SQLite header, ``PRAGMA quick_check`` (opened
    read-only), the ``trials`` table and the schema version.

    Raises:
        StoreError: one line naming the file, what is wrong and how to recover.
    """
    p = Path(path)

    def bad(what: str) -> StoreError:
        return StoreError(f"{p}: {what}; nothing was changed; {recovery_hint(p)}")

    if not p.is_file():
        if Path(f"{p}-wal").is_file():
            raise bad("the store file is missing but its WAL file is there")
        raise StoreError(f"{p}: no such store")
    size = p.stat().st_size
    if size == 0:
        raise bad("the store is empty (0 bytes): its contents were lost")
    with p.open("rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise bad("not a SQLite database (its header is overwritten or it is another file)")
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise bad(f"cannot be opened ({exc})") from None
    try:
        result = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
        if result != ["ok"]:
            raise bad(f"damaged: SQLite's quick_check reports {result[0]!r}")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        raise bad(f"damaged ({exc})") from None
    finally:
        db.close()
    if "trials" not in tables:
        raise bad("not a nasforge store (no trials table)")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{p}: written by a newer nasforge (store schema {version}, this version reads "
            f"up to {SCHEMA_VERSION}); upgrade nasforge to read it"
        )


def read_journal(path: str | Path) -> dict[int, dict[str, Any]]:
    """Finished trials recorded in a journal, by id (the last entry of an id wins).

    A torn last line (a crash or a full disk mid-append) is skipped: its trial was not
    reported finished to the loop either.
    """
    out: dict[int, dict[str, Any]] = {}
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_bytes().splitlines():
        try:
            rec = json.loads(line)
            out[int(rec["id"])] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _create_store_file(path: Path) -> None:
    """Create an empty store at ``path`` atomically: the schema is written to a side file that
    is renamed into place, so a process killed while creating leaves no half-made store (which
    the next open would rightly refuse as "not a nasforge store")."""
    side = path.with_name(path.name + ".creating")
    for f in (side, Path(f"{side}-journal"), Path(f"{side}-wal"), Path(f"{side}-shm")):
        f.unlink(missing_ok=True)  # left by a creation that was killed: it held no trial
    try:
        db = sqlite3.connect(side, isolation_level=None)
        try:
            db.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
        with side.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(side, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (sqlite3.Error, OSError) as exc:
        side.unlink(missing_ok=True)
        raise StoreError(
            f"{path}: could not create the store ({exc}); if the disk is full, free space and retry"
        ) from None
