"""Fault injection for the trial store: the harness behind tests/test_store_faults.py and
benchmarks/reliability.py.

A reference search (an instant evaluator, so a run takes milliseconds) is run with a hook
after every write of the store and of its journal; at each such *fault point* the on-disk
state is captured as it would be after a power loss there (store, WAL, journal, backups; the
shared-memory index is dropped), plus torn variants (the WAL or the journal cut inside its
last record). Each captured state is then resumed and classified:

- ``survived``: ``--resume`` continued and finished the budget with every trial that had
  finished at the fault point, unchanged, and no network evaluated twice;
- ``refused``: the store was refused with a one-line error naming ``nasforge repair``;
  after ``repair`` the resume kept every finished trial (else ``lost``);
- ``lost``: a finished trial is missing or changed; ``silent_restart``: the resume started
  over (fewer finished trials than before without an error). Both must never happen.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from nasforge.experiment import report
from nasforge.experiment.config import ExperimentConfig, parse_config
from nasforge.experiment.repair import repair_run
from nasforge.experiment.runner import Experiment
from nasforge.experiment.store import StoreError, TrialStore

SPACE_OPTIONS: dict[str, Any] = {
    "stages": [[8, 1, 2], [16, 1, 2]],
    "kernels": [3, 5, 7],
    "expands": [1, 3, 6],
    "se": [False, True],
}
SPACE = {"name": "mobile", "options": SPACE_OPTIONS}


class RunConfig:
    """A config and the directory its run lives in (the config's runs_dir is not used, so
    a captured run can be resumed anywhere)."""

    def __init__(self, root: Path, trials: int) -> None:
        self.root = root
        self.run_dir = root / "f"
        self.config = _config(trials)


def make_config(root: Path, trials: int) -> RunConfig:
    return RunConfig(root, trials)


def _config(trials: int) -> ExperimentConfig:
    return parse_config(
        {
            "name": "f",
            "plugins": ["fault_plugin"],
            "evaluator": {"kind": "instant"},
            "space": SPACE,
            "strategy": {"name": "random"},
            "objective": {"kind": "accuracy"},
            "search": {"trials": trials},
        }
    )


@contextmanager
def _no_report() -> Iterator[None]:
    """The HTML report (plots) is not under test here and costs most of a tiny run."""
    orig = report.write_report
    report.write_report = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        report.write_report = orig  # type: ignore[assignment]


def run_search(
    cfg: RunConfig, resume: bool = False, backup_every: int = 4, backup_min_interval_s: float = 0.0
) -> None:
    exp = Experiment(
        cfg.config,
        cfg.run_dir,
        console=Console(quiet=True),
        progress=False,
        backup_every=backup_every,
        backup_min_interval_s=backup_min_interval_s,
    )
    with _no_report():
        exp.run(resume=resume, final=False)


Truth = dict[int, tuple[str, dict[str, float]]]  # finished trial id -> (state, metrics)


def finished_truth(db: Path) -> Truth:
    with TrialStore(db, create=False) as s:
        return {t.id: (t.state, t.metrics) for t in s.trials(("complete", "failed"))}


@dataclass
class Point:
    """One captured fault point: where, which variant, the trials finished by then."""

    where: str
    variant: str
    snapshot: Path
    truth: Truth


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, kind: str, outcome: str, detail: str = "") -> None:
        self.outcomes[outcome] += 1
        self.by_kind.setdefault(kind, Counter())[outcome] += 1
        if outcome in ("lost", "silent_restart"):
            self.failures.append(f"{kind}: {outcome} {detail}")

    @property
    def points(self) -> int:
        return sum(self.outcomes.values())


def _copy_run(run: Path, dest: Path, *, torn: str | None, rng: random.Random) -> None:
    dest.mkdir(parents=True)
    for f in run.iterdir():
        if f.name.endswith("-shm") or f.name == ".lock":
            continue  # shared memory does not survive a power loss; a lock dies with its process
        if f.is_dir():
            shutil.copytree(f, dest / f.name)
        else:
            shutil.copyfile(f, dest / f.name)
    if torn == "wal":
        wal = dest / "trials.db-wal"
        if wal.is_file() and wal.stat().st_size > 32:
            size = wal.stat().st_size
            # cut inside the last frames (a write the power loss interrupted)
            cut = rng.randint(max(32, size - 3 * 4120), size - 1)
            with wal.open("r+b") as fh:
                fh.truncate(cut)
    elif torn == "journal":
        journal = dest / "trials.jsonl"
        if journal.is_file() and journal.stat().st_size > 2:
            data = journal.read_bytes()
            last = data.rstrip(b"\n").rfind(b"\n") + 1
            journal.write_bytes(data[: rng.randint(last + 1, len(data) - 1)])


@contextmanager
def capture_points(
    run: Path, out: Path, variants: tuple[str | None, ...] = (None, "wal", "journal"), seed: int = 0
) -> Iterator[list[Point]]:
    """While active, every store write and journal append of the run in ``run`` is a fault
    point: its on-disk state (and torn variants) is copied under ``out``."""
    points: list[Point] = []
    rng = random.Random(seed)
    orig_write, orig_journal = TrialStore._write, TrialStore._append_journal
    truth: Truth = {}
    orig_finish = TrialStore.finish_trial

    def snap(where: str) -> None:
        if not (run / "trials.db").is_file():
            return
        for variant in variants:
            dest = out / f"p{len(points):04d}"
            _copy_run(run, dest, torn=variant, rng=rng)
            points.append(Point(where, variant or "clean", dest, dict(truth)))

    def write(self: TrialStore, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        cur = orig_write(self, sql, args)
        snap("after a store write")
        return cur

    def journal(self: TrialStore, record: Any) -> None:
        orig_journal(self, record)
        snap("after a journal append, before the store update")

    def finish(self: TrialStore, trial_id: int, state: str, *a: Any, **k: Any) -> None:
        orig_finish(self, trial_id, state, *a, **k)
        if state in ("complete", "failed"):
            truth[trial_id] = (state, self.trial(trial_id).metrics)
        snap("after a trial finished")

    TrialStore._write = write  # type: ignore[method-assign]
    TrialStore._append_journal = journal  # type: ignore[method-assign]
    TrialStore.finish_trial = finish  # type: ignore[method-assign]
    try:
        yield points
    finally:
        TrialStore._write = orig_write  # type: ignore[method-assign]
        TrialStore._append_journal = orig_journal  # type: ignore[method-assign]
        TrialStore.finish_trial = orig_finish  # type: ignore[method-assign]


def resume_and_classify(
    snapshot: Path, truth: Truth, trials: int, tally: Tally, kind: str, root: Path
) -> str:
    """Put ``snapshot`` in place as run ``f`` under ``root``, ``--resume`` it, classify."""
    run = root / "f"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(snapshot, run)
    cfg = make_config(root, trials)
    outcome = "survived"
    try:
        run_search(cfg, resume=True)
    except StoreError as exc:
        msg = str(exc)
        if "\n" in msg or "nasforge repair" not in msg:
            tally.add(kind, "unclear_error", msg)
            return "unclear_error"
        outcome = "refused"
        repair_run(run)
        run_search(cfg, resume=True)
    after = finished_truth(run / "trials.db")
    with TrialStore(run / "trials.db", create=False) as s:
        complete = s.trials(("complete", "failed"))
        keys = [t.key for t in complete]
    missing = [tid for tid, v in truth.items() if after.get(tid) != v]
    if truth and len(set(truth) & set(after)) == 0:
        outcome = "silent_restart"
    elif missing:
        outcome = "lost"
    elif len(complete) != trials or len(set(keys)) != len(keys):
        outcome = "lost"  # the budget was not met or a network was evaluated twice
    tally.add(kind, outcome, f"{snapshot.name}: missing {missing}")
    return outcome


def inject(
    kind: str,
    fault: Callable[[], Any],
    root: Path,
    trials: int,
    tally: Tally,
) -> str:
    """Run a search under ``fault`` (a context manager factory that makes a write fail), then
    ``--resume`` without it and classify. The run must stop with a clear error, not a
    traceback of a raw exception."""
    run = root / "f"
    cfg = make_config(root, trials)
    error: BaseException | None = None
    try:
        with fault():
            run_search(cfg)
    except StoreError as exc:
        error = exc
    if error is None:
        tally.add(kind, "no_fault")
        return "no_fault"
    truth = finished_truth(run / "trials.db") if (run / "trials.db").is_file() else {}
    snapshot = root / "after-fault"
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(run, snapshot)
    return resume_and_classify(snapshot, truth, trials, tally, kind, root)


class _FaultyConnection:
    """A connection whose ``nth`` statement containing ``match`` fails like a bad disk."""

    def __init__(self, db: sqlite3.Connection, nth: int, match: str, counter: list[int]) -> None:
        self._db, self._nth, self._match, self._counter = db, nth, match, counter

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self._match in sql:
            self._counter[0] += 1
            if self._counter[0] == self._nth:
                raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def failing_statement(nth: int, match: str) -> Callable[[], Any]:
    """A fault: the ``nth`` store statement containing ``match`` raises ``disk I/O error``."""

    @contextmanager
    def fault() -> Iterator[None]:
        counter = [0]
        orig = TrialStore.__init__

        def init(self: TrialStore, *a: Any, **k: Any) -> None:
            orig(self, *a, **k)
            self._db = _FaultyConnection(self._db, nth, match, counter)  # type: ignore[assignment]

        TrialStore.__init__ = init  # type: ignore[method-assign]
        try:
            yield
        finally:
            TrialStore.__init__ = orig  # type: ignore[method-assign]

    return fault


def failing_journal(nth: int) -> Callable[[], Any]:
    """A fault: the ``nth`` journal append fails with ENOSPC (no space left on device)."""

    @contextmanager
    def fault() -> Iterator[None]:
        orig = TrialStore._append_journal
        counter = [0]

        def append(self: TrialStore, record: Any) -> None:
            counter[0] += 1
            if counter[0] == nth:
                raise OSError(28, "No space left on device")
            orig(self, record)

        TrialStore._append_journal = append  # type: ignore[method-assign]
        try:
            yield
        finally:
            TrialStore._append_journal = orig  # type: ignore[method-assign]

    return fault


def damage_points() -> dict[str, Callable[[Path], None]]:
    """Damage done to a finished run's trials.db (after its process ended)."""

    def zero(p: Path) -> None:
        p.write_bytes(b"")

    def garbage(p: Path) -> None:
        p.write_bytes(random.Random(0).randbytes(p.stat().st_size or 4096))

    def header(p: Path) -> None:
        with p.open("r+b") as fh:
            fh.write(b"\0" * 100)

    def half(p: Path) -> None:
        with p.open("r+b") as fh:
            fh.truncate(p.stat().st_size // 2)

    def deleted(p: Path) -> None:
        p.unlink()

    return {
        "zero-length": zero,
        "garbage": garbage,
        "header": header,
        "half": half,
        "deleted": deleted,
    }
