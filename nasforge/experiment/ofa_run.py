"""``nasforge ofa train CONFIG``: train a Once-for-All supernet into a run directory.

The run directory is a search's (``runs/<name>/``): ``config.yaml`` (the validated config),
``trials.db`` (the store: no trials, one record per epoch), ``.lock`` (held throughout),
``progress.log`` (one line per epoch; a rich bar on a terminal), ``report.html`` /
``report.json`` (written at the end; its ``ofa`` section shows the training per phase and,
once ``nasforge ofa specialize`` ran, the specialisations) and ``supernet/``:

- ``epoch_XXXX.pt``: the trainer's whole state after ``XXXX`` completed epochs (counted over
  all phases), written atomically by :func:`~nasforge.experiment.oneshot_run.save_checkpoint`;
- ``final.pt``: at the end, the trained supernet's weights only (the
  :class:`~nasforge.oneshot.ofa.elastic.ElasticMobileSupernet` state dict, tensors only;
  :func:`load_final_weights`), which ``nasforge ofa specialize`` loads.

Per epoch the store gets ``store.add_epoch("ofa", epoch, record)`` with ``epoch`` the number
of completed epochs (1, 2, ...) and ``record`` the trainer's
:class:`~nasforge.oneshot.ofa.train.OFAEpochRecord` as a dict, plus ``stage`` (the
progressive-shrinking phase's name; the store sets the record's ``phase`` to ``"ofa"``, the
store's phase) and ``cpu_seconds``. The record is written before its checkpoint, so the store
never lacks the record of a checkpointed epoch.

Resume (``--resume`` after ``kill -9``, Ctrl-C or SIGTERM): the newest readable checkpoint is
loaded and training continues from it exactly (the trainer checkpoints its random state, its
phase, optimizer and schedule); the result equals an uninterrupted run's. Cost: the CPU
seconds of training (summed over the epoch records, each epoch once) go to the store's
``ofa`` meta, the wall seconds to ``search_seconds``. The test split is not touched here.

Data parallel (``torchrun --nproc-per-node 2 -m nasforge ofa train CONFIG``; see
:mod:`nasforge.oneshot.distributed`): every process runs the command; rank 0 does all of the
above (lock, directory, store, checkpoints, log, report) and, once it has built its trainer
and made the resume decision, sends the other ranks that decision: the checkpoint's trainer
state (``None`` for a new training) or the one-line error that stopped it. The state goes
over the process group, not through the file, so ranks on other hosts need no shared run
directory. The other ranks build the same dataset, space and trainer from the config, train
in lock step, print nothing and return ``None`` when training ends; rank 0 then leaves the
process group and finishes alone. Each epoch record says its ``world_size`` and its
``cpu_seconds`` sum every rank's (the cost of the data-parallel epoch); the ``ofa`` meta says
the last session's ``world_size``. A resume may use another number of processes: the
global batch, and so the schedule, stays the same.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nasforge.errors import ConfigError, NasforgeError
from nasforge.experiment.config import ExperimentConfig
from nasforge.experiment.final import training_threads
from nasforge.experiment.interrupt import SearchInterrupted, stop_on_signals
from nasforge.experiment.oneshot_config import CHECKPOINT_DIR, checkpoint_path
from nasforge.experiment.oneshot_run import checkpoints, load_checkpoint, save_checkpoint
from nasforge.experiment.progress import LOG_NAME, RunLog
from nasforge.experiment.report import write_report
from nasforge.experiment.rundir import SCALING_RESULTS, STORE_NAME, RunDir, RunKind
from nasforge.experiment.setup import make_dataset, make_objective, make_space
from nasforge.experiment.store import StoreError, TrialStore
from nasforge.oneshot import distributed
from nasforge.oneshot.distributed import DistContext
from nasforge.oneshot.ofa.train import OFAEpochRecord, OFATrainer
from nasforge.spaces.mobile import MobileSpace

#: the store's phase name of the epoch records, and the store meta key of the training
OFA_PHASE = "ofa"
OFA_META = "ofa"
FINAL_NAME = "final.pt"
#: config sections a resumed training may change (they do not change what is trained)
_MAY_CHANGE = {"search", "final", "compress", "strategy", "objective", "evaluator", "latency"}


def _trained_part(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a resumed training must share with the run: everything but the sections that do
    not change the supernet (and ``ofa.specialize``)."""
    dump = cfg.model_dump(mode="json", exclude=_MAY_CHANGE)
    if isinstance(dump.get("ofa"), dict):
        dump["ofa"] = {k: v for k, v in dump["ofa"].items() if k != "specialize"}
    return dump


