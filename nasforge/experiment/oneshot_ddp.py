"""The data-parallel side of the weight-sharing phase: ``torchrun ... -m nasforge search CFG``.

.. code-block:: console

    torchrun --standalone --nproc-per-node 2 -m nasforge search examples/oneshot.yaml

Every rank runs the same command. :func:`join` (called first by
:meth:`~nasforge.experiment.runner.Experiment.run`) checks the config allows data-parallel
training and joins torchrun's process group (:func:`nasforge.oneshot.distributed.init`).

Rank 0 runs the run as one process would (:class:`~nasforge.experiment.oneshot_run.OneshotPhase`:
lock, store, checkpoints, log, then the trial loop, final step and report alone) and, at fixed
points, tells the other ranks what to do: :func:`announce` whether there is anything to train
(an earlier session may have finished it), :func:`share_state` the state training starts from
(the loaded checkpoint on ``--resume``: sent over the process group, so the other ranks need no
shared file system), :func:`leave` once training ends.

Ranks > 0 run :func:`follow`: they build the dataset, space and trainer from the same config
(:func:`build_darts` / :func:`build_spos`, the functions rank 0 uses), take rank 0's state,
train the epochs in lock step (the trainers' own collectives: DDP gradients, alpha gradients,
epoch sums) and return; they write nothing (no lock, no store, no log, no checkpoint) and print
only errors. The collectives happen in the same order on every rank: announce, share_state,
the epochs, leave.
"""

from __future__ import annotations

import re
import signal
import threading
from pathlib import Path
from typing import Any, Protocol

from nasforge.errors import ConfigError, NasforgeError
from nasforge.evaluators.supernet import SupernetEvaluator
from nasforge.experiment.config import ExperimentConfig
from nasforge.experiment.final import training_threads
from nasforge.experiment.oneshot_config import darts_config
from nasforge.experiment.preflight import prepare_run
from nasforge.experiment.setup import RunObjects
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.oneshot import distributed
from nasforge.oneshot.darts import DartsConfig, DartsSearch
from nasforge.oneshot.distributed import DistContext
from nasforge.oneshot.spos import SupernetConfig, SupernetTrainer


