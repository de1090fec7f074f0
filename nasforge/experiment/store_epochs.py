"""The ``epochs`` table of a store: per-epoch records of weight-sharing phases (``darts``,
``supernet``, ``ofa``) and trials' learning curves (phase ``trial/<id>``, one row per epoch,
``{"val_acc": ...}``). A mixin of :class:`~nasforge.experiment.store.TrialStore`, which
re-exports :data:`CURVE_PHASE`; kept apart so the store module stays one concept per file.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from nasforge.experiment.storefile import StoreError

#: the ``epochs`` phase of a trial's curve is this prefix + the trial id (``trial/12``)
CURVE_PHASE = "trial/"
# the phases of curves as a range, so a query uses the (phase, epoch) index ("0" follows "/")
_CURVE_RANGE = (CURVE_PHASE, CURVE_PHASE[:-1] + "0")


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: store them as None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _float(v: Any) -> float:
    """A curve's value; anything but a number (an evaluator's ``None``) is stored as null."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


class EpochRecords:
    """Reads and writes of the ``epochs`` table (the store's ``_db``, ``path``, ``readonly``,
    ``_write`` and ``_writable`` are :class:`~nasforge.experiment.store.TrialStore`'s)."""

    _db: sqlite3.Connection
    path: str
    readonly: bool

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        raise NotImplementedError

    def _writable(self, what: str) -> None:
        raise NotImplementedError

    def add_epoch(self, phase: str, epoch: int, record: dict[str, Any]) -> None:
        """Record one epoch of a weight-sharing phase (``"darts"``, ``"supernet"``, ...); a
        record for the same ``(phase, epoch)`` (an epoch run again after a resume) replaces it.
        ``record`` must be JSON-ready (non-finite floats are stored as ``null``)."""
        self._write(
            "INSERT OR REPLACE INTO epochs(phase, epoch, time, record) VALUES (?,?,?,?)",
            (phase, int(epoch), time.time(), json.dumps(_clean(record))),
        )

    def epochs(self, phase: str | None = None) -> list[dict[str, Any]]:
        """The recorded epochs of ``phase`` in epoch order; ``None``: every weight-sharing phase
        (trials' curves, phases ``trial/<id>``, are left out: :meth:`curves` reads them); each
        record as given to :meth:`add_epoch`, with ``phase`` and ``epoch`` set."""
        sql = "SELECT phase, epoch, record FROM epochs"
        args: tuple[Any, ...] = ()
        if phase is not None:
            sql, args = sql + " WHERE phase=?", (phase,)
        else:
            sql, args = sql + " WHERE NOT (phase >= ? AND phase < ?)", _CURVE_RANGE
        out = []
        for ph, ep, rec in self._read(sql + " ORDER BY phase, epoch", args):
            out.append({**json.loads(rec), "phase": ph, "epoch": int(ep)})
        return out

    def add_curve(self, trial_id: int, curve: Sequence[float]) -> None:
        """Record trial ``trial_id``'s learning curve: ``curve[i]`` is its validation accuracy
        after epoch ``i + 1``. Replaces a curve recorded before for that id; an empty curve
        records nothing, and so does anything but a list or tuple (an evaluator's own ``info``
        may hold anything). One transaction: a reader sees all of it or none. (The loop
        records a trial's curve with its outcome: ``finish_trial(..., curve=...)``.)"""
        rows = self._curve_rows(trial_id, curve)
        if not rows:
            return
        self._writable("record a curve")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._put_curve(trial_id, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self.path}: could not record trial {trial_id}'s curve ({exc}); free space if "
                "the disk is full"
            ) from None

    @staticmethod
    def _curve_rows(trial_id: int, curve: Any) -> list[tuple[str, int, float, str]]:
        """The ``epochs`` rows of a curve (none for an empty one or one that is no list)."""
        if not isinstance(curve, (list, tuple)) or not curve:
            return []
        phase, now = f"{CURVE_PHASE}{int(trial_id)}", time.time()
        return [
            (phase, i + 1, now, json.dumps(_clean({"val_acc": _float(v)})))
            for i, v in enumerate(curve)
        ]

    def _put_curve(self, trial_id: int, rows: list[tuple[str, int, float, str]]) -> None:
        """Replace the trial's curve by ``rows``; the caller holds the write transaction."""
        self._db.execute("DELETE FROM epochs WHERE phase=?", (f"{CURVE_PHASE}{int(trial_id)}",))
        self._db.executemany(
            "INSERT INTO epochs(phase, epoch, time, record) VALUES (?,?,?,?)", rows
        )

    def curve(self, trial_id: int) -> list[float]:
        """Trial ``trial_id``'s validation accuracy per epoch (``nan`` where not finite); ``[]``
        when none was recorded (a table evaluator, a failed trial, a store from before)."""
        return self.curves([trial_id]).get(int(trial_id), [])

    def curves(self, trial_ids: Sequence[int] | None = None) -> dict[int, list[float]]:
        """Recorded curves by trial id (of ``trial_ids`` only, when given), as :meth:`curve`."""
        if trial_ids is not None:
            ids = [int(t) for t in trial_ids]
            if not ids:
                return {}
            marks = ",".join("?" * len(ids))
            sql = f"SELECT phase, record FROM epochs WHERE phase IN ({marks}) ORDER BY phase, epoch"
            args: tuple[Any, ...] = tuple(f"{CURVE_PHASE}{t}" for t in ids)
        else:
            sql = "SELECT phase, record FROM epochs WHERE phase >= ? AND phase < ? "
            sql += "ORDER BY phase, epoch"
            args = _CURVE_RANGE
        out: dict[int, list[float]] = {}
        for ph, rec in self._read(sql, args):
            v = json.loads(rec).get("val_acc")
            out.setdefault(int(ph[len(CURVE_PHASE) :]), []).append(
                float("nan") if v is None else float(v)
            )
        return out

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows of an ``epochs`` query; a read-only store from before that table has none."""
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlite3.OperationalError as exc:
            if self.readonly and "no such table" in str(exc):
                return []
            raise
