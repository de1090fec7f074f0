"""SQLite (WAL) trial store: the source of truth of a run.

Every trial is one row: its arch, state (``running``, ``complete``, ``failed``,
``interrupted``), score, metrics, error, cost and timings. One process writes a run (it
holds the run's lock, :mod:`nasforge.experiment.lock`); SQLite would also serialise several
writers (WAL mode, busy timeout).

What protects a finished trial:

- each finished trial is first appended (and synced) to a journal beside the store
  (``trials.jsonl``), so a result whose store write failed or was lost (a full disk, a
  truncated WAL, a power loss after the commit returned) is restored by
  :meth:`TrialStore.replay_journal` or ``nasforge repair``; that one fsync per trial is the
  durability point, so the store itself runs ``synchronous=NORMAL`` (WAL: every commit survives
  a killed process);
- an existing store is checked before it is opened for writing (:func:`check_store`: SQLite
  header, ``PRAGMA quick_check``, tables, schema version); a damaged or empty file is refused
  with :class:`StoreError` and never rewritten in place (opening a zero-length file does not
  put a schema into it);
- :meth:`TrialStore.backup` copies the store with SQLite's online backup API (the runner calls
  it every few finished trials and at the end; :mod:`nasforge.experiment.repair` uses it).

Readers that must not disturb a run (``nasforge dashboard``) open it with
:meth:`TrialStore.open_readonly`: SQLite's ``mode=ro`` plus ``query_only``, so nothing is
created, upgraded, replayed or backed up, and every write method raises :class:`StoreError`.
A WAL reader sees each committed write of the one writer, while it runs and after it was
killed.

A trial's learning curve (validation accuracy per epoch, :meth:`TrialStore.add_curve`) lives
in the ``epochs`` table under phase ``trial/<id>`` (no schema change); :meth:`TrialStore.epochs`
without a phase leaves these out, so weight-sharing readers see only their own phases.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from nasforge.experiment.store_epochs import CURVE_PHASE, EpochRecords, _clean
from nasforge.experiment.store_journal import (
    JOURNAL_STABILITY,
    UNSTABLE_TRIALS_META,
    append_line,
    journal_verdicts,
)
from nasforge.experiment.storefile import (  # re-exported: the store's public file helpers
    _SCHEMA,
    BACKUP_DIR,
    SCHEMA_VERSION,
    SQLITE_HEADER,
    StoreError,
    _create_store_file,
    backup_dir,
    check_store,
    journal_path,
    latest_backup,
    read_journal,
    recovery_hint,
)
from nasforge.space import Arch
from nasforge.strategies.base import Score

STATES = ("running", "complete", "failed", "interrupted")
FINISHED = ("complete", "failed")


@dataclass(frozen=True)
class TrialRecord:
    id: int
    arch: Arch
    state: str
    score: Score
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    cost_seconds: float = 0.0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    worker: str | None = None

    @property
    def key(self) -> str:
        return self.arch.key

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "arch": self.arch.to_dict(),
            "state": self.state,
            "score": list(self.score) if isinstance(self.score, tuple) else self.score,
            "metrics": self.metrics,
            "error": self.error,
            "cost_seconds": self.cost_seconds,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "worker": self.worker,
        }


TRIAL_COLUMNS = (
    "id, key, arch, state, score, metrics, error, cost_seconds, created, started, finished, worker"
)


def row_from_dict(d: dict[str, Any]) -> tuple[Any, ...]:
    """The ``trials`` row (columns ``TRIAL_COLUMNS``) of a :meth:`TrialRecord.to_dict` dict."""
    score = d.get("score")
    return (
        int(d["id"]),
        str(d["key"]),
        d.get("arch_json") or Arch(d["arch"]).to_json(),
        str(d["state"]),
        None if score is None else json.dumps(_clean(score)),
        json.dumps(_clean(d.get("metrics") or {})),
        d.get("error"),
        float(d.get("cost_seconds") or 0.0),
        float(d.get("created") or 0.0),
        d.get("started"),
        d.get("finished"),
        d.get("worker"),
    )


class TrialStore(EpochRecords):
    """The trial store at ``path`` (``":memory:"`` for tests).

    Args:
        path: the SQLite file.
        timeout_s: how long a write waits for another writer.
        create: create the store if the file does not exist; with ``False`` a missing file is
            a :class:`StoreError` (``show``, ``export``, ``--resume`` never create one).

    An existing file is checked first (:func:`check_store`); a damaged one raises
    :class:`StoreError` and is not touched.
    """

    def __init__(
        self,
        path: str | Path,
        timeout_s: float = 60.0,
        *,
        create: bool = True,
        readonly: bool = False,
    ) -> None:
        self.path = str(path)
        self.readonly = readonly
        memory = self.path == ":memory:"
        self._journal: Path | None = None if memory else journal_path(self.path)
        if readonly:
            self._db = self._connect_readonly(timeout_s)
            return
        fresh = False
        if not memory:
            p = Path(self.path)
            if p.exists() or Path(f"{p}-wal").exists() or not create:
                check_store(p)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                _create_store_file(p)
                fresh = True
        self._db = sqlite3.connect(
            self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL (WAL): a commit survives the process being killed; what a power loss may take
            # from the store's last commits is a finished trial already synced to the journal
            # (one fsync per trial, not three), which resume and repair write back
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            if int(self._db.execute("PRAGMA user_version").fetchone()[0]) < SCHEMA_VERSION:
                self._db.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")
        except sqlite3.Error as exc:
            self._db.close()
            if fresh:  # a store this call began and could not finish holds nothing: remove it
                for f in (self.path, f"{self.path}-wal", f"{self.path}-shm"):
                    Path(f).unlink(missing_ok=True)
            raise StoreError(
                f"{self.path}: could not open the store ({exc}); if the disk is full, free "
                "space and retry"
            ) from None

    @classmethod
    def open_readonly(cls, path: str | Path, timeout_s: float = 5.0) -> TrialStore:
        """Open an existing store for reading only (see the module doc).

        Never creates, upgrades, replays or backs up anything; works while the run's writer
        holds its lock and after it was killed (``kill -9``: SQLite's WAL keeps every commit).

        Raises:
            StoreError: the file is missing, empty, damaged or not a store (naming the file).
        """
        return cls(path, timeout_s, create=False, readonly=True)

    def _connect_readonly(self, timeout_s: float) -> sqlite3.Connection:
        if self.path == ":memory:":
            raise StoreError(":memory: a read-only store needs a file")
        p = Path(self.path)
        check_store(p)  # opens it mode=ro itself: a damaged file is refused, never touched
        uri = p.absolute().as_uri() + "?mode=ro"  # as_uri: a path with ?, # or % stays a path
        try:
            db = sqlite3.connect(
                uri, uri=True, timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{p}: cannot be opened read-only ({exc})") from None
        try:
            db.execute("PRAGMA query_only=ON")
            db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            db.execute("SELECT COUNT(*) FROM trials").fetchone()
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"{p}: cannot be read ({exc})") from None
        return db

    def _writable(self, what: str) -> None:
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only; cannot {what}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- safety ---------------------------------------------------------------------------------
    def backup(self, dest: str | Path) -> Path:
        """Copy the store to ``dest`` with SQLite's online backup API (a consistent snapshot,
        taken while the run goes on), check the copy, then move it into place atomically.

        Raises:
            StoreError: the copy fails its integrity check (the previous ``dest`` is kept).
        """
        self._writable("back it up")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.unlink(missing_ok=True)
        out = sqlite3.connect(tmp)
        try:
            self._db.backup(out)
            ok = out.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            out.close()
        if not ok:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"{self.path}: backup to {dest} failed its integrity check")
        os.replace(tmp, dest)
        return dest

    def checkpoint_backup(self, keep: int = 2) -> Path | None:
        """A backup in ``backups/`` named by the number of finished trials; keeps the ``keep``
        newest. ``None`` for an in-memory store."""
        if self.path == ":memory:":
            return None
        stem = Path(self.path).stem
        dest = backup_dir(self.path) / f"{stem}-{self.count(FINISHED):06d}.db"
        self.backup(dest)
        for old in sorted(backup_dir(self.path).glob(f"{stem}-*.db"))[:-keep]:
            old.unlink(missing_ok=True)
        return dest

    def _append_journal(self, record: TrialRecord, extra: dict[str, Any] | None = None) -> None:
        """Append one finished trial to the journal and sync it (before the store write)."""
        self._writable("write its journal")
        if self._journal is not None:
            append_line(
                self._journal,
                record.to_dict() | {"arch_json": record.arch.to_json()} | (extra or {}),
            )

    def journal_stability(self, trial_id: int, stability: dict[str, Any]) -> None:
        """Journal a finished trial again with its unstable-latency verdict, so a replay or a
        repair restores its reasons (:mod:`~nasforge.experiment.store_journal`)."""
        rows = self._rows(f"SELECT {TRIAL_COLUMNS} FROM trials WHERE id=?", (trial_id,))
        if self._journal is None or not rows or (record := rows[0]).state not in FINISHED:
            return
        try:
            self._append_journal(record, {JOURNAL_STABILITY: stability})
        except OSError as exc:
            raise StoreError(
                f"{self._journal}: could not save trial {trial_id}'s latency verdict "
                f"({exc.strerror or exc}); free space, then --resume"
            ) from None

    def journal_gap(self) -> list[int]:
        """Ids of finished trials the journal holds but the store does not show finished."""
        if self._journal is None:
            return []
        journal = read_journal(self._journal)
        if not journal:
            return []
        done = {
            int(r[0])
            for r in self._db.execute("SELECT id FROM trials WHERE state IN ('complete','failed')")
        }
        return sorted(set(journal) - done)

    def replay_journal(self) -> int:
        """Write back finished trials the journal holds and the store lost (a failed or lost
        write); returns how many. Call only as the run's one writer (lock held)."""
        self._writable("replay its journal")
        gap = self.journal_gap()
        if not gap:
            return 0
        journal = read_journal(self._journal) if self._journal is not None else {}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for tid in gap:
                self._db.execute(
                    f"INSERT OR REPLACE INTO trials({TRIAL_COLUMNS}) VALUES ({','.join('?' * 12)})",
                    row_from_dict(journal[tid]),
                )
            carried = journal_verdicts({t: journal[t] for t in gap})  # meta lost them too
            if carried:
                known = self.get_meta(UNSTABLE_TRIALS_META, None)
                known = known if isinstance(known, dict) else {}
                self.set_meta(UNSTABLE_TRIALS_META, carried | known)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.log_event("journal", f"{len(gap)} finished trial(s) restored from the journal: {gap}")
        return len(gap)

    # -- writes ---------------------------------------------------------------------------------
    def add_trial(self, arch: Arch, state: str = "running", worker: str | None = None) -> int:
        now = time.time()
        cur = self._write(
            "INSERT INTO trials(key, arch, state, created, started, worker) VALUES (?,?,?,?,?,?)",
            (arch.key, arch.to_json(), state, now, now if state == "running" else None, worker),
        )
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """One write; an SQLite failure (full disk, I/O error) becomes a :class:`StoreError`."""
        self._writable("write")
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self.path}: could not write to the store ({exc}); every finished trial is "
                "kept; free space if the disk is full, then --resume"
            ) from None

    def finish_trial(
        self,
        trial_id: int,
        state: str,
        metrics: dict[str, float] | None = None,
        score: Score = None,
        cost_seconds: float = 0.0,
        error: str | None = None,
        curve: Sequence[float] | None = None,
        worker: str | None = None,
    ) -> None:
        """Record a trial's outcome; ``worker`` (where it ran: a Ray node, a pool process)
        replaces the one recorded at the start when given. A finished state (``complete``,
        ``failed``) is appended to the journal and synced first, so the result survives a
        failed or lost store write.
        ``curve`` (validation accuracy per epoch, :meth:`add_curve`) is written in the same
        transaction, so a reader sees a complete trial with its curve; it is not journaled (a
        trial restored from the journal has its result, not its curve).

        Raises:
            StoreError: the journal or the store could not be written (a full disk, a file
                size limit, an I/O error); the message says which and what to do.
        """
        self._writable("record a trial")
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        now = time.time()
        curve_rows = self._curve_rows(trial_id, curve)
        score_json = (
            None
            if score is None
            else json.dumps(_clean(list(score) if isinstance(score, tuple) else score))
        )
        if state in FINISHED and self._journal is not None:
            before = self.trial(trial_id)
            record = TrialRecord(
                trial_id,
                before.arch,
                state,
                score,
                dict(metrics or {}),
                error,
                float(cost_seconds),
                before.created,
                before.started,
                now,
                worker or before.worker,
            )
            try:
                self._append_journal(record)
            except OSError as exc:
                raise StoreError(
                    f"{self._journal}: could not save trial {trial_id} ({exc.strerror or exc}): "
                    "the disk is full or a file size limit was reached; free space, then "
                    f"--resume (trial {trial_id} will be run again)"
                ) from None
        # the row and its curve at once (inside a caller's transaction: that one)
        began = bool(curve_rows) and not self._db.in_transaction
        try:
            if began:
                self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE trials SET state=?, score=?, metrics=?, error=?, cost_seconds=?, "
                "finished=?, worker=COALESCE(?, worker) WHERE id=?",
                (
                    state,
                    score_json,
                    json.dumps(_clean(metrics or {})),
                    error,
                    float(cost_seconds),
                    now,
                    worker,
                    trial_id,
                ),
            )
            if curve_rows:
                self._put_curve(trial_id, curve_rows)
            if began:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if began and self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:  # the error below is the one to report
                    pass
            kept = (
                f"its result is kept in {self._journal} and is restored on --resume"
                if state in FINISHED and self._journal is not None
                else "--resume runs it again"
            )
            raise StoreError(
                f"{self.path}: could not record trial {trial_id} ({exc}); {kept}"
            ) from None

    def mark_interrupted(self) -> int:
        """Trials left ``running`` by a killed process become ``interrupted``; returns how many."""
        cur = self._write(
            "UPDATE trials SET state='interrupted', finished=? WHERE state='running'",
            (time.time(),),
        )
        n = cur.rowcount
        if n:
            self.log_event(
                "resume", f"{n} trial(s) left running by a stopped process marked interrupted"
            )
        return n

    def set_meta(self, key: str, value: Any) -> None:
        self._write(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (key, json.dumps(_clean(value))),
        )

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def log_event(self, kind: str, message: str) -> None:
        self._write(
            "INSERT INTO events(time, kind, message) VALUES (?,?,?)", (time.time(), kind, message)
        )

    # -- reads ----------------------------------------------------------------------------------
    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[TrialRecord]:
        out = []
        for r in self._db.execute(sql, args).fetchall():
            score = json.loads(r[4]) if r[4] is not None else None
            out.append(
                TrialRecord(
                    id=r[0],
                    arch=Arch.from_json(r[2]),
                    state=r[3],
                    score=tuple(score) if isinstance(score, list) else score,
                    metrics={
                        k: (float("nan") if v is None else v) for k, v in json.loads(r[5]).items()
                    },
                    error=r[6],
                    cost_seconds=r[7],
                    created=r[8],
                    started=r[9],
                    finished=r[10],
                    worker=r[11],
                )
            )
        return out

    def trials(self, states: tuple[str, ...] | None = None, order: str = "id") -> list[TrialRecord]:
        """All trials (optionally only in ``states``), ordered by ``id`` or ``finished``."""
        order_sql = "finished, id" if order == "finished" else "id"
        if states:
            marks = ",".join("?" * len(states))
            return self._rows(
                f"SELECT {TRIAL_COLUMNS} FROM trials WHERE state IN ({marks}) ORDER BY {order_sql}",
                tuple(states),
            )
        return self._rows(f"SELECT {TRIAL_COLUMNS} FROM trials ORDER BY {order_sql}")

    def trial_dicts(self, states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Every trial (only those in ``states`` when given) in id order, as JSON-ready dicts
        of :meth:`TrialRecord.to_dict`'s fields but ``arch`` (``key`` is kept; a non-finite
        metric is ``None``): a cheap read for live views, which parses no arch."""
        sql = f"SELECT {TRIAL_COLUMNS.replace('arch, ', '')} FROM trials"
        args: tuple[Any, ...] = ()
        if states:
            sql, args = sql + f" WHERE state IN ({','.join('?' * len(states))})", tuple(states)
        names = [c.strip() for c in TRIAL_COLUMNS.replace("arch, ", "").split(",")]
        out = []
        for r in self._db.execute(sql + " ORDER BY id", args).fetchall():
            d = dict(zip(names, r, strict=True))
            d["score"] = json.loads(d["score"]) if d["score"] is not None else None
            d["metrics"] = json.loads(d["metrics"])
            out.append(d)
        return out

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Reads inside see the store at one instant (one WAL read transaction), however
        often its writer commits meanwhile; a read-only view reads everything inside one."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("ROLLBACK")  # nothing was written: ending the read is all

    def trial(self, trial_id: int) -> TrialRecord:
        rows = self._rows(f"SELECT {TRIAL_COLUMNS} FROM trials WHERE id=?", (trial_id,))
        if not rows:
            raise KeyError(trial_id)
        return rows[0]

    def finished_by_key(self, key: str) -> TrialRecord | None:
        rows = self._rows(
            f"SELECT {TRIAL_COLUMNS} FROM trials WHERE key=? AND state IN ('complete','failed') "
            "ORDER BY id LIMIT 1",
            (key,),
        )
        return rows[0] if rows else None

    def count(self, states: tuple[str, ...] | None = None) -> int:
        if states:
            marks = ",".join("?" * len(states))
            return int(
                self._db.execute(
                    f"SELECT COUNT(*) FROM trials WHERE state IN ({marks})", tuple(states)
                ).fetchone()[0]
            )
        return int(self._db.execute("SELECT COUNT(*) FROM trials").fetchone()[0])

    def total_cost_seconds(self) -> float:
        return float(
            self._db.execute("SELECT COALESCE(SUM(cost_seconds), 0) FROM trials").fetchone()[0]
        )

    def events(self) -> list[tuple[float, str, str]]:
        return [
            tuple(r) for r in self._db.execute("SELECT time, kind, message FROM events ORDER BY id")
        ]


__all__ = [
    "BACKUP_DIR",
    "CURVE_PHASE",
    "FINISHED",
    "SCHEMA_VERSION",
    "SQLITE_HEADER",
    "STATES",
    "TRIAL_COLUMNS",
    "StoreError",
    "TrialRecord",
    "TrialStore",
    "backup_dir",
    "check_store",
    "journal_path",
    "latest_backup",
    "read_journal",
    "recovery_hint",
    "row_from_dict",
]