#: an OFA training's run directory (its store holds the epoch records)
OFA_RUN = RunKind(
    command="ofa train",
    marker=STORE_NAME,
    kept=_trained_part,
    kept_text="in what is trained (data, space, seed, ofa.train)",
    others=((SCALING_RESULTS, "a scaling run"),),
)


class LostRank(NasforgeError):
    """A data-parallel training lost one of its processes (killed, its host lost); the run is
    recorded interrupted, its checkpoints kept, and the message (printed already by the
    training) gives the resume command."""


def final_path(run_dir: str | Path) -> Path:
    """``<run_dir>/supernet/final.pt``: the trained supernet's weights."""
    return Path(run_dir) / CHECKPOINT_DIR / FINAL_NAME


def load_final_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``supernet/final.pt`` (``weights_only``: runs no code); load it with
    ``trainer.supernet.load_state_dict(...)`` into an :class:`OFATrainer` of the run's config.

    Raises:
        NasforgeError: no trained supernet in the run (says how to train it), or an
            unreadable file.
    """
    path = final_path(run_dir)
    if not path.is_file():
        raise NasforgeError(
            f"{run_dir}: no trained supernet ({path} is missing); train it with `nasforge ofa "
            f"train {Path(run_dir) / 'config.yaml'} --resume`"
        )
    state = load_checkpoint(path)
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NasforgeError(f"{path}: not a supernet state dict (tensors only)")
    return state


def epoch_record(rec: OFAEpochRecord, cpu_seconds: float | None = None) -> dict[str, Any]:
    """The store record of one epoch: the trainer's record, ``stage`` (its phase name) and
    ``cpu_seconds`` (the wall ``seconds`` when the CPU time is unknown: a restored record)."""
    record = asdict(rec)
    record["stage"] = rec.phase
    record["cpu_seconds"] = float(rec.seconds if cpu_seconds is None else cpu_seconds)
    return record


@dataclass(frozen=True)
class OFATrainSummary:
    """What ``nasforge ofa train`` did.

    Attributes:
        run_dir: the run directory.
        epochs: epochs trained in all (over every phase, earlier sessions included).
        phases: ``(name, epochs)`` of the schedule.
        cpu_seconds: the training's CPU seconds (each recorded epoch once).
        wall_seconds: wall seconds of all sessions.
        final: the trained supernet's weights (``supernet/final.pt``).
        resumed_from: the checkpoint's epoch a resumed session started from (``None``: new).
        world_size: the processes this session trained on (data-parallel when above 1).
    """

    run_dir: Path
    epochs: int
    phases: tuple[tuple[str, int], ...]
    cpu_seconds: float
    wall_seconds: float
    final: Path
    resumed_from: int | None = None
    world_size: int = 1

    def line(self) -> str:
        """One line for the end of the command."""
        schedule = ", ".join(f"{n} {e}" for n, e in self.phases)
        ddp = f" on {self.world_size} processes (DDP)" if self.world_size > 1 else ""
        return (
            f"ofa: supernet trained, {self.epochs} epochs ({schedule}) in "
            f"{self.cpu_seconds:.1f} CPU seconds ({self.wall_seconds:.1f} s wall){ddp}; weights in "
            f"{self.final}; next: nasforge ofa specialize {self.run_dir} --target-ms MS"
        )


class OFATraining:
    """Trains the elastic supernet of one run (see the module docstring).

    Args:
        config: the experiment config (with an ``ofa:`` section).
        run_dir: the run directory (default ``runs_dir/name``).
        console: where progress and messages go (default stderr).
        progress: ``False`` (``--quiet``): progress only in ``progress.log``.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | None = None,
        console: Console | None = None,
        progress: bool = True,
    ) -> None:
        if config.ofa is None:
            raise ConfigError(
                "ofa: the config has no ofa: section; add one (`ofa: {}` trains with the "
                "defaults; see examples/ofa.yaml)"
            )
        self.cfg = config
        self.ofa = config.ofa.train_config(config.seed)
        self.run_dir = Path(run_dir) if run_dir is not None else config.run_dir()
        self.console = console or Console(stderr=True)
        self.show_progress = progress
        #: this process's place in a data-parallel job (set by :meth:`run`)
        self.dist = DistContext()
        #: the trainer of the last :meth:`run` on this rank (``None`` before one)
        self.trainer: OFATrainer | None = None
        self._told = False  # whether rank 0 sent the other ranks its decision

    @property
    def rundir(self) -> RunDir:
        """The run directory's preparation (lock, checks, config, log)."""
        return RunDir(self.run_dir, self.cfg, OFA_RUN)

    def resume_command(self) -> str:
        """The command that continues this run (from the config saved in the run dir)."""
        return self.rundir.resume_command()

    def run(self, resume: bool = False) -> OFATrainSummary | None:
        """Train (or with ``resume`` continue) the supernet; SIGINT/SIGTERM stop it with the
        checkpoints kept (one line says what was saved and gives the resume command).

        Under torchrun this joins the process group first; a rank other than 0 follows rank 0
        (see the module docstring) and returns ``None``.

        Raises:
            RunLocked: another process writes this run.
            ConfigError: the run exists (without ``resume``), there is nothing to resume, or
                the config differs from the one the run started with.
            NasforgeError: a damaged store, a checkpoint of another recipe.
            LostRank: data-parallel, another rank died during training.
            SearchInterrupted: SIGINT or SIGTERM, with its message set.
        """
        try:
            self.dist = distributed.init()
        except (ValueError, RuntimeError) as exc:
            raise NasforgeError(f"torchrun environment: {_first_line(exc)}") from None
        if not self.dist.is_main:
            self._follow()
            return None
        try:
            with self.rundir.locked():
                return self._run_locked(resume)
        except SearchInterrupted as stop:
            if not stop.message:
                stop.message = (
                    f"interrupted by {stop.signal_name} before training started; nothing was "
                    f"lost; start again with: {self.resume_command()}"
                )
            self.console.print(escape(stop.message), highlight=False, soft_wrap=True)
            self._tell_followers({"error": stop.message})
            raise
        except BaseException as exc:
            self._tell_followers({"error": _first_line(exc)})
            raise
        finally:
            distributed.shutdown()

    # -- data parallel --------------------------------------------------------------------------
    def _tell_followers(self, message: dict[str, Any]) -> None:
        """Send the other ranks rank 0's decision once: ``{"state": ...}`` (the trainer state
        to start from, ``None``: a new training) or ``{"error": line}`` (they stop)."""
        if self._told or not self.dist.active:
            return
        self._told = True
        try:
            distributed.broadcast_object(message, self.dist)
        except RuntimeError as exc:  # telling them of an error: they may be gone already
            if "error" not in message or not _lost_rank(exc):
                raise

    def _follow(self) -> None:
        """A rank other than 0: wait for rank 0's decision, then train in lock step with it
        (no lock, store, files or progress output of its own)."""
        rank = self.dist.rank
        try:
            with stop_on_signals():
                message: dict[str, Any] = distributed.broadcast_object({}, self.dist)
                if message.get("error"):
                    raise NasforgeError(f"rank {rank}: rank 0 did not train: {message['error']}")
                dataset = make_dataset(self.cfg)
                space = make_space(self.cfg, dataset)
                if not isinstance(space, MobileSpace):  # rank 0 refused it already
                    raise ConfigError(f"space.name: not the mobile space ({space.name!r})")
                with training_threads(self.cfg.latency.threads):
                    trainer = self.trainer = OFATrainer(space, dataset, self.ofa)
                    if message.get("state") is not None:
                        trainer.load_state_dict(message["state"])
                    while not trainer.done:
                        _train_epoch(trainer, self.dist)
        except RuntimeError as exc:
            if not _lost_rank(exc):
                raise
            raise NasforgeError(
                f"rank {rank}: lost the other processes of the training ({_first_line(exc)}); "
                "rank 0 keeps the checkpoints"
            ) from None
        finally:
            distributed.shutdown()

    # -- training -------------------------------------------------------------------------------
    def _run_locked(self, resume: bool) -> OFATrainSummary:
        self.rundir.prepare(resume)  # a damaged store is refused before any work, never rewritten
        dataset = make_dataset(self.cfg)
        space = make_space(self.cfg, dataset)
        if not isinstance(space, MobileSpace):
            raise ConfigError(
                f"space.name: Once-for-All trains over the mobile space, not {space.name!r}"
            )
        store = self.rundir.open_store(resume)
        log = self.rundir.open_log(self.console, self.show_progress)
        t0 = time.time()
        prior = float(store.get_meta("search_seconds", 0.0) or 0.0)
        try:
            self.rundir.record_start(
                store,
                dataset.summary(),
                {"shape": list(dataset.input_shape), "classes": dataset.num_classes},
                f"ofa train {'resumed' if resume else 'started'}",
            )
            with training_threads(self.cfg.latency.threads):
                trainer = self.trainer = OFATrainer(space, dataset, self.ofa)
                self._set_meta(store, world_size=self.dist.world_size)
                start = self._resume_from(trainer, store, log) if resume else None
                self._tell_followers({"state": trainer.state_dict() if start else None})
                self._say_plan(space.name, dataset.summary(), resume, log)
                self._train(trainer, store, log)
                distributed.shutdown()  # the other ranks are done; the rest is rank 0's alone
                save_checkpoint(trainer.supernet.state_dict(), final_path(self.run_dir))
            wall = prior + time.time() - t0
            cpu = self._cpu_seconds(store)
            store.set_meta("search_seconds", wall)
            self._set_meta(store, cpu_seconds=cpu, epochs=trainer.epoch, done=True)
            store.set_meta("status", "done")
            summary = OFATrainSummary(
                self.run_dir,
                trainer.epoch,
                tuple((p.name, p.epochs) for p in self.ofa.phases),
                cpu,
                wall,
                final_path(self.run_dir),
                start,
                self.dist.world_size,
            )
            store.log_event("done", summary.line())
            # the report's ofa section: loss per phase (specialisations add their rows later)
            write_report(self.run_dir, self.cfg, store, space, make_objective(self.cfg))
            log.line(summary.line(), echo=False)
            try:
                store.checkpoint_backup()
            except (OSError, StoreError, sqlite3.Error) as exc:  # the weights are saved
                log.say(f"warning: store backup failed ({exc}); the training is complete")
            return summary
        except SearchInterrupted as stop:
            store.set_meta("search_seconds", prior + time.time() - t0)
            n = len(checkpoints(self.run_dir))
            stop.message = (
                f"interrupted by {stop.signal_name} during ofa training: {n} epoch "
                f"checkpoint(s) in {self.run_dir / CHECKPOINT_DIR}; continue with: "
                f"{self.resume_command()}"
            )
            store.set_meta("status", "interrupted")
            store.log_event("interrupt", stop.message)
            raise
        except RuntimeError as exc:
            if not (self.dist.active and _lost_rank(exc)):
                raise
            store.set_meta("search_seconds", prior + time.time() - t0)
            n = len(checkpoints(self.run_dir))
            message = (
                f"ofa training lost one of its {self.dist.world_size} processes "
                f"({_first_line(exc)}); {n} epoch checkpoint(s) in "
                f"{self.run_dir / CHECKPOINT_DIR}; continue with: {self.resume_command()}"
            )
            store.set_meta("status", "interrupted")
            store.log_event("interrupt", message)
            # said now: torchrun's SIGTERM follows a lost rank and may end this process soon
            log.say(f"error: {message}")
            raise LostRank(message) from None
        finally:
            log.close()
            store.close()

    def _say_plan(self, space: str, data: str, resume: bool, log: RunLog) -> None:
        plan = ", ".join(
            f"{p.name} {p.epochs} ({'+'.join(p.elastic) or 'largest'})" for p in self.ofa.phases
        )
        if self.dist.active:
            plan += f"; data-parallel on {self.dist.world_size} processes (DDP, gloo)"
        self.console.print(
            f"[bold]nasforge ofa[/] {escape(self.cfg.name)}: {escape(data)}; space {space}; "
            f"phases {escape(plan)}",
            highlight=False,
        )
        log.line(
            f"{'resumed' if resume else 'started'} ofa train {self.cfg.name}: {data}; phases "
            f"{plan}; progress also in {self.run_dir / LOG_NAME}",
            echo=False,
        )

    def _train(self, trainer: OFATrainer, store: TrialStore, log: RunLog) -> None:
        total = self.ofa.total_epochs
        with self._progress(total, trainer.epoch, log) as (progress, task):
            while not trainer.done:
                rec, cpu_seconds = _train_epoch(trainer, self.dist)
                record = epoch_record(rec, cpu_seconds)
                store.add_epoch(OFA_PHASE, trainer.epoch, record)  # before its checkpoint
                save_checkpoint(trainer.state_dict(), checkpoint_path(self.run_dir, trainer.epoch))
                elastic = "+".join(rec.elastic) or "largest only"
                log.line(
                    f"ofa epoch {trainer.epoch}/{total} phase {rec.phase} ({elastic}): loss "
                    f"{rec.loss:.4f}, teacher loss {rec.teacher_loss:.4f}, {rec.subnets} "
                    f"subnets, {rec.steps} steps, lr {rec.lr:.4g}; "
                    f"{record['cpu_seconds']:.1f} CPU s"
                )
                progress.update(
                    task,
                    completed=trainer.epoch,
                    status=f"{rec.phase}: loss {rec.loss:.4f}",
                )

    @contextmanager
    def _progress(self, total: int, done: int, log: RunLog) -> Iterator[tuple[Progress, Any]]:
        progress = Progress(
            TextColumn("[bold]ofa"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not log.live,  # off a terminal the log lines are the progress
            transient=False,
        )
        task = progress.add_task("ofa", total=total, completed=done, status="")
        with progress:
            yield progress, task

    def _resume_from(self, trainer: OFATrainer, store: TrialStore, log: RunLog) -> int:
        """Load the newest readable checkpoint; add the records of its epochs the store lacks;
        returns its epoch (0: none, training starts from the beginning)."""
        for epoch, path in reversed(checkpoints(self.run_dir)):
            try:
                state = load_checkpoint(path)
            except NasforgeError as exc:
                log.say(f"warning: {exc}; trying the one before")
                continue
            trainer.load_state_dict(state)
            have = {r["epoch"] for r in store.epochs(OFA_PHASE)}
            for i, rec in enumerate(trainer.records, start=1):
                if i not in have:
                    store.add_epoch(OFA_PHASE, i, epoch_record(rec))
            log.say(f"ofa: resumed from {path} ({epoch} epoch(s) done)")
            return epoch
        log.say("ofa: no checkpoint to resume from; training starts at epoch 1")
        return 0

    def _set_meta(self, store: TrialStore, **fields: Any) -> None:
        meta = dict(store.get_meta(OFA_META) or {})
        meta.update(
            config=self.ofa.model_dump(mode="json"),
            total_epochs=self.ofa.total_epochs,
            checkpoints=CHECKPOINT_DIR,
            final=str(final_path(self.run_dir).relative_to(self.run_dir)),
            **fields,
        )
        store.set_meta(OFA_META, meta)

    @staticmethod
    def _cpu_seconds(store: TrialStore) -> float:
        recs = store.epochs(OFA_PHASE)
        return float(sum(r.get("cpu_seconds") or r.get("seconds") or 0.0 for r in recs))


def _train_epoch(trainer: OFATrainer, ctx: DistContext) -> tuple[OFAEpochRecord, float]:
    """One epoch (on every rank in lock step) and its CPU seconds summed over the ranks."""
    t0 = time.process_time()
    rec = trainer.step_epoch()
    cpu = torch.tensor([time.process_time() - t0], dtype=torch.float64)
    distributed.all_reduce_mean_([cpu], ctx)
    return rec, float(cpu[0]) * ctx.world_size


def _lost_rank(exc: RuntimeError) -> bool:
    """Whether ``exc`` says another rank of the job is gone (killed, its host lost): torch's
    ``DistError``, or gloo's transport error, which reaches Python as a plain RuntimeError
    (measured: "gloo/transport/tcp/pair.cc: Read error ...: Connection reset by peer")."""
    text = str(exc)
    return isinstance(exc, torch.distributed.DistError) or "gloo/transport" in text


def _first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s text, up to its first sentence's end (gloo's errors go on
    with advice over several sentences)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__


def train_ofa(
    cfg: ExperimentConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    progress: bool = True,
) -> OFATrainSummary | None:
    """:meth:`OFATraining.run` in one call (the Python API of ``nasforge ofa train``)."""
    return OFATraining(cfg, run_dir, console, progress).run(resume)


__all__ = [
    "FINAL_NAME",
    "LostRank",
    "OFA_META",
    "OFA_PHASE",
    "OFATrainSummary",
    "OFATraining",
    "epoch_record",
    "final_path",
    "load_final_weights",
    "train_ofa",
]