class Trainer(Protocol):
    """What the phase needs of a weight-sharing trainer (DARTS search or supernet trainer)."""

    epoch: int

    @property
    def done(self) -> bool: ...

    def step_epoch(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# -- every rank ---------------------------------------------------------------------------------
def join(cfg: ExperimentConfig) -> DistContext:
    """This process's place in a data-parallel run: alone without torchrun's environment,
    else the joined process group.

    Raises:
        ConfigError: several processes for a config without a ``oneshot:`` section (only
            supernet training is data-parallel) or DARTS of second order; a broken torchrun
            environment. Raised on every rank, before any process waits for another.
    """
    try:
        ctx = distributed.from_env()
    except ValueError as exc:
        raise ConfigError(f"torchrun environment: {exc}") from None
    if not ctx.active:
        return ctx
    if cfg.oneshot is None:
        raise ConfigError(
            f"oneshot: {ctx.world_size} processes (torchrun) train a weight-sharing supernet "
            "data-parallel; this config has no oneshot section (a trial search scales with "
            "search.executor: process or ray): run it without torchrun"
        )
    if cfg.oneshot.method == "darts" and darts_config(cfg.oneshot.options, cfg.seed).order == 2:
        raise ConfigError(
            f"oneshot.options.order: 2 (second-order DARTS) is not supported in data-parallel "
            f"training ({ctx.world_size} processes); use order 1, or run without torchrun"
        )
    return distributed.init()


def darts_latency(
    cfg: ExperimentConfig, objects: RunObjects, config: DartsConfig
) -> LatencyPredictor | None:
    """The run's latency table as a predictor, when a latency option of ``config`` needs it.

    Raises:
        ConfigError: the option is set but ``latency.table`` is no file.
    """
    if config.latency_penalty <= 0 and config.latency_limit_ms is None:
        return None
    model = objects.latency
    if model is not None and model.predictor is not None:
        return model.predictor
    lat = cfg.latency
    field = "latency_penalty" if config.latency_penalty > 0 else "latency_limit_ms"
    if not lat.table or not Path(lat.table).is_file():
        raise ConfigError(
            f"oneshot.options.{field}: latency-aware DARTS needs the measured latency table "
            f"of the space; latency.table {lat.table!r} is not a file (build one with "
            "`nasforge latency build`)"
        )
    table_model = LatencyModel(
        "predict",
        table=lat.table,
        space=objects.space,
        statistic=lat.statistic,
        allow_untrusted_table=lat.allow_untrusted_table,
    )
    return table_model.predictor


def build_darts(cfg: ExperimentConfig, objects: RunObjects) -> DartsSearch:
    """The run's DARTS search, built from the config (the same on every rank)."""
    if cfg.oneshot is None or objects.dataset is None:
        raise ConfigError("oneshot: DARTS trains on a dataset")
    config = darts_config(cfg.oneshot.options, cfg.seed)
    return DartsSearch.from_dataset(
        objects.space, config, objects.dataset, darts_latency(cfg, objects, config)
    )


def supernet_recipe(evaluator: Any) -> tuple[SupernetConfig, Path]:
    """The recipe of the run's ``supernet`` evaluator and the checkpoint SPOS trains to.

    Raises:
        ConfigError: the run's evaluator is not the supernet one with a checkpoint.
    """
    if not isinstance(evaluator, SupernetEvaluator) or evaluator.checkpoint is None:
        raise ConfigError("evaluator.kind: oneshot.method 'spos' needs the supernet evaluator")
    return evaluator.config, evaluator.checkpoint


def build_spos(objects: RunObjects, config: SupernetConfig) -> SupernetTrainer:
    """The run's single-path supernet trainer (the same on every rank)."""
    if objects.dataset is None:
        raise ConfigError("oneshot: a supernet trains on a dataset")
    return SupernetTrainer(objects.space, objects.dataset, config)


def leave() -> None:
    """Training is over: wait for every rank, then leave the process group (rank 0 goes on
    alone; a no-op in one process)."""
    distributed.barrier()
    distributed.shutdown()


# -- rank 0 -------------------------------------------------------------------------------------
def announce(train: bool) -> None:
    """Rank 0 tells the other ranks whether there is anything to train."""
    distributed.broadcast_object(train)


def share_state(trainer: Trainer) -> None:
    """Rank 0 sends the state training starts from (fresh or the loaded checkpoint)."""
    if distributed.current().active:
        distributed.broadcast_object(trainer.state_dict())


def collective_error(exc: BaseException) -> str:
    """A failed collective's error in a few words (gloo's source location and advice cut)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]


def ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on in this process (main thread only).

    For rank 0 once a collective failed: the run is already stopping with its message, and
    torchrun sends SIGTERM to the surviving ranks when one fails; that signal must not replace
    the message by an interruption at some later line of the clean-up.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


# -- ranks > 0 ----------------------------------------------------------------------------------
def follow(cfg: ExperimentConfig, run_dir: Path) -> int:
    """Train in lock step with rank 0 and return the number of epochs trained here.

    Raises:
        NasforgeError: the process group broke (rank 0 stopped or failed), in one line.
    """
    ctx = distributed.current()
    if cfg.oneshot is None:
        raise ConfigError("oneshot: a follower rank needs a oneshot section")
    prepared = prepare_run(cfg, run_dir)
    try:
        done = 0
        if distributed.broadcast_object(False):
            with training_threads(cfg.latency.threads):
                trainer: Trainer = (
                    build_darts(cfg, prepared.objects)
                    if cfg.oneshot.method == "darts"
                    else build_spos(prepared.objects, supernet_recipe(prepared.evaluator)[0])
                )
                trainer.load_state_dict(distributed.broadcast_object({}))
                start = trainer.epoch
                while not trainer.done:
                    trainer.step_epoch()
                done = trainer.epoch - start
        leave()
        return done
    except RuntimeError as exc:  # torch.distributed's errors (DistBackendError is one)
        raise NasforgeError(
            f"data-parallel rank {ctx.rank}: training stopped ({collective_error(exc)}); if "
            "rank 0 stopped or failed, its output says why"
        ) from None
    except KeyboardInterrupt:  # Ctrl-C reaches every rank; rank 0 says what was saved
        raise SystemExit(130) from None


__all__ = [
    "announce",
    "build_darts",
    "build_spos",
    "collective_error",
    "darts_latency",
    "follow",
    "ignore_stop_signals",
    "join",
    "leave",
    "share_state",
    "supernet_recipe",
]
