"""EvolutionStrategy with multi-objective (tuple) scores and objectives on NB201 latency columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nasforge.objectives import Objective, pareto_front
from nasforge.strategies import EvolutionStrategy, RandomStrategy, Strategy
from nasforge.testing import run_search, toy_objective, toy_space


def hypervolume_2d(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both objectives maximised) above ``ref``."""
    front = sorted({points[i] for i in pareto_front(points)}, key=lambda p: -p[0])
    area, best_y = 0.0, ref[1]
    for x, y in front:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def test_hypervolume_helper() -> None:
    assert hypervolume_2d([(2.0, 1.0), (1.0, 2.0), (0.5, 0.5)], (0.0, 0.0)) == 3.0


def test_pareto_selection_spreads_along_the_front() -> None:
    space = toy_space(n_dims=8, n_choices=4)
    eval_a, _ = toy_objective(space, 0)
    eval_b, _ = toy_objective(space, 1)

    def both(arch):
        return (eval_a(arch), eval_b(arch))

    def volume(strategy: Strategy) -> float:
        records = run_search(strategy, both, budget=200)
        return hypervolume_2d([s for _, s in records], (0.0, 0.0))

    pareto = [
        volume(EvolutionStrategy(space, seed=s, population=20, tournament=5, selection="pareto"))
        for s in range(3)
    ]
    scalar = [
        volume(EvolutionStrategy(space, seed=s, population=20, tournament=5)) for s in range(3)
    ]
    rand = [volume(RandomStrategy(space, seed=s)) for s in range(3)]
    assert np.mean(pareto) > np.mean(rand)
    assert np.mean(pareto) > np.mean(scalar)  # scalar selection chases the first objective only


@pytest.fixture(scope="module")
def nb201(nb201_csv: Path):
    from nasforge.evaluators.table import TableEvaluator, nb201_cifar10_spec
    from nasforge.spaces.nb201 import NB201Space

    return NB201Space(), TableEvaluator(nb201_cifar10_spec(path=nb201_csv, device="pixel3"))


def _search(strategy: Strategy, table, objective: Objective, budget: int):
    table.reset()
    records = run_search(strategy, lambda a: objective.score(table.evaluate(a).metrics), budget)
    return [(a, table.lookup(a)) for a, _ in records]


def test_constraint_objective_on_measured_latency(nb201) -> None:
    space, table = nb201
    limit = float(np.median(table.arrays()["lat_ms_pixel3"]))
    objective = Objective(
        kind="constraint", metric="val_acc", cost_metric="latency_ms", target=limit
    )
    best = {"evolution": [], "random": []}
    for seed in range(3):
        for name, strategy in (
            ("evolution", EvolutionStrategy(space, seed=seed)),
            ("random", RandomStrategy(space, seed=seed)),
        ):
            found = _search(strategy, table, objective, 100)
            winner = max(found, key=lambda e: objective.score(e[1]))[1]
            assert objective.feasible(winner) and winner["latency_ms"] <= limit
            best[name].append(winner["val_acc"])
    assert np.mean(best["evolution"]) >= np.mean(best["random"])


def test_pareto_objective_with_tuple_scores(nb201) -> None:
    space, table = nb201
    objective = Objective(kind="pareto", metric="val_acc", cost_metric="latency_ms")
    volumes = {"pareto": [], "random": []}
    for seed in range(3):
        for name, strategy in (
            ("pareto", EvolutionStrategy(space, seed=seed, selection="pareto")),
            ("random", RandomStrategy(space, seed=seed)),
        ):
            found = _search(strategy, table, objective, 100)
            points = [objective.score(m) for _, m in found]
            assert all(isinstance(p, tuple) and len(p) == 2 for p in points)
            volumes[name].append(hypervolume_2d(points, (80.0, -40.0)))
    assert np.mean(volumes["pareto"]) > np.mean(volumes["random"])


def test_weighted_product_trades_accuracy_for_latency(nb201) -> None:
    space, table = nb201
    arrays = table.arrays()
    target = float(np.percentile(arrays["lat_ms_pixel3"], 25))
    soft = Objective(
        kind="weighted_product", metric="val_acc", cost_metric="latency_ms", target=target, w=-0.5
    )
    plain = Objective(kind="accuracy", metric="val_acc")
    lat = {}
    for name, objective in (("soft", soft), ("plain", plain)):
        found = _search(EvolutionStrategy(space, seed=0), table, objective, 100)
        lat[name] = max(found, key=lambda e: objective.score(e[1]))[1]["latency_ms"]
    assert lat["soft"] < lat["plain"]
