"""What ``nasforge repair`` salvages besides the trials: the ``epochs`` table (weight-sharing
phases' per-epoch records and trials' learning curves), ``meta`` and ``events``, and the
reasons of trials whose measured latency stayed unstable.

Each table is read from the damaged store's copy and from the newest backup row by row where a
whole scan fails (:func:`salvage_table`), and the two are merged: the store's row wins over the
backup's (it is newer), keyed by ``(phase, epoch)`` for epochs, by id for events and by key for
meta. A trial's unstable-latency reasons live in the meta
:data:`~nasforge.experiment.latency_verdict.UNSTABLE_TRIALS_META`; they are merged per trial, and
for a trial flagged unstable whose reasons neither copy of meta holds (a trial restored from the
journal), they are taken from the journal, which carries the whole verdict
(:mod:`~nasforge.experiment.store_journal`), else (an older journal, without verdicts) read back
from the ``latency_unstable`` events and then from the run's progress log, which say them in
words (:func:`recover_reasons`).

SQLite has no salvage API for a damaged b-tree (``.recover`` is the sqlite3 shell's, not the
library's), so the row-by-row reading is written here: seeks by rowid past damaged pages.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasforge.experiment.latency_verdict import UNSTABLE_TRIALS_META, is_unstable
from nasforge.experiment.progress import LOG_NAME
from nasforge.hardware.noise import UNSTABLE, Stability

Row = tuple[Any, ...]

# how many times a damaged stretch is skipped (each skip twice as far as the one before: 2**48
# rowids covers any table) before the rest of a table is given up
_MAX_SKIPS = 48
# rowids a damaged stretch hides below the last row read, retried one at a time (a bound, so a
# store whose rowids jumped far cannot make repair probe for minutes)
_MAX_PROBES = 1 << 16

EPOCH_COLUMNS = "phase, epoch, time, record"
_EVENT_RE = re.compile(rf"^trial (\d+): latency \S+ ms \({re.escape(UNSTABLE)} \((.*)\)\)$")
# a progress line: "trial 7 complete (3/9): val_acc 0.5, latency_ms 3.21 (<label>), flops ..."
_LOG_RE = re.compile(
    rf"\btrial (\d+) complete\b.*?\blatency_ms \S+ \({re.escape(UNSTABLE)} \((.*?)\)\)(?=, |; |$)"
)


@dataclass(frozen=True)
class TableSalvage:
    """The readable rows of one table (rowid -> the row's columns) and whether the whole table
    was read (``False``: a damaged page hid some rows, or the table could not be read at all)."""

    rows: dict[int, Row]
    complete: bool


def salvage_table(db: sqlite3.Connection | None, table: str, columns: str) -> TableSalvage:
    """Every readable row of ``table``: one scan in rowid order; where it fails, a seek past
    the damaged stretch (skips that double until a row reads again), then the skipped rowids
    below the last row read one at a time. ``db=None`` (no file) gives nothing, incomplete."""
    if db is None:
        return TableSalvage({}, False)
    scan = f"SELECT rowid, {columns} FROM {table} WHERE rowid > ? ORDER BY rowid"
    one = f"SELECT rowid, {columns} FROM {table} WHERE rowid = ?"
    out: dict[int, Row] = {}
    after, step, skipped, complete = 0, 1, [], True
    for _ in range(_MAX_SKIPS):
        try:
            for r in db.execute(scan, (after,)):
                out[int(r[0])] = tuple(r[1:])
                after, step = int(r[0]), 1
            break
        except sqlite3.Error as exc:
            if "no such table" in str(exc):  # every store has all tables: its schema is damaged
                return TableSalvage(out, False)
            complete = False
            skipped.append((after + 1, after + step))
            after, step = after + step, step * 2
    else:
        complete = False
    last, probes = max(out, default=0), 0
    for lo, hi in skipped:
        for rid in range(lo, min(hi, last) + 1):
            if probes >= _MAX_PROBES:
                break
            probes += 1
            try:
                r = db.execute(one, (rid,)).fetchone()
            except sqlite3.Error:
                continue
            if r is not None:
                out[int(r[0])] = tuple(r[1:])
    return TableSalvage(out, complete)


def _json(text: Any, kind: type) -> Any:
    """``text`` parsed as JSON of type ``kind``, else ``None`` (a damaged page's garbage)."""
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, kind) else None


def _epoch_ok(r: Row) -> bool:
    return (
        len(r) == 4
        and isinstance(r[0], str)
        and bool(r[0])
        and isinstance(r[1], int)
        and isinstance(r[2], (int, float))
        and _json(r[3], dict) is not None
    )


def _event_ok(r: Row) -> bool:
    return (
        len(r) == 3
        and isinstance(r[0], (int, float))
        and isinstance(r[1], str)
        and isinstance(r[2], str)
    )


def _meta_ok(r: Row) -> bool:
    if len(r) != 2 or not isinstance(r[0], str) or not isinstance(r[1], str):
        return False
    try:
        json.loads(r[1])  # any JSON value, null included (set_meta(key, None))
    except ValueError:
        return False
    return True


def _merge(
    store: TableSalvage, backup: TableSalvage, key: Callable[[int, Row], Any], ok: Callable
) -> dict[Any, Row]:
    """Valid rows keyed by ``key(rowid, row)``: the store's alone where it was read in full (a
    backup's row the store has since deleted stays deleted), else both, the store's row winning
    (it is newer)."""
    merged: dict[Any, Row] = {}
    for rowid, r in backup.rows.items() if not store.complete else ():
        if ok(r):
            merged[key(rowid, r)] = r
    for rowid, r in store.rows.items():
        if ok(r):
            merged[key(rowid, r)] = r
    return merged


@dataclass
class Salvaged:
    """The merged side tables, ready to insert, and what could not be read (one line each)."""

    epochs: list[Row] = field(default_factory=list)
    events: list[Row] = field(default_factory=list)  # (id, time, kind, message)
    meta: list[Row] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def salvage_side_tables(
    old: sqlite3.Connection | None, bak: sqlite3.Connection | None, store_name: str
) -> Salvaged:
    """The ``epochs``, ``events`` and ``meta`` rows of the damaged store (``old``, a copy)
    merged with the backup's (``bak``); ``unreadable`` names each table of the store that
    could not be read in full, and whether the backup made up for it."""
    out = Salvaged()
    what = {
        "epochs": "per-epoch records and learning curves",
        "events": "the run's event log",
        "meta": "run metadata (strategy state, unstable-latency reasons)",
    }
    tables = {
        "epochs": (EPOCH_COLUMNS, lambda i, r: (r[0], r[1]), _epoch_ok),
        "events": ("time, kind, message", lambda i, r: i, _event_ok),
        "meta": ("key, value", lambda i, r: r[0], _meta_ok),
    }
    for table, (columns, key, ok) in tables.items():
        mine = salvage_table(old, table, columns)
        theirs = salvage_table(bak, table, columns)
        merged = _merge(mine, theirs, key, ok)
        if old is not None and not mine.complete:
            backed = " (rows the backup holds were taken from it)" if bak is not None else ""
            out.unreadable.append(
                f"{store_name}'s {table} table ({what[table]}): damaged, "
                f"{sum(1 for r in mine.rows.values() if ok(r))} row(s) read{backed}"
            )
        if bak is not None and not theirs.complete:
            out.unreadable.append(f"the backup's {table} table: damaged, read in part")
        if table == "epochs":
            out.epochs = [merged[k] for k in sorted(merged)]
        elif table == "events":
            out.events = [(k, *merged[k]) for k in sorted(merged)]
        else:
            out.meta = _merge_meta(mine, theirs, merged)
    return out


def _merge_meta(mine: TableSalvage, theirs: TableSalvage, merged: dict[Any, Row]) -> list[Row]:
    """Meta rows by key (the store's wins), except the unstable-latency reasons, which are
    merged per trial: the backup may hold a trial's reasons that a damaged store lost."""
    verdicts: dict[str, Any] = {}
    for source in (theirs, mine) if not mine.complete else (mine,):
        for r in source.rows.values():
            if _meta_ok(r) and r[0] == UNSTABLE_TRIALS_META:
                verdicts.update(_json(r[1], dict) or {})
    if verdicts:
        merged[UNSTABLE_TRIALS_META] = (UNSTABLE_TRIALS_META, json.dumps(verdicts))
    return [merged[k] for k in sorted(merged)]


def _reasons(text: str) -> tuple[str, ...]:
    return tuple(r for r in text.split("; ") if r)


def recover_reasons(
    meta: list[Row],
    unstable_ids: Iterable[int],
    events: Iterable[Row],
    run: Path,
    journaled: Mapping[str, Any] | None = None,
) -> tuple[list[Row], list[int]]:
    """Meta rows with a verdict for every trial in ``unstable_ids`` that can be found: the
    merged meta's, else the journal's (``journaled``, from
    :func:`~nasforge.experiment.store_journal.journal_verdicts`: the whole verdict), else the
    trial's ``latency_unstable`` event, else its progress-log line (reasons only: the numbers
    of a verdict are not in its words). Returns the rows and the ids of unstable trials whose
    reasons were found nowhere."""
    known: dict[str, Any] = {str(k): v for k, v in meta}
    verdicts: dict[str, Any] = _json(known.get(UNSTABLE_TRIALS_META), dict) or {}
    missing = [t for t in sorted(set(unstable_ids)) if str(t) not in verdicts]
    journaled = journaled or {}
    if any(str(t) in journaled for t in missing):
        verdicts.update({str(t): journaled[str(t)] for t in missing if str(t) in journaled})
        missing = [t for t in missing if str(t) not in journaled]
        known[UNSTABLE_TRIALS_META] = json.dumps(verdicts)
        meta = [(k, known[k]) for k in sorted(known)]
    if not missing:
        return meta, []
    said: dict[int, tuple[str, ...]] = {}
    for _, _, kind, message in events:
        m = _EVENT_RE.match(message) if kind == "latency_unstable" else None
        if m:
            said[int(m.group(1))] = _reasons(m.group(2))
    logged: dict[int, tuple[str, ...]] = {}
    for line in _log_lines(run / LOG_NAME):
        m = _LOG_RE.search(line)
        if m:  # a trial's last line wins (a resumed run appends), as its last event does
            logged[int(m.group(1))] = _reasons(m.group(2))
    said = {**logged, **said}
    lost = []
    for tid in missing:
        if said.get(tid):
            verdicts[str(tid)] = Stability(stable=False, reasons=said[tid]).to_dict()
        else:
            lost.append(tid)
    known[UNSTABLE_TRIALS_META] = json.dumps(verdicts)
    return [(k, known[k]) for k in sorted(known)], lost


def _log_lines(path: Path) -> list[str]:
    """The progress log's lines ([] without one); undecodable bytes are replaced, not fatal."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def unstable_trial_ids(rows: Mapping[int, Row]) -> list[int]:
    """Ids of rebuilt ``trials`` rows (``TRIAL_COLUMNS``) whose metrics flag the measured
    latency unstable."""
    return [tid for tid, r in rows.items() if is_unstable(_json(r[5], dict) or {})]
