"""SQLite (WAL) trial store: the source of truth of a run.

Every trial is one row: its arch, state (``running``, ``complete``, ``failed``,
``interrupted``), score, metrics, error, cost and timings. Several processes may open the
same file and write to it; SQLite serialises the writes (WAL mode, busy timeout).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from nasforge.space import Arch
from nasforge.strategies.base import Score

STATES = ("running", "complete", "failed", "interrupted")
FINISHED = ("complete", "failed")

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
"""


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


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: store them as None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class TrialStore:
    """Open (creating if needed) the store at ``path``; ``":memory:"`` for tests."""

    def __init__(self, path: str | Path, timeout_s: float = 60.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------------
    def add_trial(self, arch: Arch, state: str = "running", worker: str | None = None) -> int:
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO trials(key, arch, state, created, started, worker) VALUES (?,?,?,?,?,?)",
            (arch.key, arch.to_json(), state, now, now if state == "running" else None, worker),
        )
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def finish_trial(
        self,
        trial_id: int,
        state: str,
        metrics: dict[str, float] | None = None,
        score: Score = None,
        cost_seconds: float = 0.0,
        error: str | None = None,
    ) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        score_json = (
            None
            if score is None
            else json.dumps(_clean(list(score) if isinstance(score, tuple) else score))
        )
        self._db.execute(
            "UPDATE trials SET state=?, score=?, metrics=?, error=?, cost_seconds=?, finished=? "
            "WHERE id=?",
            (
                state,
                score_json,
                json.dumps(_clean(metrics or {})),
                error,
                float(cost_seconds),
                time.time(),
                trial_id,
            ),
        )

    def mark_interrupted(self) -> int:
        """Trials left ``running`` by a killed process become ``interrupted``; returns how many."""
        cur = self._db.execute(
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
        self._db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (key, json.dumps(_clean(value))),
        )

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def log_event(self, kind: str, message: str) -> None:
        self._db.execute(
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

    _COLS = (
        "id, key, arch, state, score, metrics, error, cost_seconds, created, started, finished, "
        "worker"
    )

    def trials(self, states: tuple[str, ...] | None = None, order: str = "id") -> list[TrialRecord]:
        """All trials (optionally only in ``states``), ordered by ``id`` or ``finished``."""
        order_sql = "finished, id" if order == "finished" else "id"
        if states:
            marks = ",".join("?" * len(states))
            return self._rows(
                f"SELECT {self._COLS} FROM trials WHERE state IN ({marks}) ORDER BY {order_sql}",
                tuple(states),
            )
        return self._rows(f"SELECT {self._COLS} FROM trials ORDER BY {order_sql}")

    def trial(self, trial_id: int) -> TrialRecord:
        rows = self._rows(f"SELECT {self._COLS} FROM trials WHERE id=?", (trial_id,))
        if not rows:
            raise KeyError(trial_id)
        return rows[0]

    def finished_by_key(self, key: str) -> TrialRecord | None:
        rows = self._rows(
            f"SELECT {self._COLS} FROM trials WHERE key=? AND state IN ('complete','failed') "
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
