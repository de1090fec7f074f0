"""`Experiment`: config -> run directory -> loop (ask, evaluate, record, tell) -> final -> report.

The store is the source of truth: ``resume=True`` checks it (a damaged store is refused,
never restarted), restores finished trials its journal holds and it lost, marks trials left
running by a killed process as interrupted and runs those again first, rebuilds the
strategy by replaying finished trials, and evaluates nothing that finished before.

One process writes a run: :meth:`Experiment.run` holds the run's lock
(:class:`~nasforge.experiment.lock.RunLock`) throughout. SIGINT and SIGTERM stop the run at
once (:mod:`nasforge.experiment.interrupt`): workers are stopped, running trials recorded as
interrupted, and one line says what was saved and how to resume.
"""

from __future__ import annotations

import errno
import json
import shlex
import signal
import sqlite3
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nasforge.data import Dataset
from nasforge.errors import ConfigError
from nasforge.evaluators.base import STABILITY_INFO
from nasforge.experiment.config import ExperimentConfig, load_config
from nasforge.experiment.executors import Executor, make_executor
from nasforge.experiment.interrupt import SearchInterrupted, stop_on_signals
from nasforge.experiment.latency_verdict import (
    UNSTABLE_TRIALS_META,
    is_unstable,
    record_trial_verdict,
    search_summary,
    summary_text,
    trial_latency_text,
)
from nasforge.experiment.lock import RunLock
from nasforge.experiment.oneshot_run import OneshotPhase
from nasforge.experiment.preflight import prepare_run
from nasforge.experiment.progress import LOG_NAME, RunLog
from nasforge.experiment.setup import uses_data
from nasforge.experiment.store import (
    FINISHED,
    StoreError,
    TrialRecord,
    TrialStore,
    journal_path,
    read_journal,
)
from nasforge.hardware.fingerprint import host_info
from nasforge.hardware.noise import Stability
from nasforge.objectives import Objective
from nasforge.space import Arch, SearchSpace
from nasforge.strategies.base import Score, scalar


