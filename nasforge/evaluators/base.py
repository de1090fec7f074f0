"""`Evaluator`: what a candidate is worth. ``evaluate(arch, budget, reporter) -> Result``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nasforge.space import Arch


@dataclass(frozen=True)
class Result:
    """Metrics of one evaluation (``val_acc``, ``latency_ms``, ``params`` ...) and its cost.

    ``cost_seconds`` is the device-seconds the evaluation took (or simulated seconds for a
    table benchmark); it is summed into the run's reported search cost.
    """

    metrics: dict[str, float]
    cost_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class StopTrial(Exception):
    """Raised by a reporter to stop a trial early; the evaluator returns what it has."""


class Reporter:
    """Receives intermediate values (per epoch); multi-fidelity stoppers subclass it."""

    def __init__(self) -> None:
        self.values: list[tuple[int, dict[str, float]]] = []

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.values.append((step, dict(metrics)))


class Evaluator:
    """Base class. ``evaluate`` may raise; the experiment records the trial as failed."""

    def evaluate(
        self, arch: Arch, budget: float | None = None, reporter: Reporter | None = None
    ) -> Result:
        raise NotImplementedError
