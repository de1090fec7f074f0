"""The search loop of an :class:`~nasforge.experiment.runner.Experiment`: ask, evaluate on an
executor, record, tell, until the budget is spent.

One driver serves both kinds of strategy through a *feed* that says what to submit next and
whom to tell:

* a plain strategy (:class:`PlainFeed`): ``ask(1)``; an arch whose network already finished
  (same canonical key) is told its score and not paid for again; trials a killed run left
  interrupted are evaluated first;
* a multi-fidelity strategy (:class:`FidelityFeed`,
  :class:`~nasforge.strategies.fidelity_base.FidelityStrategy`): ``ask_trial()`` gives an arch
  *and a budget*; ``None`` means "wait for a running trial"; the same arch at the same budget
  is never paid for twice (finished: told its score; running: told when it finishes). The
  payload carries ``"budget": {"epochs", "data_fraction"}`` and the stored metrics the budget
  and rung (:mod:`nasforge.experiment.fidelity_view`), so a resumed run rebuilds every request
  from the store (:func:`replay_fidelity`) and the strategy asks again what it still needs.

``search.trials`` counts trial rows (every rung's evaluation is one), and the time and cost
budgets apply as for any search.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Hashable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nasforge.evaluators.base import STABILITY_INFO
from nasforge.experiment.config import ExperimentConfig
from nasforge.experiment.executors import Executor, make_executor
from nasforge.experiment.fidelity_view import (
    BRACKET,
    BUDGET_EPOCHS,
    BUDGET_FRACTION,
    CONFIG_ID,
    RUNG,
    discard_finished_rungs,
    rung_start_text,
)
from nasforge.experiment.interrupt import SearchInterrupted
from nasforge.experiment.latency_verdict import (
    is_unstable,
    record_trial_verdict,
    trial_latency_text,
)
from nasforge.experiment.live_curves import clear_live, remove_live
from nasforge.experiment.progress import LOG_NAME, RunLog
from nasforge.experiment.setup import uses_data
from nasforge.experiment.store import FINISHED, StoreError, TrialRecord, TrialStore
from nasforge.hardware.noise import Stability
from nasforge.objectives import Objective
from nasforge.space import Arch
from nasforge.strategies.base import Score, Strategy, scalar
from nasforge.strategies.fidelity_base import FidelityStrategy, TrialRequest


def is_multi_fidelity(strategy: Any) -> bool:
    """Whether the loop drives ``strategy`` through ``ask_trial``/``tell_trial``."""
    return isinstance(strategy, FidelityStrategy) or bool(getattr(strategy, "multi_fidelity", 0))


def budget_metrics(request: TrialRequest) -> dict[str, float]:
    """The metrics a multi-fidelity trial row carries (complete or failed): budget and rung."""
    return {
        BUDGET_EPOCHS: float(request.epochs),
        BUDGET_FRACTION: float(request.data_fraction),
        RUNG: float(request.rung),
        BRACKET: float(request.bracket),
        CONFIG_ID: float(request.config_id),
    }


def request_of(trial: TrialRecord) -> TrialRequest | None:
    """The request a finished multi-fidelity row ran (``None``: the row carries no budget)."""
    m = trial.metrics or {}
    if BUDGET_EPOCHS not in m:
        return None
    return TrialRequest(
        arch=trial.arch,
        epochs=int(m[BUDGET_EPOCHS]),
        data_fraction=float(m.get(BUDGET_FRACTION, 1.0)),
        rung=int(m.get(RUNG, 0)),
        bracket=int(m.get(BRACKET, 0)),
        config_id=int(m.get(CONFIG_ID, 0)),
    )


def replay_fidelity(strategy: Any, finished: list[TrialRecord]) -> int:
    """Hand a resumed multi-fidelity strategy every finished row (finish order) as
    ``(request, score)``; returns how many. Rows left interrupted are not run again blindly:
    the strategy asks again what it still needs."""
    pairs = [(r, t.score) for t in finished if (r := request_of(t)) is not None]
    strategy.replay_trials(pairs)
    return len(pairs)


def is_full_fidelity(metrics: dict[str, Any], max_epochs: int) -> bool:
    """Whether a trial's metrics say it ran at the strategy's full budget (plain: always)."""
    if BUDGET_EPOCHS not in metrics:
        return True
    return (
        float(metrics[BUDGET_EPOCHS]) >= max_epochs
        and float(metrics.get(BUDGET_FRACTION, 1.0)) >= 1.0
    )


@dataclass
class Submission:
    """One trial the loop submits: its arch, the budget for the payload (``None``: the
    evaluator's default), the metrics its row gets on top of the evaluator's, the key
    that makes two submissions the same evaluation, and the request a fidelity feed tells."""

    arch: Arch
    key: Hashable
    budget: dict[str, float] | None = None
    extra: dict[str, float] = field(default_factory=dict)
    request: TrialRequest | None = None
    full: bool = True  # counts for the best (a full-fidelity evaluation)


class LoopBook:
    """The loop's running tally (finished count, best score, finished keys) kept in memory,
    so that per-trial bookkeeping costs three SQLite statements, not a scan of the store.

    With ``max_epochs`` (a multi-fidelity run) keys are requests' keys and only trials at
    the full budget count for :attr:`best`."""

    def __init__(
        self, store: TrialStore, save_every_s: float = 1.0, max_epochs: int | None = None
    ) -> None:
        self.store = store
        self._scores: dict[Hashable, Score] = {}
        self.best: float | None = None
        self.finished = 0
        self.cost_seconds = 0.0
        for t in store.trials(FINISHED):
            if max_epochs is None:
                self.add(t.key, t.score, t.cost_seconds)
                continue
            req = request_of(t)
            key = req.key if req is not None else t.key
            self.add(key, t.score, t.cost_seconds, full=is_full_fidelity(t.metrics, max_epochs))
        self._save_every_s = save_every_s
        self._last_save = 0.0

    def add(
        self, key: Hashable, score: Score, cost_seconds: float = 0.0, full: bool = True
    ) -> None:
        self._scores.setdefault(key, score)
        self.finished += 1
        self.cost_seconds += cost_seconds
        if full and score is not None and (self.best is None or scalar(score) > self.best):
            self.best = scalar(score)

    def seen(self, key: Hashable) -> bool:
        """Whether a trial of the same network (same canonical key) already finished."""
        return key in self._scores

    def score_of(self, key: Hashable) -> Score:
        return self._scores[key]

    def save_elapsed(self, seconds: float, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_save >= self._save_every_s:
            self.store.set_meta("search_seconds", seconds)
            self._last_save = now


class PlainFeed:
    """Submissions of an ask/tell strategy; ``rerun`` (interrupted trials' archs, already
    open in the strategy) come first."""

    def __init__(self, strategy: Strategy, book: LoopBook, rerun: list[Arch]) -> None:
        self.strategy, self.book, self.rerun = strategy, book, list(rerun)
        self.duplicates = 0
        self.limit = 10**9  # the driver sets 10 x the trial budget
        self.stalled = False

    def next(self) -> Submission | None:
        while self.duplicates < self.limit:
            arch = self.rerun.pop(0) if self.rerun else self.strategy.ask(1)[0]
            if not self.book.seen(arch.key):
                return Submission(arch, arch.key)
            # same network already paid for: reuse it
            self.strategy.tell(arch, self.book.score_of(arch.key))
            self.duplicates += 1
        return None

    def told(self, sub: Submission, score: Score) -> None:
        self.strategy.tell(sub.arch, score)

    def head(self, trial: TrialRecord) -> str:
        return ""


class FidelityFeed:
    """Submissions of a :class:`FidelityStrategy` (see the module doc)."""

    def __init__(self, strategy: FidelityStrategy, book: LoopBook) -> None:
        self.strategy, self.book = strategy, book
        self.duplicates = 0
        self.limit = 10**9
        self.running: dict[Hashable, list[TrialRequest]] = {}  # key -> requests waiting on it
        self.stalled = False  # the strategy asked nothing while nothing was running

    def next(self) -> Submission | None:
        while self.duplicates < self.limit:
            if self.strategy.done():
                return None
            req = self.strategy.ask_trial()
            if req is None:
                self.stalled = not self.running
                return None
            if self.book.seen(req.key):  # same arch at the same budget: its score, not paid again
                self.duplicates += 1
                self.strategy.tell_trial(req, self.book.score_of(req.key))
                continue
            if req.key in self.running:  # the same evaluation runs: told when it finishes
                self.duplicates += 1
                self.running[req.key].append(req)
                continue
            self.running[req.key] = []
            budget = {"epochs": req.epochs, "data_fraction": req.data_fraction}
            full = req.epochs >= self.strategy.max_epochs and req.data_fraction >= 1.0
            return Submission(req.arch, req.key, budget, budget_metrics(req), req, full)
        return None

    def told(self, sub: Submission, score: Score) -> None:
        assert sub.request is not None  # noqa: S101 - this feed only submits requests
        self.strategy.tell_trial(sub.request, score)
        for twin in self.running.pop(sub.key, []):
            self.strategy.tell_trial(twin, score)

    def head(self, trial: TrialRecord) -> str:
        req = request_of(trial)
        if req is None:
            return ""
        frac = f", {req.data_fraction:g} of the data" if req.data_fraction < 1.0 else ""
        start = rung_start_text(trial.metrics or {})
        return (
            f" rung {req.rung} (bracket {req.bracket}, config {req.config_id}, "
            f"{req.epochs} epochs{frac}{start})"
        )


class TrialLoop:
    """The loop, as methods of :class:`~nasforge.experiment.runner.Experiment` (this mixin
    reads its ``cfg``, ``run_dir``, ``console``, ``log``, ``backup_every``,
    ``backup_min_interval_s`` and the ``_unstable`` / ``_last_backup`` state)."""

    cfg: ExperimentConfig
    run_dir: Path
    console: Console
    log: RunLog
    backup_every: int
    backup_min_interval_s: float
    _last_backup: float | None
    _unstable: dict[int, Stability]

    #: what happens to running trials stopped by a signal, said in the interrupt message
    _stopped_words = "run again first on resume"

    def resume_command(self) -> str:
        raise NotImplementedError

    def _backup(self, store: TrialStore, periodic: bool = False) -> None:
        """A checkpoint backup of the store; a failure is reported, never fatal."""
        import sqlite3

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
        running = f"; {stopped} running trial(s) stopped, {self._stopped_words}" if stopped else ""
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
        dataset: Any = None,
    ) -> float:
        """Ask, evaluate, record, tell until the budget is spent; ``rerun`` (interrupted
        trials' archs, already open in the strategy) are evaluated first; ``dataset`` (the
        run's, loaded) goes to a Ray cluster's object store as it is. Returns the search's
        wall seconds (this session's plus earlier ones)."""
        feed: PlainFeed | FidelityFeed
        if is_multi_fidelity(strategy):
            book = LoopBook(store, max_epochs=int(strategy.max_epochs))
            feed = FidelityFeed(strategy, book)
            self._stopped_words = "asked again by the strategy on resume"
        else:
            book = LoopBook(store)
            feed = PlainFeed(strategy, book, list(rerun or []))
        return self._drive(store, objective, book, feed, dataset)

    def _drive(  # noqa: C901 - one loop, its states kept together
        self,
        store: TrialStore,
        objective: Objective,
        book: LoopBook,
        feed: PlainFeed | FidelityFeed,
        dataset: Any = None,
    ) -> float:
        search = self.cfg.search
        budget = search.trials
        feed.limit = 10 * budget
        prior_seconds = float(store.get_meta("search_seconds", 0.0))
        t_start = time.time()
        cfg_json = json.dumps(self.cfg.model_dump(mode="json"))
        # table lookups take microseconds: a pool would only add overhead
        kind = search.executor if uses_data(self.cfg) else "inline"
        # with the config, the ray executor checks its task resources and puts the dataset in
        # the object store before the first trial row exists
        executor: Executor = make_executor(
            kind, search.workers, self.cfg.latency.threads, search.ray_address, cfg_json, dataset
        )
        pending: dict[Future, tuple[int, Submission]] = {}
        # live curves of trials that train (a table lookup has no epochs to show); files a
        # killed run left are stale: no trial runs before this loop submits one
        live = uses_data(self.cfg)
        clear_live(self.run_dir)

        def elapsed() -> float:
            return prior_seconds + time.time() - t_start

        def wall_left() -> float | None:
            """Seconds the time budget leaves (``None``: no time budget)."""
            if search.time_budget_s is None:
                return None
            return max(0.0, search.time_budget_s - elapsed())

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
            "search", total=budget, completed=done0, best=_fmt(book.best), remaining="?"
        )
        terminated = False
        try:
            with progress:
                while True:
                    while (
                        len(pending) < executor.workers
                        and book.finished + len(pending) < budget
                        and not out_of_time()
                    ):
                        sub = feed.next()
                        if sub is None:
                            break
                        tid = store.add_trial(sub.arch)
                        payload: dict[str, Any] = {
                            "config_json": cfg_json,
                            "arch_json": sub.arch.to_json(),
                            "run_dir": str(self.run_dir),
                            "trial_id": tid,
                            "live": live,
                        }
                        if sub.budget is not None:
                            payload["budget"] = sub.budget
                        pending[executor.submit(payload)] = (tid, sub)
                    if not pending:
                        break
                    ready, _ = wait(list(pending), timeout=1.0, return_when=FIRST_COMPLETED)
                    for fut in ready:
                        tid, sub = pending.pop(fut)
                        score = self._record(
                            store, fut, tid, sub.arch, objective, executor, sub.extra
                        )
                        remove_live(self.run_dir, tid)  # the store has its curve now
                        trial = store.trial(tid)
                        cost = trial.cost_seconds if search.cost_budget_s is not None else 0.0
                        book.add(sub.key, score, cost, full=sub.full)
                        feed.told(sub, score)
                        self._log_trial(
                            trial, book, budget, t_start, done0, feed.head(trial), wall_left()
                        )
                        if self.backup_every and book.finished % self.backup_every == 0:
                            self._backup(store, periodic=True)
                    book.save_elapsed(elapsed())
                    done = book.finished
                    left = _time_left(t_start, done - done0, budget - done, wall_left())
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
            clear_live(self.run_dir)  # the stopped trials' partial curves end with them
            book.save_elapsed(elapsed(), force=True)
            stop.message = self._interrupt_message(store, stop, stopped)
            self._record_interrupt(store, stop)
            raise stop from None
        finally:
            if not terminated:
                executor.shutdown()
        clear_live(self.run_dir)  # every trial's finish is recorded: nothing is live now
        book.save_elapsed(elapsed(), force=True)
        if isinstance(feed, FidelityFeed):  # keep disk bounded: finished configs' checkpoints
            discard_finished_rungs(self.run_dir, feed.strategy)
        if feed.stalled and book.finished < budget and not out_of_time():
            store.log_event("stalled", "the strategy asked for nothing more; the search ends")
            self.log.line("the strategy asked for nothing more (its brackets are spent)")
        if out_of_time():
            store.log_event(
                "budget",
                f"budget reached after {elapsed():.1f}s wall, {book.cost_seconds:.1f}s trial cost",
            )
        return elapsed()

    def _log_trial(
        self,
        trial: TrialRecord,
        book: LoopBook,
        budget: int,
        t_start: float,
        done0: int,
        rung: str = "",
        wall_left: float | None = None,
    ) -> None:
        """One plain line per finished trial (the log file, and the console off a terminal);
        ``rung`` says a multi-fidelity trial's rung and budget; ``wall_left``: what the time
        budget leaves (caps the estimate)."""
        left = _time_left(t_start, book.finished - done0, budget - book.finished, wall_left)
        head = f"trial {trial.id} {trial.state}{rung} ({book.finished}/{budget})"
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
        extra: dict[str, float] | None = None,
    ) -> Score:
        """Store the outcome of trial ``tid``; ``extra`` metrics (a multi-fidelity trial's
        budget and rung) go in its row whether it completed or failed."""
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
                tid,
                "failed",
                dict(extra) if extra else None,
                cost_seconds=out.get("cost_seconds", 0.0),
                error=out["error"],
                worker=out.get("worker"),
            )
            self.console.print(
                f"[red]trial {tid} failed:[/] {escape(out['error'].splitlines()[0])}",
                highlight=False,
                soft_wrap=True,
            )
            return None
        metrics = {**out["metrics"], **(extra or {})}
        score = objective.score(metrics)
        curve = (out.get("info") or {}).get("curve")  # validation accuracy per epoch
        store.finish_trial(
            tid,
            "complete",
            metrics,
            score,
            out["cost_seconds"],
            curve=curve,
            worker=out.get("worker"),
        )
        if is_unstable(metrics):
            verdict = (out.get("info") or {}).get(STABILITY_INFO)
            latency = float(metrics.get("latency_ms", float("nan")))
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


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _time_left(
    t_start: float, done: int, remaining: int, wall_left: float | None = None
) -> float | None:
    """Seconds left at this run's pace, or ``None`` before the first finished trial; never
    more than ``wall_left``, what a time budget leaves (the run stops then)."""
    pace = (time.time() - t_start) / done * remaining if done > 0 else None
    if wall_left is None:
        return pace
    return wall_left if pace is None else min(pace, wall_left)
