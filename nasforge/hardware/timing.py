"""Timing harness: warm-up, repeated timed forward passes, median and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LatencyMeasurement:
    median_ms: float
    iqr_ms: float
    min_ms: float
    repeats: int
    batch_size: int
    threads: int
    backend: str = "torch"

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _quartiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 4:
        return min(samples), max(samples)
    q = statistics.quantiles(samples, n=4)
    return q[0], q[2]


@torch.no_grad()
def measure_latency(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                    warmup: int = 5, repeats: int = 30, threads: int | None = None) -> LatencyMeasurement:
    """Median latency of ``model`` on the torch eager CPU backend, in milliseconds."""
    prev = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model.eval()
        x = torch.randn(batch_size, *input_shape)
        for _ in range(warmup):
            model(x)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            samples.append((time.perf_counter() - t0) * 1e3)
        q1, q3 = _quartiles(samples)
        return LatencyMeasurement(statistics.median(samples), q3 - q1, min(samples), repeats,
                                  batch_size, torch.get_num_threads())
    finally:
        torch.set_num_threads(prev)