@dataclass
class RunSummary:
    run_dir: Path
    trials_complete: int
    trials_failed: int
    best: dict[str, Any] | None
    final: dict[str, Any] | None = None
    search_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Experiment:
    """Run a search from a validated config.

    Args:
        config: the experiment config.
        run_dir: where the run lives (default ``runs_dir/name``).
        console: rich console for progress and messages.
        progress: show a progress bar.
        backup_every: back the store up (``backups/``, the two newest kept) every this many
            finished trials, and at the end of the search; ``0`` only at the end.
        backup_min_interval_s: at most one periodic backup per this many seconds (a table
            run finishing thousands of trials a minute would otherwise copy its store
            hundreds of times); the first and the final backups are always taken.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | None = None,
        console: Console | None = None,
        progress: bool = True,
        backup_every: int = 10,
        backup_min_interval_s: float = 30.0,
    ) -> None:
        self.cfg = config
        self.run_dir = Path(run_dir) if run_dir is not None else config.run_dir()
        self.console = console or Console(stderr=True)
        self.show_progress = progress
        self.backup_every = backup_every
        self.backup_min_interval_s = backup_min_interval_s
        self._last_backup: float | None = None
        self._unstable: dict[int, Stability] = {}  # this session's unstable trial latencies

    def resume_command(self) -> str:
        """The command that continues this run (from the config saved in the run dir)."""
        cmd = ["nasforge", "search", str(self.run_dir / "config.yaml"), "--resume"]
        if Path(self.cfg.runs_dir) / self.cfg.name != self.run_dir:
            cmd += ["--runs-dir", str(self.run_dir.parent)]
            if self.run_dir.name != self.cfg.name:
                cmd += ["--name", self.run_dir.name]
        return shlex.join(cmd)

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> Experiment:
        return cls(load_config(path), **kwargs)

    # -- directory ------------------------------------------------------------------------------
    def _prepare_dir(self, resume: bool) -> None:
        db = self.run_dir / "trials.db"
        lost = not db.exists() and (
            read_journal(journal_path(db)) or (self.run_dir / "backups").is_dir()
        )
        if lost:  # a store that vanished is damage, not a fresh start
            raise StoreError(
                f"{db}: the store is missing but the run's journal or backups are there; "
                f"recover with `nasforge repair {self.run_dir}`, or choose another run name"
            )
        if resume:
            if not db.is_file():
                raise ConfigError(
                    f"{self.run_dir}: nothing to resume (no trials.db); run without --resume"
                )
            saved = self.run_dir / "config.yaml"
            if saved.is_file():
                old = load_config(saved)
                if old.model_dump(exclude={"search", "final", "compress"}) != self.cfg.model_dump(
                    exclude={"search", "final", "compress"}
                ):
                    raise ConfigError(
                        f"{saved}: the config differs from the one this run started with (only "
                        "search, final and compress may change on resume); use a new run name"
                    )
        elif db.exists():
            raise ConfigError(
                f"{self.run_dir}: a run with this name exists; pass --resume to continue "
                "it or choose another name"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(self.cfg.to_yaml())

    # -- main loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False, final: bool = True) -> RunSummary:
        """Run (or with ``resume`` continue) the search, then the final step and the report.

        Raises:
            RunLocked: another process writes this run.
            StoreError: the store is damaged, empty or missing (nothing is rewritten).
            SearchInterrupted: SIGINT or SIGTERM; its ``message`` says what was saved.
        """
        lock = RunLock(self.run_dir, "search").acquire()
        try:
            with stop_on_signals():
                return self._run_locked(resume, final)
        except SearchInterrupted as stop:
            if not stop.message:
                stop.message = f"interrupted by {stop.signal_name} before the search started; " + (
                    f"nothing was lost; continue with: {self.resume_command()}"
                    if resume
                    else "no trial was run"
                )
            self.console.print(escape(stop.message), highlight=False, soft_wrap=True)
            raise
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            raise StoreError(
                f"{self.run_dir}: could not write ({exc.strerror}): the disk is full or a file "
                "size limit was reached; every finished trial is kept; free space, then: "
                f"{self.resume_command()}"
            ) from None
        finally:
            lock.release()

    def _run_locked(self, resume: bool, final: bool) -> RunSummary:
        self._prepare_dir(resume)
        # a damaged store is refused before any work (and never rewritten): check it first
        if resume:
            TrialStore(self.run_dir / "trials.db", create=False).close()
        # built and checked once, before the first trial: a config error stops here
        prepared = prepare_run(self.cfg, self.run_dir)
        objects = prepared.objects
        dataset, space, objective = objects.dataset, objects.space, objects.objective
        strategy = prepared.strategy
        if objects.constraint is not None:
            self.console.print(
                f"latency filter: only archs predicted under {objective.target:g} ms are asked"
            )
        store = TrialStore(self.run_dir / "trials.db", create=not resume)
        self.log = RunLog(self.run_dir / LOG_NAME, self.console, self.show_progress)
        try:
            rerun: list[Arch] = []
            if resume:
                restored = store.replay_journal()
                if restored:
                    self.console.print(
                        f"[yellow]resume:[/] {restored} finished trial(s) the store had lost "
                        f"were restored from {escape(str(journal_path(store.path)))}",
                        highlight=False,
                    )
                store.mark_interrupted()
                rerun = _interrupted_archs(store)
                if rerun:
                    self.console.print(
                        f"[yellow]resume:[/] {len(rerun)} interrupted trial(s) will be run again "
                        "first"
                    )
            store.set_meta("status", "running")
            finished = store.trials(FINISHED, order="finished")
            strategy.replay(((t.arch, t.score) for t in finished), asked=rerun)
            store.set_meta("hardware", host_info())
            store.set_meta(
                "dataset",
                dataset.summary() if dataset is not None else f"table: {self.cfg.evaluator.table}",
            )
            store.set_meta("input", _input_meta(dataset, space))
            store.log_event(
                "start",
                f"{'resumed' if resume else 'started'} with {len(finished)} finished trials",
            )
            what = dataset.summary() if dataset is not None else "table benchmark"
            plan = f"strategy {strategy.name}; {self.cfg.search.trials} trials"
            phase = None
            if self.cfg.oneshot is not None:  # weight sharing: DARTS, or a supernet first
                phase = OneshotPhase(
                    self.cfg, self.run_dir, store, prepared, self.log, self.console
                )
                plan = phase.plan(plan)
            self.console.print(
                f"[bold]nasforge[/] {self.cfg.name}: {what}; space {space.name}; {plan}"
            )
            self.log.line(
                f"{'resumed' if resume else 'started'} {self.cfg.name}: {what}; space "
                f"{space.name}; {plan}; progress also in {self.run_dir / LOG_NAME}",
                echo=False,
            )
            outcome = phase.run(self.resume_command()) if phase is not None else None
            search_seconds = (
                self._loop(store, strategy, objective, rerun)
                if outcome is None or outcome.run_loop
                else outcome.search_seconds
            )
            unstable = summary_text(
                search_summary(store.trials(FINISHED), store.get_meta(UNSTABLE_TRIALS_META))
            )
            if unstable:
                self.log.say(unstable)
            self._backup(store)
            summary = self._summary(store, objective, search_seconds)
            if outcome is not None:  # the weight-sharing phase's cost, said in the summary
                summary.notes.append(outcome.note)
            if final and dataset is None:
                from nasforge.experiment.final import finalize_table

                summary.final = finalize_table(
                    self.cfg, self.run_dir, store, space, objective, self.console
                )
            elif final and dataset is not None:
                from nasforge.experiment.final import finalize

                summary.final = finalize(
                    self.cfg,
                    self.run_dir,
                    store,
                    dataset,
                    space,
                    objective,
                    self.console,
                    self.log,
                    objects=objects,
                )
            from nasforge.experiment.report import write_report

            write_report(self.run_dir, self.cfg, store, space, objective)
            store.set_meta("status", "done")
            self._backup(store)
            self.log.line(f"done: report in {self.run_dir / 'report.html'}")
            return summary
        except SearchInterrupted as stop:
            if not stop.message:  # stopped after the search loop (final step, report)
                stop.message = self._interrupt_message(store, stop, 0)
                self._record_interrupt(store, stop)
            raise
        finally:
            self.log.close()
            store.close()

    def _backup(self, store: TrialStore, periodic: bool = False) -> None:
        """A checkpoint backup of the store; a failure is reported, never fatal."""
        now = time.monotonic()
        if (
            periodic
            and self._last_backup is not None
            and now - self._last_backup < self.backup_min_interval_s
        ):
            return
        self._last_backup = now
        try:
            store.checkpoint_backup()
        except (OSError, StoreError, sqlite3.Error) as exc:
            self.console.print(
                f"[yellow]warning:[/] store backup failed ({escape(str(exc))}); the run goes on",
                highlight=False,
            )

    def _interrupt_message(self, store: TrialStore, stop: SearchInterrupted, stopped: int) -> str:
        n = store.count(FINISHED)
        running = (
            f"; {stopped} running trial(s) stopped, run again first on resume" if stopped else ""
        )
        return (
            f"interrupted by {stop.signal_name}: {n} finished trial(s) saved in "
            f"{store.path}{running}; continue with: {self.resume_command()}"
        )

    def _record_interrupt(self, store: TrialStore, stop: SearchInterrupted) -> None:
        store.set_meta("status", "interrupted")
        store.log_event("interrupt", stop.message)

    def _loop(
        self,
        store: TrialStore,
        strategy: Any,
        objective: Objective,
        rerun: list[Arch] | None = None,
    ) -> float:
        """Ask, evaluate, record, tell until the budget is spent; ``rerun`` (interrupted
        trials' archs, already open in the strategy) are evaluated first."""
        rerun = list(rerun or [])
        search = self.cfg.search
        budget = search.trials
        prior_seconds = float(store.get_meta("search_seconds", 0.0))
        t_start = time.time()
        cfg_json = json.dumps(self.cfg.model_dump(mode="json"))
        # table lookups take microseconds: a pool would only add overhead
        kind = search.executor if uses_data(self.cfg) else "inline"
        executor: Executor = make_executor(
            kind, search.workers, self.cfg.latency.threads, search.ray_address
        )
        pending: dict[Future, tuple[int, Arch]] = {}
        book = LoopBook(store)
        best = book.best

        def elapsed() -> float:
            return prior_seconds + time.time() - t_start

        def out_of_time() -> bool:
            if search.cost_budget_s is not None and book.cost_seconds >= search.cost_budget_s:
                return True
            return search.time_budget_s is not None and elapsed() >= search.time_budget_s

        progress = Progress(
            TextColumn("[bold]search"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),
            TimeElapsedColumn(),
            TextColumn("~{task.fields[remaining]} left"),
            console=self.console,
            disable=not self.log.live,  # off a terminal a live bar prints nothing: log lines
            transient=False,
        )
        done0 = book.finished
        task = progress.add_task(
            "search", total=budget, completed=done0, best=_fmt(best), remaining="?"
        )
        duplicates = 0
        terminated = False
        try:
            with progress:
                while True:
                    while (
                        len(pending) < executor.workers
                        and book.finished + len(pending) < budget
                        and not out_of_time()
                        and duplicates < 10 * budget
                    ):
                        arch = rerun.pop(0) if rerun else strategy.ask(1)[0]
                        if book.seen(arch.key):  # same network already paid for: reuse it
                            strategy.tell(arch, book.score_of(arch.key))
                            duplicates += 1
                            continue
                        tid = store.add_trial(arch)
                        payload = {
                            "config_json": cfg_json,
                            "arch_json": arch.to_json(),
                            "run_dir": str(self.run_dir),
                            "trial_id": tid,
                        }
                        pending[executor.submit(payload)] = (tid, arch)
                    if not pending:
                        break
                    ready, _ = wait(list(pending), timeout=1.0, return_when=FIRST_COMPLETED)
                    for fut in ready:
                        tid, arch = pending.pop(fut)
                        score = self._record(store, fut, tid, arch, objective, executor)
                        book.add(
                            arch.key,
                            score,
                            store.trial(tid).cost_seconds
                            if search.cost_budget_s is not None
                            else 0.0,
                        )
                        strategy.tell(arch, score)
                        self._log_trial(store.trial(tid), book, budget, t_start, done0)
                        if self.backup_every and book.finished % self.backup_every == 0:
                            self._backup(store, periodic=True)
                    book.save_elapsed(elapsed())
                    done = book.finished
                    left = _time_left(t_start, done - done0, budget - done)
                    progress.update(
                        task,
                        completed=done,
                        best=_fmt(book.best),
                        remaining=f"{left:.0f}s" if left is not None else "?",
                    )
        except KeyboardInterrupt as exc:
            # stop at once: the running trials are abandoned (run again first on resume),
            # not waited for and then thrown away
            executor.terminate()
            terminated = True
            stop = exc if isinstance(exc, SearchInterrupted) else SearchInterrupted(signal.SIGINT)
            stopped = store.mark_interrupted()
            book.save_elapsed(elapsed(), force=True)
            stop.message = self._interrupt_message(store, stop, stopped)
            self._record_interrupt(store, stop)
            raise stop from None
        finally:
            if not terminated:
                executor.shutdown()
        book.save_elapsed(elapsed(), force=True)
        if out_of_time():
            store.log_event(
                "budget",
                f"budget reached after {elapsed():.1f}s wall, {book.cost_seconds:.1f}s trial cost",
            )
        return elapsed()

    def _log_trial(
        self, trial: TrialRecord, book: LoopBook, budget: int, t_start: float, done0: int
    ) -> None:
        """One plain line per finished trial (the log file, and the console off a terminal)."""
        left = _time_left(t_start, book.finished - done0, budget - book.finished)
        head = f"trial {trial.id} {trial.state} ({book.finished}/{budget})"
        if trial.state != "complete":
            what = (trial.error or "").splitlines()[0] if trial.error else ""
        else:
            shown = ("val_acc", "latency_ms", "flops", "params")
            what = ", ".join(
                trial_latency_text(trial, self._unstable.get(trial.id))
                if k == "latency_ms"
                else f"{k} {trial.metrics[k]:.4g}"
                for k in shown
                if isinstance(trial.metrics.get(k), (int, float))
            )
            if trial.score is not None:
                what += f"; score {scalar(trial.score):.4f}"
        self.log.line(
            f"{head}: {what}; {trial.cost_seconds:.1f}s; best {_fmt(book.best)}; "
            f"~{'?' if left is None else f'{left:.0f}s'} left"
        )

    def _record(
        self,
        store: TrialStore,
        fut: Future,
        tid: int,
        arch: Arch,
        objective: Objective,
        executor: Executor,
    ) -> Score:
        try:
            out = fut.result()
        except BrokenProcessPool:
            out = {
                "ok": False,
                "error": "worker process died (out of memory or killed)",
                "cost_seconds": 0.0,
            }
            executor.restart()
        except Exception as exc:  # noqa: BLE001 - executor failures (ray) are the trial's failure
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "cost_seconds": 0.0}
        if not out["ok"]:
            store.finish_trial(
                tid, "failed", cost_seconds=out.get("cost_seconds", 0.0), error=out["error"]
            )
            self.console.print(
                f"[red]trial {tid} failed:[/] {escape(out['error'].splitlines()[0])}",
                highlight=False,
                soft_wrap=True,
            )
            return None
        score = objective.score(out["metrics"])
        store.finish_trial(tid, "complete", out["metrics"], score, out["cost_seconds"])
        if is_unstable(out["metrics"]):
            verdict = (out.get("info") or {}).get(STABILITY_INFO)
            latency = float(out["metrics"].get("latency_ms", float("nan")))
            stability = record_trial_verdict(store, tid, latency, verdict)
            if not self._unstable and self.log.live:  # the log lines are not echoed: say once
                self.console.print(
                    f"[yellow]warning:[/] trial {tid}'s measured latency is "
                    f"{escape(stability.label)}; such trials are marked in "
                    f"{escape(str(self.run_dir / LOG_NAME))} and the report",
                    highlight=False,
                    soft_wrap=True,
                )
            self._unstable[tid] = stability
        return score

    def _summary(self, store: TrialStore, objective: Objective, seconds: float) -> RunSummary:
        complete = store.trials(("complete",))
        best = max(complete, key=lambda t: scalar(t.score), default=None)
        return RunSummary(
            self.run_dir,
            len(complete),
            store.count(("failed",)),
            best.to_dict() if best else None,
            search_seconds=seconds,
        )


