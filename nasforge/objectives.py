"""Objectives: accuracy, MnasNet's weighted product, hard latency constraint, Pareto.

All scores are to be **maximised**. ``Objective.score(metrics)`` gives a float (or a tuple
for ``pareto``) from a trial's metrics; a trial without the needed metric scores ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("accuracy", "weighted_product", "constraint", "pareto")


@dataclass(frozen=True)
class Objective:
    """How a trial's metrics become a score.

    Args:
        kind: ``accuracy`` (maximise ``metric``), ``weighted_product``
            (``acc * (lat / target) ** w``, MnasNet), ``constraint`` (``acc`` when
            ``lat <= target`` else heavily penalised), ``pareto`` (maximise ``acc`` and
            minimise ``lat``).
        metric: accuracy metric name (default ``val_acc``).
        cost_metric: cost metric name (default ``latency_ms``).
        target: latency target / limit in the cost metric's unit.
        w: exponent of the weighted product (MnasNet's soft constraint uses -0.07).
    """

    kind: str = "accuracy"
    metric: str = "val_acc"
    cost_metric: str = "latency_ms"
    target: float | None = None
    w: float = -0.07

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"objective.kind: expected one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if self.kind in ("weighted_product", "constraint") and (
            self.target is None or self.target <= 0
        ):
            raise ValueError(
                f"objective.target: {self.kind} needs a positive target ({self.cost_metric})"
            )

    @property
    def multi(self) -> bool:
        return self.kind == "pareto"

    def score(self, metrics: Mapping[str, float]) -> float | tuple[float, float] | None:
        acc = metrics.get(self.metric)
        if acc is None or not math.isfinite(acc):
            return None
        if self.kind == "accuracy":
            return float(acc)
        cost = metrics.get(self.cost_metric)
        if cost is None or not math.isfinite(cost):
            return None
        if self.kind == "pareto":
            return (float(acc), -float(cost))
        assert self.target is not None
        if self.kind == "weighted_product":
            return float(acc) * (float(cost) / self.target) ** self.w
        # hard constraint: feasible archs rank by accuracy, infeasible ones below all of them
        if cost <= self.target:
            return float(acc)
        return float(acc) - 1e3 - float(cost) / self.target

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        if self.kind != "constraint" or self.target is None:
            return True
        cost = metrics.get(self.cost_metric)
        return cost is not None and cost <= self.target


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` Pareto-dominates ``b`` (all objectives maximised)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def non_dominated_sort(points: Sequence[Sequence[float]]) -> list[int]:
    """Front rank of each point (0 = Pareto front), NSGA-II's fast non-dominated sort."""
    n = len(points)
    p = np.asarray(points, dtype=float).reshape(n, -1) if n else np.zeros((0, 1))
    ge = np.all(p[:, None, :] >= p[None, :, :], axis=-1)
    gt = np.any(p[:, None, :] > p[None, :, :], axis=-1)
    dom: np.ndarray = np.logical_and(ge, gt)  # dom[i, j]: i dominates j
    counts = dom.sum(0)
    rank = np.full(n, -1)
    front = np.flatnonzero(counts == 0)
    r = 0
    while front.size:
        rank[front] = r
        counts = counts - dom[front].sum(0)
        counts[rank >= 0] = -1
        front = np.flatnonzero(counts == 0)
        r += 1
    return [int(x) for x in rank]


def crowding_distance(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II crowding distance within one front (boundary points get infinity)."""
    p = np.asarray(points, dtype=float)
    n = len(p)
    if n == 0:
        return []
    dist = np.zeros(n)
    for k in range(p.shape[1]):
        order = np.argsort(p[:, k])
        span = p[order[-1], k] - p[order[0], k]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0 and n > 2:
            dist[order[1:-1]] += (p[order[2:], k] - p[order[:-2], k]) / span
    return [float(x) for x in dist]


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points."""
    return [i for i, r in enumerate(non_dominated_sort(points)) if r == 0]
