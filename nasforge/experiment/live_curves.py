"""Live learning curves: a running trial's finished epochs, visible before the trial ends.

While a trial trains, the process that trains it (this one for ``search.executor: inline``, a
pool worker for ``process``) appends one JSON line per finished epoch to
``<run>/live/<trial id>.jsonl``::

    {"epoch": 1, "val_acc": 0.61, "loss": 1.42, "t": 1764689000.1}

``epoch`` counts from 1 (the store's curves do); the other keys are whatever the evaluator
reports per epoch (the ``train`` evaluator: ``loss`` and ``val_acc``), ``t`` the wall clock.
Each line is one ``write`` to a file opened for appending and closed again, so a reader sees
whole lines, and at worst a torn last one (a writer killed mid-write), which readers skip.

The run's process removes a trial's file right after it records the trial's finish (the store
holds the whole curve from then on), removes every file left when a search starts or resumes
(a process killed with ``kill -9`` leaves its running trials' files behind) and when it is
interrupted. ``nasforge dashboard`` (:mod:`nasforge.dashboard.data`) reads the files of the
trials the store says are running while a live process holds the run's lock, so a stale file
is never shown as running, and never writes them.

A Ray worker writes its trials' lines when the run directory is reachable where it runs (the
driver's host, or a file system shared with it); a worker on another node without the run
directory writes nothing, and its trials' curves appear when they finish.

A trial that continues a lower rung's checkpoint (multi-fidelity) first writes the epochs the
checkpoint holds (:meth:`LiveCurveReporter.replay`: ``val_acc`` only, the checkpoint keeps no
loss), then its own: its live curve starts at epoch 1, as the store's curve does when the trial
finishes. A checkpoint saved without its curve leaves the gap (those epochs are ``None``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nasforge.evaluators.base import Reporter

log = logging.getLogger("nasforge.live")

LIVE_DIR = "live"
SUFFIX = ".jsonl"
#: lines of a trial's file a reader keeps (its newest)
MAX_LINES = 1000
#: bytes read from the end of a file: ``MAX_LINES`` lines of a few metrics fit well within
MAX_BYTES = 256 * 1024
#: a line naming a later epoch is garbage (a dense curve that long would be megabytes)
MAX_EPOCH = 10_000


def live_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / LIVE_DIR


def live_path(run_dir: str | Path, trial_id: int) -> Path:
    """``<run>/live/<trial id>.jsonl`` (the id is an int: never a path from elsewhere)."""
    return live_dir(run_dir) / f"{int(trial_id)}{SUFFIX}"


class LiveCurveReporter(Reporter):
    """Appends each reported epoch to the trial's live file, then passes it on to ``inner``
    (a multi-fidelity stopper or any other reporter: it still decides, and may raise
    :class:`~nasforge.evaluators.base.StopTrial`; the epoch is on disk either way).

    ``step`` is the evaluator's epoch index from 0 (:func:`nasforge.train.train_model`'s),
    written as ``epoch = step + 1``. A file that cannot be written (disk full, read-only run
    directory) stops the live lines of this trial after one warning in the worker's log; the
    trial itself goes on.
    """

    def __init__(
        self, path: str | Path, inner: Callable[[int, dict[str, float]], None] | None = None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.inner = inner
        self.broken = False

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        super().__call__(step, metrics)
        if not self.broken:
            self._append(step, metrics)
        if self.inner is not None:
            self.inner(step, metrics)

    def replay(self, step: int, metrics: dict[str, float]) -> None:
        """A continued rung's earlier epoch (its checkpoint's curve): written to the live file
        like a new one, but not recorded in :attr:`values`, and passed on only to ``inner``'s
        own ``replay`` (a stopper's does nothing: it judged that epoch in the rung that
        trained it)."""
        if not self.broken:
            self._append(step, metrics)
        replay = getattr(self.inner, "replay", None)
        if callable(replay):
            replay(step, metrics)

    def _append(self, step: int, metrics: dict[str, float]) -> None:
        record: dict[str, Any] = {"epoch": int(step) + 1}
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                record[str(k)] = float(v) if math.isfinite(v) else None
        record["t"] = round(time.time(), 3)
        line = (json.dumps(record, allow_nan=False) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)  # one write of one line: readers never see half of it
            finally:
                os.close(fd)
        except OSError as exc:
            self.broken = True
            log.warning("live curve of %s not written (%s); the trial goes on", self.path, exc)


def payload_reporter(payload: dict[str, Any]) -> LiveCurveReporter | None:
    """The live reporter of an executor's payload: ``None`` unless the loop asked for live
    lines (``"live"``), named the trial and the run directory exists here (a Ray worker on
    another node has none: its trial's curve shows at the end)."""
    run_dir, tid = payload.get("run_dir"), payload.get("trial_id")
    if not payload.get("live") or run_dir is None or not isinstance(tid, int):
        return None
    if not Path(run_dir).is_dir():
        return None
    return LiveCurveReporter(live_path(run_dir, tid))


def evaluate_with(ev: Any, arch: Any, budget: Any, reporter: Reporter | None) -> Any:
    """``ev.evaluate(arch, budget, reporter=reporter)``, or without the reporter when there is
    none or the evaluator (a plugin's) takes no ``reporter`` argument."""
    if reporter is None or not _takes_reporter(ev.evaluate):
        return ev.evaluate(arch, budget)
    return ev.evaluate(arch, budget, reporter=reporter)


def _takes_reporter(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "reporter" or p.kind is p.VAR_KEYWORD for p in params)


def remove_live(run_dir: str | Path, trial_id: int) -> None:
    """Remove a finished trial's live file (the store has its curve now); missing is fine."""
    try:
        live_path(run_dir, trial_id).unlink(missing_ok=True)
    except OSError:
        pass  # a file left behind is removed at the next start, and never shown as running


def clear_live(run_dir: str | Path) -> int:
    """Remove every live file of the run, and the ``live`` folder once it is empty (none of
    its trials runs now: the caller holds the run's lock and has no trial in flight); returns
    how many files were removed."""
    folder = live_dir(run_dir)
    n = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for p in entries:
        if p.suffix == SUFFIX and p.stem.isdigit():
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    try:
        folder.rmdir()
    except OSError:  # not empty (a file of another kind) or already gone: left as it is
        pass
    return n


# -- reading (the dashboard: read-only) ------------------------------------------------------------
def read_live(path: str | Path, max_lines: int = MAX_LINES) -> list[dict[str, Any]]:
    """The newest ``max_lines`` whole, valid lines of a live file (oldest first), each a dict
    with an int ``epoch`` in 1..:data:`MAX_EPOCH` and finite numbers (others ``None``).

    Never raises for a bad file: a missing or unreadable file is ``[]``; a torn last line, a
    line that is not JSON or not such a record is skipped. At most :data:`MAX_BYTES` are read
    (from the end)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start = max(0, size - MAX_BYTES)
            fh.seek(start)
            data = fh.read(MAX_BYTES)
    except OSError:
        return []
    lines = data.split(b"\n")[:-1]  # after the last newline: empty, or a torn line
    if start > 0 and lines:
        lines = lines[1:]  # begins mid-line
    out: list[dict[str, Any]] = []
    for raw in lines[-max_lines:]:
        rec = _record(raw)
        if rec is not None:
            out.append(rec)
    return out


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    epoch = obj.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 1 <= epoch <= MAX_EPOCH:
        return None
    rec: dict[str, Any] = {"epoch": epoch}
    for k, v in obj.items():
        if k == "epoch" or not isinstance(k, str) or len(k) > 100:
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            rec[k] = float(v)
        elif v is None:
            rec[k] = None
    return rec


def live_curve(records: Iterable[dict[str, Any]], metric: str = "val_acc") -> list[float | None]:
    """``metric`` per epoch from epoch 1 (the store's curve format), ``None`` where no line
    gives it (a continued rung's earlier epochs); a later line of the same epoch wins."""
    by_epoch = {int(r["epoch"]): r.get(metric) for r in records}
    if not by_epoch:
        return []
    curve: list[float | None] = [None] * max(by_epoch)
    for epoch, v in by_epoch.items():
        curve[epoch - 1] = v if isinstance(v, float) else None
    return curve


def live_series(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One running trial's lines for the page: ``epochs``, ``val_acc``, ``loss`` (``None``
    where a line lacks it) and ``updated`` (the newest line's time)."""
    last = {int(r["epoch"]): r for r in records}  # a later line of the same epoch wins
    epochs = sorted(last)
    times = [t for r in records if isinstance(t := r.get("t"), float)]
    return {
        "epochs": epochs,
        "val_acc": [last[e].get("val_acc") for e in epochs],
        "loss": [last[e].get("loss") for e in epochs],
        "updated": max(times) if times else None,
    }


def read_running(
    run_dir: str | Path, trial_ids: Iterable[int], limit: int
) -> dict[int, list[dict[str, Any]]]:
    """The live lines of at most ``limit`` of ``trial_ids`` (the newest ids), only those with
    a file holding at least one valid line."""
    out: dict[int, list[dict[str, Any]]] = {}
    for tid in sorted(set(trial_ids), reverse=True)[: max(0, limit)]:
        records = read_live(live_path(run_dir, tid))
        if records:
            out[tid] = records
    return out
