"""The weight-sharing phase of a run (``oneshot:`` section), in the main process.

``method: darts``: :class:`~nasforge.oneshot.darts.DartsSearch` runs its epochs on the train
(network weights) and validation (architecture weights) splits; after each epoch its record
goes to the store (``store.add_epoch("darts", epoch, record)``, ``epoch`` counting completed
epochs from 1) and its state to ``<run>/supernet/epoch_XXXX.pt``. Then the arch is derived (the
config's derivation, under ``latency_limit_ms`` when set) and recorded as the run's one
finished trial; its ``val_acc`` is the supernet's at the end of the search, its cost the
search's CPU seconds. The trial loop does not run; the final step retrains that arch
stand-alone like any run's best.

``method: spos``: the single-path supernet is trained here (records
``store.add_epoch("supernet", epoch, asdict(EpochRecord) | {"sampling", "cpu_seconds"})``,
``epoch`` from 0 as :class:`~nasforge.oneshot.spos.EpochRecord` counts; checkpoints as
above), then the strategy's trial loop scores candidates with the ``supernet`` evaluator,
which loads the finished checkpoint and never trains (its cost is charged here once).

Resume (``--resume`` after ``kill -9``): the last readable checkpoint is loaded and the search
continues from it, exactly (both trainers checkpoint their random state). An epoch record is
written *before* its checkpoint, so the store never lacks the record of a checkpointed epoch;
an epoch recorded but not checkpointed is run again and its record replaced. Checkpoints are
written atomically (a temporary file, synced, then renamed) and hold tensors and plain values
only (``torch.load(..., weights_only=True)``).

Search cost: the CPU seconds of the phase (summed over its epoch records, so a resumed run
counts each recorded epoch once) go to the store's ``oneshot`` meta with ``in_trial_costs``
(``True`` for DARTS, whose derived trial carries them; ``False`` for SPOS, where the trials
carry only their own evaluation); the phase's wall seconds are added to ``search_seconds``.
Validation split for search; the test split is not touched here.

Data-parallel (``torchrun --nproc-per-node N -m nasforge search CFG``): this phase runs on rank
0 and trains in lock step with the other ranks (:mod:`nasforge.experiment.oneshot_ddp`), which
build the same trainer and write nothing. ``world_size`` (the number of processes) is in the
``oneshot`` meta and in every epoch record; an epoch's ``cpu_seconds`` is summed over the ranks.
"""

from __future__ import annotations

import pickle
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nasforge.checkpoint import save_state
from nasforge.data import Dataset
from nasforge.errors import ConfigError, NasforgeError
from nasforge.evaluators.train import TrainEvaluator
from nasforge.experiment import oneshot_ddp as ddp
from nasforge.experiment.config import ExperimentConfig
from nasforge.experiment.final import training_threads
from nasforge.experiment.interrupt import SearchInterrupted
from nasforge.experiment.oneshot_config import CHECKPOINT_DIR, checkpoint_path, darts_config
from nasforge.experiment.preflight import PreparedRun
from nasforge.experiment.progress import RunLog
from nasforge.experiment.store import TrialStore
from nasforge.oneshot import distributed
from nasforge.train import TrainConfig

ONESHOT_META = "oneshot"
_EPOCH_FILE = re.compile(r"^epoch_(\d{4,})\.pt$")


