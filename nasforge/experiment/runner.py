"""`Experiment`: config -> run directory -> loop (ask, evaluate, record, tell) -> final -> report.

The store is the source of truth: ``resume=True`` checks it (a damaged store is refused,
never restarted), restores finished trials its journal holds and it lost, marks trials left
running by a killed process as interrupted and runs those again first, rebuilds the
strategy by replaying finished trials, and evaluates nothing that finished before. A
multi-fidelity strategy is replayed with each finished row's request (arch and budget, from
its metrics) and asks again itself what was interrupted; the loop is in
:mod:`nasforge.experiment.loop`.

One process writes a run: :meth:`Experiment.run` holds the run's lock
(:class:`~nasforge.experiment.lock.RunLock`) throughout; the directory is prepared (a resume's
config and store checked) as every command's is (:mod:`nasforge.experiment.rundir`). SIGINT
and SIGTERM stop the run at once (:mod:`nasforge.experiment.interrupt`): workers are stopped,
running trials recorded as interrupted, and one line says what was saved and how to resume.

Under ``torchrun`` (a config with a ``oneshot:`` section, its supernet trained data-parallel):
rank 0 runs the run as above; the other ranks join the process group, train in lock step with
rank 0 and leave (:mod:`nasforge.experiment.oneshot_ddp`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from nasforge.data import Dataset
from nasforge.experiment import oneshot_ddp
from nasforge.experiment.config import ExperimentConfig, load_config
from nasforge.experiment.fidelity_view import full_fidelity
from nasforge.experiment.interrupt import SearchInterrupted
from nasforge.experiment.latency_verdict import (
    UNSTABLE_TRIALS_META,
    record_table_verdict,
    search_summary,
    summary_text,
    table_is_trusted,
    table_verdict_text,
)
from nasforge.experiment.loop import TrialLoop, is_multi_fidelity, replay_fidelity
from nasforge.experiment.oneshot_run import OneshotPhase
from nasforge.experiment.preflight import prepare_run
from nasforge.experiment.progress import LOG_NAME
from nasforge.experiment.rundir import SCALING_RESULTS, STORE_NAME, RunDir, RunKind
from nasforge.experiment.store import (
    FINISHED,
    StoreError,
    TrialStore,
    journal_path,
)
from nasforge.hardware.noise import Stability
from nasforge.objectives import Objective
from nasforge.space import Arch, SearchSpace
from nasforge.strategies.base import scalar


@dataclass
class RunSummary:
    run_dir: Path
    trials_complete: int
    trials_failed: int
    best: dict[str, Any] | None
    final: dict[str, Any] | None = None
    search_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class Experiment(TrialLoop):
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

    @property
    def rundir(self) -> RunDir:
        """The run directory's preparation (lock, checks, config, log)."""
        return RunDir(self.run_dir, self.cfg, SEARCH_RUN)

    def resume_command(self) -> str:
        """The command that continues this run (from the config saved in the run dir)."""
        return self.rundir.resume_command()

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> Experiment:
        return cls(load_config(path), **kwargs)

    # -- main loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False, final: bool = True) -> RunSummary:
        """Run (or with ``resume`` continue) the search, then the final step and the report.

        Under ``torchrun`` (several processes) rank 0 does all of that; any other rank trains the
        supernet with it in lock step and then raises ``SystemExit(0)``: it has no run to return
        (no lock, no store, no summary), and its command's work is done.

        Raises:
            RunLocked: another process writes this run.
            StoreError: the store is damaged, empty or missing (nothing is rewritten).
            SearchInterrupted: SIGINT or SIGTERM; its ``message`` says what was saved.
            ConfigError: several processes (torchrun) for a config they cannot share.
        """
        if not oneshot_ddp.join(self.cfg).is_main:
            oneshot_ddp.follow(self.cfg, self.run_dir)
            raise SystemExit(0)
        try:
            with self.rundir.locked():
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

    def _run_locked(self, resume: bool, final: bool) -> RunSummary:
        # a damaged store is refused before any work (and never rewritten): checked here
        self.rundir.prepare(resume)
        # built and checked once, before the first trial: a config error stops here
        prepared = prepare_run(self.cfg, self.run_dir)
        objects = prepared.objects
        dataset, space, objective = objects.dataset, objects.space, objects.objective
        strategy = prepared.strategy
        if objects.constraint is not None:
            self.console.print(
                f"latency filter: only archs predicted under {objective.target:g} ms are asked"
            )
        store = self.rundir.open_store(resume)
        self.log = self.rundir.open_log(self.console, self.show_progress)
        try:
            rerun: list[Arch] = []
            fidelity = is_multi_fidelity(strategy)
            if resume:
                restored = store.replay_journal()
                if restored:
                    self.console.print(
                        f"[yellow]resume:[/] {restored} finished trial(s) the store had lost "
                        f"were restored from {escape(str(journal_path(store.path)))}",
                        highlight=False,
                    )
                stopped = store.mark_interrupted()
                # a multi-fidelity strategy asks again what it still needs (at its budget)
                rerun = [] if fidelity else _interrupted_archs(store)
                if rerun or (fidelity and stopped):
                    self.console.print(
                        f"[yellow]resume:[/] {len(rerun) or stopped} interrupted trial(s) will "
                        + ("be run again first" if rerun else "be asked again by the strategy")
                    )
            finished = store.trials(FINISHED, order="finished")
            self.rundir.record_start(
                store,
                dataset.summary() if dataset is not None else f"table: {self.cfg.evaluator.table}",
                _input_meta(dataset, space),
                f"{'resumed' if resume else 'started'} with {len(finished)} finished trials",
            )
            # the verdict of the table a `mode: predict` search runs under, for its report
            verdict = record_table_verdict(
                store, objects.latency, self.cfg.latency.allow_untrusted_table
            )
            if verdict is not None and not table_is_trusted(verdict):
                self.log.say(f"warning: {table_verdict_text(verdict)}")
            if fidelity:
                replay_fidelity(strategy, finished)
            else:
                strategy.replay(((t.arch, t.score) for t in finished), asked=rerun)
            what = dataset.summary() if dataset is not None else "table benchmark"
            plan = f"strategy {strategy.name}; {self.cfg.search.trials} trials"
            if fidelity:
                top = getattr(strategy, "max_epochs", "?")
                plan += f" (one per rung evaluation), multi-fidelity up to {top} epochs"
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
                self._loop(store, strategy, objective, rerun, dataset)
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

    def _summary(self, store: TrialStore, objective: Objective, seconds: float) -> RunSummary:
        complete = store.trials(("complete",))
        # a multi-fidelity run's best is among the trials at the highest budget reached
        best = max(full_fidelity(complete), key=lambda t: scalar(t.score), default=None)
        return RunSummary(
            self.run_dir,
            len(complete),
            store.count(("failed",)),
            best.to_dict() if best else None,
            search_seconds=seconds,
        )


_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
#: a search's run directory: only search, final and compress may change on resume
SEARCH_RUN = RunKind(
    command="search",
    marker=STORE_NAME,
    kept=lambda cfg: cfg.model_dump(exclude={"search", "final", "compress"}),
    kept_text="(only search, final and compress may change on resume)",
    others=((SCALING_RESULTS, "a scaling run"),),
)


def _interrupted_archs(store: TrialStore) -> list[Arch]:
    """Archs of interrupted trials that never finished (once each, in trial order)."""
    done = {t.key for t in store.trials(FINISHED)}
    out: dict[str, Arch] = {}
    for t in store.trials(("interrupted",)):
        if t.key not in done:
            out.setdefault(t.key, t.arch)
    return list(out.values())


def _input_meta(dataset: Dataset | None, space: SearchSpace) -> dict[str, Any]:
    """The real input of the run's networks (not the config's resize defaults)."""
    if dataset is not None:
        return {"shape": list(dataset.input_shape), "classes": dataset.num_classes}
    shape = getattr(space, "input_shape", None)
    return {"shape": list(shape) if shape is not None else None, "classes": None}