class LoopBook:
    """The loop's running tally (finished count, best score, finished keys) kept in memory,
    so that per-trial bookkeeping costs three SQLite statements, not a scan of the store."""

    def __init__(self, store: TrialStore, save_every_s: float = 1.0) -> None:
        self.store = store
        self._scores: dict[str, Score] = {}
        self.best: float | None = None
        self.finished = 0
        self.cost_seconds = 0.0
        for t in store.trials(FINISHED):
            self.add(t.key, t.score, t.cost_seconds)
        self._save_every_s = save_every_s
        self._last_save = 0.0

    def add(self, key: str, score: Score, cost_seconds: float = 0.0) -> None:
        self._scores.setdefault(key, score)
        self.finished += 1
        self.cost_seconds += cost_seconds
        if score is not None and (self.best is None or scalar(score) > self.best):
            self.best = scalar(score)

    def seen(self, key: str) -> bool:
        """Whether a trial of the same network (same canonical key) already finished."""
        return key in self._scores

    def score_of(self, key: str) -> Score:
        return self._scores[key]

    def save_elapsed(self, seconds: float, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_save >= self._save_every_s:
            self.store.set_meta("search_seconds", seconds)
            self._last_save = now


_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _interrupted_archs(store: TrialStore) -> list[Arch]:
    """Archs of interrupted trials that never finished (once each, in trial order)."""
    done = {t.key for t in store.trials(FINISHED)}
    out: dict[str, Arch] = {}
    for t in store.trials(("interrupted",)):
        if t.key not in done:
            out.setdefault(t.key, t.arch)
    return list(out.values())


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _time_left(t_start: float, done: int, remaining: int) -> float | None:
    """Seconds left at this run's pace, or ``None`` before the first finished trial."""
    return (time.time() - t_start) / done * remaining if done > 0 else None


def _input_meta(dataset: Dataset | None, space: SearchSpace) -> dict[str, Any]:
    """The real input of the run's networks (not the config's resize defaults)."""
    if dataset is not None:
        return {"shape": list(dataset.input_shape), "classes": dataset.num_classes}
    shape = getattr(space, "input_shape", None)
    return {"shape": list(shape) if shape is not None else None, "classes": None}
