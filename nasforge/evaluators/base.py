"""`Evaluator`: what a candidate is worth. ``evaluate(arch, budget, reporter) -> Result``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nasforge.space import Arch, SearchSpace

if TYPE_CHECKING:  # annotations only: keeps this module free of torch-heavy imports
    from nasforge.data import Dataset
    from nasforge.evaluators.rung_checkpoint import RungPolicy
    from nasforge.hardware.model import LatencyModel
    from nasforge.train import TrainConfig

#: The metric an evaluator reports beside a *measured* ``latency_ms``: ``1.0`` when the timing
#: harness judged the host too busy to trust the figure (:mod:`nasforge.hardware.noise`), else
#: ``0.0``. The verdict itself (reasons and numbers) goes in :attr:`Result.info` under
#: :data:`STABILITY_INFO`, as :meth:`~nasforge.hardware.noise.Stability.to_dict`.
UNSTABLE_METRIC = "latency_unstable"
STABILITY_INFO = "latency_stability"


@dataclass(frozen=True)
class Result:
    """Metrics of one evaluation (``val_acc``, ``latency_ms``, ``params`` ...) and its cost.

    ``cost_seconds`` is the device-seconds the evaluation took (or simulated seconds for a
    table benchmark); it is summed into the run's reported search cost.
    """

    metrics: dict[str, float]
    cost_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fidelity:
    """A multi-fidelity budget: train for ``epochs`` (``None``: the recipe's) on
    ``data_fraction`` of the training split (a seeded, class-stratified subset; 1.0: all).

    ``evaluate(arch, budget=...)`` takes a :class:`Fidelity` or, as before, a number of
    epochs."""

    epochs: int | None = None
    data_fraction: float = 1.0


class StopTrial(Exception):
    """Raised by a reporter to stop a trial early; the evaluator returns what it has."""


class Reporter:
    """Receives intermediate values (per epoch); multi-fidelity stoppers subclass it."""

    def __init__(self) -> None:
        self.values: list[tuple[int, dict[str, float]]] = []

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.values.append((step, dict(metrics)))

    def replay(self, step: int, metrics: dict[str, float]) -> None:
        """An epoch this trial did not train: a continued rung's checkpoint holds it (its
        ``val_acc`` only), handed over before the trial's own epochs so a curve it shows
        starts at epoch 1. That epoch was judged in the rung that trained it, so by default
        nothing happens (a stopper must not judge, or stop on, it again); a reporter that
        only shows curves (the live one) overrides this."""


class Evaluator:
    """Base class. ``evaluate`` may raise; the experiment records the trial as failed.

    :meth:`produces` declares the metric names ``evaluate`` reports, so that a config whose
    objective asks for a metric no evaluator computes is refused before the first trial.
    """

    def produces(self) -> frozenset[str] | None:
        """The metric names every :meth:`evaluate` result holds (``None``: not declared,
        then the registration's ``metrics`` are used, and without those nothing is checked).
        Called once, in the main process, before the first trial."""
        return None

    def evaluate(
        self, arch: Arch, budget: float | Fidelity | None = None, reporter: Reporter | None = None
    ) -> Result:
        raise NotImplementedError


@dataclass(frozen=True)
class EvaluatorContext:
    """What the experiment built from its config, handed to every evaluator factory.

    Attributes:
        space: the (pinned) search space candidates come from.
        dataset: train/val/test splits, or ``None`` for an evaluator registered with
            ``needs_data=False`` (a table lookup).
        train: the training recipe (``train:`` section plus the seed).
        latency: measures or predicts latency; ``None`` for ``latency.mode: flops``.
        run_dir: the run directory (for locks and per-trial files), if any.
        seed: the experiment seed.
        rungs: how multi-fidelity rungs train (continue lower rungs' checkpoints, on the top
            budget's schedule); ``None`` for a plain strategy.
    """

    space: SearchSpace
    dataset: Dataset | None
    train: TrainConfig
    latency: LatencyModel | None
    run_dir: Path | None = None
    seed: int = 0
    rungs: RungPolicy | None = None


class EvaluatorFactory(Protocol):
    """How the experiment calls a registered evaluator factory: ``factory(context,
    **options)`` with the config's ``evaluator.options`` (and ``table=`` for ``table``)."""

    def __call__(self, context: EvaluatorContext, **options: Any) -> Evaluator: ...
