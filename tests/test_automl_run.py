"""A joint (architecture x training recipe) multi-fidelity search end to end (issue 15): every
rung's row carries its recipe and budget, the final model is retrained with the winning
recipe, and the report shows the Multi-fidelity and Winning recipe sections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from nasforge.experiment.config import parse_config
from nasforge.experiment.fidelity_view import RUNG, full_fidelity
from nasforge.experiment.runner import Experiment
from nasforge.experiment.store import TrialStore
from nasforge.space.joint import split_values
from nasforge.strategies import STRATEGIES
from nasforge.strategies.base import scalar

pytest.importorskip("test_fidelity_run")  # registers the toy strategy (tests/ is on sys.path)

TINY = {"stages": [[8, 1, 1]], "kernels": [3, 5], "expands": [1, 3], "se": [False]}
RECIPE = {"lr": [0.05, 0.2], "optimizer": ["sgd", "adamw"], "label_smoothing": [0.0, 0.1]}


def _config(tmp_path: Path, strategy: dict[str, Any], trials: int) -> Any:
    return parse_config(
        {
            "name": "joint",
            "runs_dir": str(tmp_path / "runs"),
            "data": {"name": "digits"},
            "space": {"name": "mobile", "options": TINY},
            "automl": {"recipe": RECIPE},
            "search": {"trials": trials, "executor": "inline"},
            "train": {"epochs": 2, "lr": 0.1},
            "final": {"epochs": 1},
            "strategy": strategy,
            "objective": {"kind": "accuracy"},
            "latency": {"mode": "flops"},
        }
    )


def _strategies() -> list[Any]:
    toy = {"name": "toy_halving", "options": {"n_configs": 4, "max_epochs": 2}}
    # the toy strategy only while no registered one is there (the same path, twice the time)
    out: list[Any] = [pytest.param(toy, marks=[pytest.mark.slow] if "asha" in STRATEGIES else [])]
    out.append(
        pytest.param(
            {"name": "asha", "options": {"min_epochs": 1, "max_epochs": 2, "eta": 2}},
            marks=pytest.mark.skipif("asha" not in STRATEGIES, reason="asha not registered"),
        )
    )
    return out


@pytest.mark.parametrize("strategy", _strategies())
def test_joint_recipe_search_retrains_the_winner_with_its_recipe(
    tmp_path: Path, strategy: dict[str, Any], one_thread: None
) -> None:
    cfg = _config(tmp_path, strategy, trials=6)
    exp = Experiment(cfg, console=Console(quiet=True), progress=False)
    summary = exp.run()
    run = tmp_path / "runs" / "joint"
    with TrialStore(run / "trials.db", create=False) as s:
        rows = s.trials()
    assert len(rows) == 6 and all(t.state == "complete" for t in rows)
    for t in rows:  # every trial: a recipe from the automl: choices, and its rung
        recipe = split_values(t.arch)[1]
        assert set(recipe) == set(RECIPE) and RUNG in t.metrics
        assert all(recipe[k] in RECIPE[k] for k in RECIPE)
    best = max(full_fidelity(rows), key=lambda t: scalar(t.score))
    assert summary.best is not None and summary.best["id"] == best.id
    card = json.loads((run / "best" / "card.json").read_text())
    searched = split_values(best.arch)[1]
    assert {k: card["recipe"][k] for k in RECIPE} == searched
    report = json.loads((run / "report.json").read_text())
    assert report["automl"]["recipe"]["searched"] == searched
    assert report["automl"]["recipe"]["final"]["lr"] == searched["lr"]
    page = (run / "report.html").read_text()
    assert "<h2>Winning recipe</h2>" in page and "<h2>Multi-fidelity</h2>" in page