# -- checkpoints --------------------------------------------------------------------------------
def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the run's weight-sharing checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return sorted(found)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save(state)`` to ``path`` atomically: a reader (or a resume after ``kill -9``)
    sees the old file or the whole new one, never a part."""
    save_state(state, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (``weights_only``: runs no code).

    Raises:
        NasforgeError: the file cannot be read or holds no state (names it).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NasforgeError(f"{path}: cannot read the checkpoint ({why})") from None
    if not isinstance(state, dict):
        raise NasforgeError(f"{path}: not a weight-sharing checkpoint")
    return state


# -- the phase ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OneshotOutcome:
    """What the phase did: ``search_seconds`` (the run's wall seconds so far, phase included),
    ``cpu_seconds`` (the phase's search cost), ``run_loop`` (whether the strategy's trial
    loop follows: SPOS yes, DARTS no) and ``note`` (one line for the run's summary)."""

    search_seconds: float
    cpu_seconds: float
    run_loop: bool
    note: str = ""


class OneshotPhase:
    """Runs the ``oneshot:`` phase of one run (see the module docstring).

    Args:
        cfg: the run's config (with a ``oneshot`` section).
        run_dir: the run directory.
        store: the run's store (this process holds the run's lock).
        prepared: the run's built objects (dataset, space, objective, latency model) and
            evaluator (SPOS: the ``supernet`` one, whose recipe and checkpoint the phase
            trains to).
        log: progress lines; the rich bar shows where :attr:`RunLog.live`.
        console: where the bar is drawn.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: Path,
        store: TrialStore,
        prepared: PreparedRun,
        log: RunLog,
        console: Console,
    ) -> None:
        if cfg.oneshot is None:
            raise ValueError("OneshotPhase: the config has no oneshot section")
        objects = prepared.objects
        if objects.dataset is None:
            raise ConfigError("data: a weight-sharing search trains on a dataset")
        self.cfg, self.oneshot = cfg, cfg.oneshot
        self.method = cfg.oneshot.method
        self.phase = "darts" if self.method == "darts" else "supernet"
        self.run_dir, self.store, self.objects = run_dir, store, objects
        self.dataset: Dataset = objects.dataset
        self.evaluator = prepared.evaluator
        self.log, self.console = log, console
        self.world_size = distributed.current().world_size  # > 1: data-parallel (torchrun)
        self._cpu: float | None = None  # DARTS: the derived trial's cost (derivation included)

    def plan(self, loop: str) -> str:
        """One phrase for the run's start line (``loop``: what the trial loop does)."""
        ddp = (
            f", data-parallel on {self.world_size} processes (DDP, gloo)"
            if self.world_size > 1
            else ""
        )
        if self.method == "darts":
            d = darts_config(self.oneshot.options, self.cfg.seed)
            reg = ", ".join(d.regularization) or "none (plain DARTS)"
            return f"DARTS, {d.epochs} epochs, regularization {reg}{ddp}"
        sampling = self.oneshot.options.get("sampling", "uniform")
        return f"single-path supernet ({sampling} sampling{ddp}), then {loop}"

    def run(self, resume_command: str) -> OneshotOutcome:
        """Run (or continue) the phase; SIGINT/SIGTERM stop it with the checkpoints kept
        (the message says so and gives ``resume_command``).

        Raises:
            SearchInterrupted: with its message set (what was saved, how to resume).
            NasforgeError: a checkpoint of another config, a missing latency table, no arch
                under the latency limit; data-parallel: a collective failed (another rank
                died or was stopped), the checkpoints are kept.
        """
        t0 = time.time()
        prior = float(self.store.get_meta("search_seconds", 0.0) or 0.0)
        if self.world_size > 1:  # continue as it ran: data-parallel
            resume_command = f"torchrun --nproc-per-node {self.world_size} -m {resume_command}"
        try:
            run_loop = self._darts() if self.method == "darts" else self._spos()
        except SearchInterrupted as stop:
            stop.message = self._stopped(f"interrupted by {stop.signal_name}", resume_command, t0)
            raise
        except RuntimeError as exc:  # torch.distributed's errors are RuntimeErrors
            if self.world_size == 1:
                raise
            ddp.ignore_stop_signals()  # torchrun's SIGTERM follows; this message stays
            why = f"a data-parallel collective failed ({ddp.collective_error(exc)})"
            msg = self._stopped(f"{why}: another rank died or was stopped", resume_command, t0)
            self.log.line(msg, echo=False)
            raise NasforgeError(msg) from None
        seconds = prior + time.time() - t0
        self.store.set_meta("search_seconds", seconds)
        cpu = self._cpu if self._cpu is not None else self.cpu_seconds()
        meta = dict(self.store.get_meta(ONESHOT_META) or {})
        self.store.set_meta(ONESHOT_META, {**meta, "cpu_seconds": cpu})
        epochs = len(self.store.epochs(self.phase))
        how = "in the derived trial's cost" if self.method == "darts" else "once, before the trials"
        note = f"{self.phase} search cost: {cpu:.1f} CPU seconds ({epochs} epochs; charged {how})"
        return OneshotOutcome(seconds, cpu, run_loop, note)

    def _stopped(self, why: str, resume_command: str, t0: float) -> str:
        """Record that the phase stopped early (status, time, event); the line that says so."""
        prior = float(self.store.get_meta("search_seconds", 0.0) or 0.0)
        self.store.set_meta("search_seconds", prior + time.time() - t0)
        n = len(checkpoints(self.run_dir))
        message = (
            f"{why} during the {self.phase} phase: {n} epoch checkpoint(s) in "
            f"{self.run_dir / CHECKPOINT_DIR}; continue with: {resume_command}"
        )
        self.store.set_meta("status", "interrupted")
        self.store.log_event("interrupt", message)
        return message

    def cpu_seconds(self) -> float:
        """The phase's CPU seconds: summed over its epoch records (each epoch once)."""
        recs = self.store.epochs(self.phase)
        return float(sum(r.get("cpu_seconds") or r.get("seconds") or 0.0 for r in recs))

    # -- shared ---------------------------------------------------------------------------------
    @contextmanager
    def _progress(self, total: int, done: int) -> Iterator[tuple[Progress, Any]]:
        progress = Progress(
            TextColumn(f"[bold]{self.phase}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.log.live,  # off a terminal the log lines are the progress
            transient=False,
        )
        task = progress.add_task(self.phase, total=total, completed=done, status="")
        with progress, training_threads(self.cfg.latency.threads):
            yield progress, task

    def _resume_from(self, load: Any, history: Any) -> int:
        """Load the newest readable checkpoint with ``load(state)``; add the records of
        ``history()`` (the loaded state's epochs) the store lacks; returns the epoch."""
        found = checkpoints(self.run_dir)
        for epoch, path in reversed(found):
            try:
                state = load_checkpoint(path)
            except NasforgeError as exc:
                self.log.say(f"warning: {exc}; trying the one before")
                continue
            load(state)
            have = {r["epoch"] for r in self.store.epochs(self.phase)}
            for rec in history():
                if rec["epoch"] not in have:
                    self.store.add_epoch(self.phase, rec["epoch"], rec)
            self.log.say(f"{self.phase}: resumed from {path} ({epoch} epoch(s) done)")
            return epoch
        return 0

    def _set_meta(self, **fields: Any) -> None:
        meta = dict(self.store.get_meta(ONESHOT_META) or {})
        meta.update(fields)
        self.store.set_meta(ONESHOT_META, meta)

    # -- DARTS ----------------------------------------------------------------------------------
    def _darts(self) -> bool:
        store, space, cfg = self.store, self.objects.space, self.cfg
        derived = store.trials(("complete",))
        if derived:  # derived and recorded by an earlier session
            self._cpu = derived[0].cost_seconds
            ddp.announce(False)  # the other ranks (torchrun) have nothing to train
            ddp.leave()
            return False
        ddp.announce(True)
        config = darts_config(self.oneshot.options, cfg.seed)
        search = ddp.build_darts(cfg, self.objects)
        self._set_meta(
            method="darts",
            phase="darts",
            in_trial_costs=True,
            checkpoints=CHECKPOINT_DIR,
            config=config.to_dict(),
            world_size=self.world_size,
        )
        self._resume_from(search.load_state_dict, lambda: search.history)
        # "auto" is scaled to the run's steps; a resumed search keeps its checkpoint's value
        self._set_meta(alpha_lr=search.alpha_lr.to_dict())
        self.log.say(f"darts: {search.alpha_lr.note()}")
        ddp.share_state(search)  # the other ranks start from this state
        with self._progress(config.epochs, search.epoch) as (progress, task):
            while not search.done:
                rec = search.step_epoch()
                store.add_epoch("darts", rec["epoch"], rec)  # before its checkpoint
                save_checkpoint(search.state_dict(), checkpoint_path(self.run_dir, search.epoch))
                self.log.line(_darts_line(rec, config.epochs))
                progress.update(
                    task,
                    completed=search.epoch,
                    status=f"val_acc {rec['val_acc']:.3f} skip {rec['skip_count']}",
                )
            ddp.leave()  # training is over: rank 0 derives and goes on alone
            if search.stopped:
                self.log.say(f"darts: {search.stopped}")
            t0 = time.process_time()
            arch = search.derive()
            derive_cpu = time.process_time() - t0
        last = search.history[-1] if search.history else search.record()
        metrics: dict[str, float] = {
            "val_acc": float(last["val_acc"]),
            "val_loss": float(last["val_loss"]),
            "supernet_epochs": float(search.epoch),
            "skip_count": float(last["skip_count"]),
            "none_count": float(last["none_count"]),
        }
        if search.latency is not None:
            metrics["predicted_latency_ms"] = float(search.latency.predict(arch))
        metrics.update(self._cost_metrics(arch))
        cpu = self._cpu = self.cpu_seconds() + derive_cpu
        tid = store.add_trial(arch)
        score = self.objects.objective.score(metrics)
        store.finish_trial(tid, "complete", metrics, score, cpu)
        described = space.describe(arch)
        self._set_meta(
            derived=described,
            derived_trial=tid,
            epochs=search.epoch,
            stopped=search.stopped,
            derivation=config.derivation,
        )
        self.log.say(
            f"darts: derived {described} ({config.derivation}) after {search.epoch} epoch(s), "
            f"recorded as trial {tid}; supernet val_acc {metrics['val_acc']:.4f}; search cost "
            f"{cpu:.1f} CPU seconds"
        )
        return False

    def _cost_metrics(self, arch: Any) -> dict[str, float]:
        """The derived net's params, FLOPs, size and latency (measured or predicted) or
        mflops, named and measured as the ``train`` evaluator does."""
        costs = TrainEvaluator(
            self.objects.space,
            self.dataset,
            TrainConfig(),
            self.objects.latency,
            self.run_dir / ".latency.lock",
        )
        return costs.cost_metrics(arch, self.objects.space.build(arch))

    # -- single-path supernet -------------------------------------------------------------------
    def _spos(self) -> bool:
        config, final = ddp.supernet_recipe(self.evaluator)
        self._set_meta(
            method="spos",
            phase="supernet",
            in_trial_costs=False,
            sampling=config.sampling,
            checkpoints=CHECKPOINT_DIR,
            checkpoint=str(final.relative_to(self.run_dir)),
            epochs=config.epochs,
            world_size=self.world_size,
        )
        if final.is_file():  # trained by an earlier session: the trial loop continues
            ddp.announce(False)  # the other ranks (torchrun) have nothing to train
            ddp.leave()
            return True
        ddp.announce(True)
        trainer = ddp.build_spos(self.objects, config)
        extra = {"sampling": config.sampling}

        def history() -> list[dict[str, Any]]:
            return [asdict(r) | extra for r in trainer.records]

        self._resume_from(trainer.load_state_dict, history)
        warning = trainer.budget_warning()  # too few passes per op choice to rank honestly
        if warning is not None:
            self.log.say(f"warning: {warning}")
        ddp.share_state(trainer)  # the other ranks start from this state
        with self._progress(config.epochs, trainer.epoch) as (progress, task):
            while not trainer.done:
                rec = trainer.step_epoch()  # its cpu_seconds: summed over the ranks
                record = asdict(rec) | extra
                self.store.add_epoch("supernet", rec.epoch, record)  # before its checkpoint
                save_checkpoint(trainer.state_dict(), checkpoint_path(self.run_dir, trainer.epoch))
                self.log.line(
                    f"supernet epoch {trainer.epoch}/{config.epochs} ({config.sampling} "
                    f"sampling): loss {rec.loss:.4f}, {rec.paths} paths, lr {rec.lr:.4g}; "
                    f"{record['cpu_seconds']:.1f} CPU s"
                )
                progress.update(task, completed=trainer.epoch, status=f"loss {rec.loss:.4f}")
            ddp.leave()  # training is over: rank 0 goes on alone
        if not final.is_file():  # epochs: 0 (an untrained supernet, on purpose)
            save_checkpoint(trainer.state_dict(), final)
        self.log.say(
            f"supernet: {trainer.epoch} epoch(s) of {config.sampling} sampling trained in "
            f"{self.cpu_seconds():.1f} CPU seconds (the search cost, charged once); trials are "
            f"scored on it from {final}"
        )
        return True


def _darts_line(rec: dict[str, Any], epochs: int) -> str:
    eig = rec.get("hessian_eigenvalue")
    lat = (
        f", expected latency {rec['expected_latency_ms']:.3f} ms"
        if rec.get("expected_latency_ms") is not None
        else ""
    )
    return (
        f"darts epoch {rec['epoch']}/{epochs}: val_acc {rec['val_acc']:.4f}, val_loss "
        f"{rec['val_loss']:.4f}, train_acc {rec['train_acc']:.4f}; skip {rec['skip_count']}, "
        f"none {rec['none_count']}, entropy {rec['entropy']:.3f}, hessian "
        f"{'-' if eig is None else f'{eig:.4g}'}{lat}; cell {rec['arch_string']}; "
        f"{rec['cpu_seconds']:.1f} CPU s"
    )


__all__ = [
    "ONESHOT_META",
    "OneshotOutcome",
    "OneshotPhase",
    "checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]
