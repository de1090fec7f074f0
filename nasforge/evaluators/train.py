"""`TrainEvaluator`: train a candidate, score it on the validation split, measure its cost."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from nasforge.data import Dataset
from nasforge.evaluators.base import (
    STABILITY_INFO,
    UNSTABLE_METRIC,
    Evaluator,
    Reporter,
    Result,
    StopTrial,
)
from nasforge.hardware import count_flops, count_params, model_size_bytes
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.noise import Stability
from nasforge.space import Arch, SearchSpace
from nasforge.train import TrainConfig, evaluate_accuracy, train_model


@contextlib.contextmanager
def file_lock(path: str | Path | None) -> Iterator[None]:
    """An exclusive lock across processes (so only one worker measures latency at a time)."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class TrainEvaluator(Evaluator):
    """Train for ``train.epochs`` (or ``budget`` epochs), report ``val_acc`` and costs.

    Metrics: ``val_acc`` (validation, in [0, 1]), ``latency_ms`` (measured on the target
    backend with the BN-folded model, or predicted from a latency table; absent when
    ``latency`` is ``None``), ``params``, ``flops``, ``size_bytes``, ``train_seconds``, and
    ``mflops`` (millions of FLOPs) when ``latency`` is ``None``. Never touches the test split.

    A measured ``latency_ms`` comes with the harness's noise verdict: the metric
    ``latency_unstable`` (``1.0`` when the host was too busy to trust the figure even after
    the harness re-measured, else ``0.0``; absent when latency is predicted or not measured)
    and, in :attr:`Result.info`, ``latency_stability`` (:meth:`Stability.to_dict`, with the
    reasons).

    Args:
        space: builds the candidate.
        dataset: train and validation splits are used.
        train: the training recipe.
        latency: measures or predicts latency; ``None`` reports ``mflops`` as the cost
            instead (a proxy that ``nasforge doctor`` warns about), and no ``latency_ms``.
        lock_path: a file lock held while measuring, so parallel workers time one at a time.
    """

    def __init__(
        self,
        space: SearchSpace,
        dataset: Dataset,
        train: TrainConfig,
        latency: LatencyModel | None,
        lock_path: str | Path | None = None,
    ) -> None:
        self.space = space
        self.dataset = dataset
        self.train = train
        self.latency = latency
        self.lock_path = lock_path

    def produces(self) -> frozenset[str]:
        """``val_acc``, ``params``, ``flops``, ``size_bytes``, ``train_seconds`` and either
        ``latency_ms`` (a latency model is given; with ``latency_unstable`` when it measures)
        or ``mflops`` (``latency.mode: flops``)."""
        cost: tuple[str, ...] = ("mflops",) if self.latency is None else ("latency_ms",)
        if self.latency is not None and self.latency.predictor is None:
            cost += (UNSTABLE_METRIC,)
        return frozenset(("val_acc", "params", "flops", "size_bytes", "train_seconds", *cost))

    def cost_metrics(self, arch: Arch, model: torch.nn.Module) -> dict[str, float]:
        """``params``, ``flops``, ``size_bytes`` and the latency metrics of ``model``."""
        return self._costs(arch, model)[0]

    def _costs(
        self, arch: Arch, model: torch.nn.Module
    ) -> tuple[dict[str, float], Stability | None]:
        """The cost metrics and, when latency was measured, its noise verdict."""
        shape = self.dataset.input_shape
        metrics: dict[str, float] = {
            "params": float(count_params(model)),
            "flops": float(count_flops(model, shape)),
            "size_bytes": float(model_size_bytes(model)),
        }
        if self.latency is None:  # latency.mode: flops (a proxy, named as one)
            metrics["mflops"] = metrics["flops"] / 1e6
        elif self.latency.predictor is not None:
            metrics["latency_ms"] = float(self.latency.predict(arch))
        else:
            with file_lock(self.lock_path):
                measured = self.latency.measure(model, shape)
            metrics["latency_ms"] = float(measured.value_ms(self.latency.statistic))
            metrics[UNSTABLE_METRIC] = 1.0 if measured.unstable else 0.0
            return metrics, measured.stability
        return metrics, None

    def evaluate(
        self, arch: Arch, budget: float | None = None, reporter: Reporter | None = None
    ) -> Result:
        t0 = time.perf_counter()
        model = self.space.build(arch)
        metrics, stability = self._costs(arch, model)
        epochs = int(budget) if budget is not None else self.train.epochs
        cfg = (
            self.train
            if epochs == self.train.epochs
            else self.train.model_copy(update={"epochs": epochs})
        )
        d = self.dataset
        stopped = False
        try:
            train_model(model, d.x_train, d.y_train, cfg, reporter=reporter)
        except StopTrial:
            stopped = True
        metrics["val_acc"] = evaluate_accuracy(model, d.x_val, d.y_val)
        metrics["train_seconds"] = time.perf_counter() - t0
        info: dict[str, object] = {"epochs": epochs, "stopped_early": stopped}
        if stability is not None:
            info[STABILITY_INFO] = stability.to_dict()
        return Result(metrics, cost_seconds=time.perf_counter() - t0, info=info)
