"""`TrainEvaluator`: train a candidate, score it on the validation split, measure its cost."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from nasforge.data import Dataset
from nasforge.evaluators.base import Evaluator, Reporter, Result, StopTrial
from nasforge.hardware import count_flops, count_params, measure_latency, model_size_bytes
from nasforge.nn import fuse_bn
from nasforge.space import Arch, SearchSpace
from nasforge.train import TrainConfig, evaluate_accuracy, train_model

LatencyPredictor = Callable[[Arch], float]


@dataclass(frozen=True)
class LatencySettings:
    """How a candidate's latency is obtained.

    ``mode="measure"`` times the BN-folded model on the torch CPU backend (or onnxruntime);
    ``"predict"`` calls a latency-table predictor; ``"flops"`` reports FLOPs as the cost (a proxy
    the doctor warns about). ``lock_path``: a file lock so that only one worker process measures
    at a time.
    """

    mode: str = "measure"
    backend: str = "torch"
    batch_size: int = 1
    threads: int = 1
    warmup: int = 5
    repeats: int = 30
    lock_path: str | None = None


@contextlib.contextmanager
def _file_lock(path: str | None) -> Iterator[None]:
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

    Metrics: ``val_acc`` (validation, in [0, 1]), ``latency_ms``, ``params``, ``flops``,
    ``size_bytes``, ``train_seconds``. Never touches the test split.
    """

    def __init__(self, space: SearchSpace, dataset: Dataset, train: TrainConfig,
                 latency: LatencySettings = LatencySettings(),
                 predictor: LatencyPredictor | None = None) -> None:
        self.space = space
        self.dataset = dataset
        self.train = train
        self.latency = latency
        self.predictor = predictor
        if latency.mode == "predict" and predictor is None:
            raise ValueError("latency.mode 'predict' needs a latency table predictor")

    def cost_metrics(self, arch: Arch, model: torch.nn.Module) -> dict[str, float]:
        shape = self.dataset.input_shape
        metrics: dict[str, float] = {
            "params": float(count_params(model)),
            "flops": float(count_flops(model, shape)),
            "size_bytes": float(model_size_bytes(model)),
        }
        lat = self.latency
        if lat.mode == "predict":
            assert self.predictor is not None
            metrics["latency_ms"] = float(self.predictor(arch))
        elif lat.mode == "flops":
            metrics["latency_ms"] = metrics["flops"] / 1e6  # a proxy, reported as MFLOPs
        else:
            with _file_lock(lat.lock_path):
                metrics["latency_ms"] = measure_model_latency(
                    fuse_bn(model), shape, lat.backend, lat.batch_size, lat.threads, lat.warmup,
                    lat.repeats)
        return metrics

    def evaluate(self, arch: Arch, budget: float | None = None,
                 reporter: Reporter | None = None) -> Result:
        t0 = time.perf_counter()
        model = self.space.build(arch)
        metrics = self.cost_metrics(arch, model)
        epochs = int(budget) if budget is not None else self.train.epochs
        cfg = TrainConfig(**{**self.train.__dict__, "epochs": epochs})
        d = self.dataset
        stopped = False
        try:
            train_model(model, d.x_train, d.y_train, cfg, reporter=reporter)
        except StopTrial:
            stopped = True
        metrics["val_acc"] = evaluate_accuracy(model, d.x_val, d.y_val)
        metrics["train_seconds"] = time.perf_counter() - t0
        return Result(metrics, cost_seconds=time.perf_counter() - t0,
                      info={"epochs": epochs, "stopped_early": stopped})


def measure_model_latency(model: torch.nn.Module, input_shape: tuple[int, ...], backend: str = "torch",
                          batch_size: int = 1, threads: int = 1, warmup: int = 5,
                          repeats: int = 30) -> float:
    """Median latency in ms on ``backend`` (``torch`` eager CPU or ``onnxruntime`` CPU)."""
    if backend == "onnxruntime":
        from nasforge.experiment.export import onnx_latency_ms

        return onnx_latency_ms(model, input_shape, batch_size, threads, warmup, repeats)
    return measure_latency(model, input_shape, batch_size, warmup, repeats, threads).median_ms
