"""`SupernetEvaluator` (``evaluator.kind: supernet``): score candidates with inherited weights.

The supernet of the space is trained once (SPOS uniform or FairNAS fair sampling, see
:mod:`nasforge.oneshot.spos`), then every candidate is scored by the validation accuracy of its
path with the supernet's weights, after BN recalibration on fixed training batches. Any
strategy (evolution, predictor, ...) searches over it like over trained candidates, at a
fraction of the cost; the final step (:mod:`nasforge.experiment.final`) retrains the best
candidates stand-alone, which is where their real accuracy comes from.

Training happens on the first :meth:`~SupernetEvaluator.evaluate` (not in the constructor,
so building the run stays cheap) and the epochs trained in this process are charged to that
evaluation's ``cost_seconds`` (``info["supernet_seconds"]``), so the run's search cost includes
them once: a worker that loads a finished checkpoint charges nothing for it.

With a checkpoint path (the run directory's ``supernet.pt`` by default) every epoch is saved,
an interrupted run resumes from the last epoch, and worker processes share one training: the
first holds a file lock and trains, the others wait and load. The lock file
(``<checkpoint>.lock``) is removed once the supernet is fully trained and no other process
holds it (:func:`remove_lock_file`), so a finished run leaves only its checkpoints.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

from nasforge.data import Dataset
from nasforge.errors import ConfigError
from nasforge.evaluators.base import Evaluator, EvaluatorContext, Fidelity, Reporter, Result
from nasforge.evaluators.train import TrainEvaluator, file_lock
from nasforge.hardware.model import LatencyModel
from nasforge.oneshot.spos import SupernetConfig, SupernetTrainer
from nasforge.space import Arch, SearchSpace
from nasforge.train import TrainConfig

CHECKPOINT_NAME = "supernet.pt"


class SupernetEvaluator(Evaluator):
    """Inherited-weight validation accuracy of a candidate, plus the stand-alone costs.

    Metrics: ``val_acc`` (inherited weights, BN recalibrated, validation split, in [0, 1]),
    ``params``, ``flops``, ``size_bytes`` and ``latency_ms`` / ``mflops`` of the stand-alone net
    (as :class:`~nasforge.evaluators.train.TrainEvaluator` reports them), and
    ``eval_seconds``. ``budget`` is ignored (inherited weights have no fidelity to vary).
    Never touches the test split.

    Args:
        space: the search space (needs a registered supernet).
        dataset: train split trains the supernet and recalibrates BN; validation scores.
        config: the supernet recipe.
        latency: measures or predicts the stand-alone net's latency (``None``: ``mflops``).
        checkpoint: where the trained supernet is saved and loaded (``None``: kept in memory).
        lock_path: a file lock for latency measurement (as TrainEvaluator's).
    """

    def __init__(
        self,
        space: SearchSpace,
        dataset: Dataset,
        config: SupernetConfig,
        latency: LatencyModel | None = None,
        checkpoint: str | Path | None = None,
        lock_path: str | Path | None = None,
    ) -> None:
        self.space, self.dataset, self.config = space, dataset, config
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        # the stand-alone cost metrics are TrainEvaluator's (same names, same measurement)
        self._costs = TrainEvaluator(space, dataset, TrainConfig(), latency, lock_path)
        self._trainer: SupernetTrainer | None = None
        self._trained_here_s = 0.0

    def produces(self) -> frozenset[str]:
        """``val_acc``, ``eval_seconds`` and TrainEvaluator's cost metrics."""
        costs = self._costs.produces() - {"val_acc", "train_seconds"}
        return frozenset({"val_acc", "eval_seconds", *costs})

    @property
    def trainer(self) -> SupernetTrainer:
        """The trained supernet's trainer (trains or loads it on first use)."""
        if self._trainer is None:
            self._trainer = self._prepare()
        return self._trainer

    def _prepare(self) -> SupernetTrainer:
        trainer = SupernetTrainer(self.space, self.dataset, self.config)
        if self.checkpoint is None:
            trainer.train()
            self._trained_here_s = trainer.train_seconds
            return trainer
        lock = self.checkpoint.with_name(self.checkpoint.name + ".lock")
        with file_lock(lock):
            if self.checkpoint.exists():
                trainer.load(self.checkpoint)
            loaded_s = trainer.train_seconds
            trainer.train(self.checkpoint)
            self._trained_here_s = trainer.train_seconds - loaded_s
        if trainer.done and self.checkpoint.exists():
            # only once the supernet is finished: a process that takes the lock later loads
            # it and trains nothing, so it cannot matter that it locks a removed file
            remove_lock_file(lock)
        return trainer

    def evaluate(
        self, arch: Arch, budget: float | Fidelity | None = None, reporter: Reporter | None = None
    ) -> Result:
        first = self._trainer is None
        trainer = self.trainer
        t1 = time.perf_counter()
        metrics = {"val_acc": trainer.accuracy(arch, "val")}
        metrics.update(self._costs.cost_metrics(arch, self.space.build(arch)))
        metrics["eval_seconds"] = time.perf_counter() - t1
        info: dict[str, Any] = {
            "supernet_epochs": trainer.epoch,
            "sampling": self.config.sampling,
            "choice_passes": trainer.epoch * trainer.choice_passes_per_epoch,
        }
        warning = trainer.budget_warning("evaluator.options.epochs")
        if warning is not None:
            info["supernet_warning"] = warning
        cost = metrics["eval_seconds"]
        if first:
            # the epochs this process trained are the run's cost, charged once (waiting for
            # another worker's training or loading its checkpoint is not search cost)
            info["supernet_seconds"] = self._trained_here_s
            cost += self._trained_here_s
        return Result(metrics, cost_seconds=cost, info=info)


def remove_lock_file(path: str | Path) -> bool:
    """Remove the lock file ``path`` unless another process holds its lock; whether it was
    removed.

    The lock is taken without waiting, and the file is removed only if the path still names
    the file that was locked (another process may have removed and re-created it meanwhile),
    so a lock another process holds is never removed. A process still waiting for the lock
    when the file goes gets the lock of the removed file; callers remove it only when the
    work the lock guards is finished, so that waiter has nothing left to do under it.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")  # never creates it; closed in the finally below
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another process (or its worker): leave it
            return False
        try:
            if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
                return False
            path.unlink()
            return True
        except OSError:
            return False
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


def supernet_evaluator(
    context: EvaluatorContext, checkpoint: str | None = None, **options: Any
) -> SupernetEvaluator:
    """``evaluator.kind: supernet``. Options: the fields of
    :class:`~nasforge.oneshot.spos.SupernetConfig` (``sampling``, ``epochs``, ``lr`` ...; the
    recipe fields default to the ``train:`` section's, the seed to the experiment's) and
    ``checkpoint`` (default: ``<run dir>/supernet.pt``).

    Raises:
        ConfigError: no dataset, or a bad option (names ``evaluator.options.<field>``).
    """
    if context.dataset is None:
        raise ConfigError("evaluator.kind: 'supernet' needs a dataset (data: section)")
    t = context.train
    recipe = {
        "batch_size": t.batch_size,
        "optimizer": t.optimizer,
        "lr": t.lr,
        "weight_decay": t.weight_decay,
        "momentum": t.momentum,
        "label_smoothing": t.label_smoothing,
        "seed": context.seed,
    }
    config = SupernetConfig.from_options("evaluator.options", **{**recipe, **options})
    path: Path | None = Path(checkpoint) if checkpoint is not None else None
    if path is None and context.run_dir is not None:
        path = context.run_dir / CHECKPOINT_NAME
    lock = context.run_dir / ".latency.lock" if context.run_dir is not None else None
    return SupernetEvaluator(context.space, context.dataset, config, context.latency, path, lock)
