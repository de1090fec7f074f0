"""Live curves of a multi-fidelity trial that continues its lower rung's checkpoint
(session 24, H5): the live file holds the checkpoint's epochs first, then the trial's own,
so the curve starts at epoch 1; a stopper is asked only about the epochs this rung trains.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nasforge.data import load_dataset
from nasforge.evaluators.base import Fidelity, Reporter, StopTrial
from nasforge.evaluators.rung_checkpoint import BUDGET_STARTED_FROM, RungPolicy
from nasforge.evaluators.train import TrainEvaluator
from nasforge.experiment.live_curves import (
    LiveCurveReporter,
    evaluate_with,
    live_curve,
    live_path,
    read_live,
)
from nasforge.spaces import create_space
from nasforge.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"stages": [[8, 1, 1]], "kernels": [3], "expands": [1], "se": [False]}


@pytest.fixture(scope="module")
def digits() -> Any:
    ds = load_dataset("digits", seed=0)  # a small train split: fast on a busy host
    return dataclasses.replace(ds, x_train=ds.x_train[:256], y_train=ds.y_train[:256])


@pytest.fixture(scope="module")
def space(digits: Any) -> Any:
    return create_space("mobile", digits.input_shape, digits.num_classes, **TINY)


class Judge(Reporter):
    """A multi-fidelity stopper: records every epoch it is asked about; stops at ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.stop_at = stop_at

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        super().__call__(step, metrics)
        if self.stop_at is not None and step >= self.stop_at:
            raise StopTrial


def _evaluator(space: Any, digits: Any, run_dir: Path) -> TrainEvaluator:
    cfg = TrainConfig(epochs=1, lr=0.1)
    return TrainEvaluator(space, digits, cfg, None, rungs=RungPolicy(max_epochs=9), run_dir=run_dir)


def test_a_continued_rung_s_live_file_starts_at_epoch_1_and_the_stopper_judges_new_epochs(
    space: Any, digits: Any, tmp_path: Path
) -> None:
    ev = _evaluator(space, digits, tmp_path / "run")
    arch = space.sample(np.random.default_rng(0))
    low = ev.evaluate(arch, Fidelity(epochs=1))  # the lower rung: its checkpoint holds epoch 1
    judge = Judge()
    path = live_path(tmp_path / "run", 7)
    mid = evaluate_with(ev, arch, Fidelity(epochs=3), LiveCurveReporter(path, inner=judge))
    assert mid.metrics[BUDGET_STARTED_FROM] == 1.0  # it did continue
    records = read_live(path)
    assert [r["epoch"] for r in records] == [1, 2, 3]  # in order, no gap
    # epoch 1 is the checkpoint's (its val_acc, no loss: the checkpoint keeps none), then the
    # trial's own epochs with both; the live curve is the store's curve the trial ends with
    assert records[0]["val_acc"] == pytest.approx(low.info["curve"][0])
    assert "loss" not in records[0] and all("loss" in r for r in records[1:])
    assert live_curve(records) == pytest.approx(mid.info["curve"])
    assert [step for step, _ in judge.values] == [1, 2]  # epochs 2 and 3 only


def test_a_stopper_that_stops_at_once_stops_on_the_first_new_epoch_not_a_replayed_one(
    space: Any, digits: Any, tmp_path: Path
) -> None:
    ev = _evaluator(space, digits, tmp_path / "run")
    arch = space.sample(np.random.default_rng(0))
    ev.evaluate(arch, Fidelity(epochs=1))
    judge = Judge(stop_at=0)  # would stop on any epoch it is shown
    path = live_path(tmp_path / "run", 8)
    res = evaluate_with(ev, arch, Fidelity(epochs=3), LiveCurveReporter(path, inner=judge))
    assert res.info["stopped_early"] is True
    assert [step for step, _ in judge.values] == [1]  # epoch 2: it trained one epoch first
    assert [r["epoch"] for r in read_live(path)] == [1, 2]


def test_a_trial_from_scratch_replays_nothing(space: Any, digits: Any, tmp_path: Path) -> None:
    ev = _evaluator(space, digits, tmp_path / "run")
    arch = space.sample(np.random.default_rng(0))
    path = live_path(tmp_path / "run", 9)
    reporter = LiveCurveReporter(path, inner=Judge())
    res = evaluate_with(ev, arch, Fidelity(epochs=2), reporter)
    assert res.metrics[BUDGET_STARTED_FROM] == 0.0
    assert [r["epoch"] for r in read_live(path)] == [1, 2]
    assert [step for step, _ in reporter.values] == [0, 1]
