"""Objectives: weighted product, constraint, Pareto ranking."""

from __future__ import annotations

import numpy as np
import pytest

from nasforge.objectives import (
    Objective,
    crowding_distance,
    dominates,
    non_dominated_sort,
    pareto_front,
)


def test_weighted_product_matches_mnasnet_formula() -> None:
    o = Objective("weighted_product", target=2.0, w=-0.07)
    assert o.score({"val_acc": 0.9, "latency_ms": 4.0}) == pytest.approx(0.9 * 2.0**-0.07)
    assert o.score({"val_acc": 0.9, "latency_ms": 1.0}) > o.score(
        {"val_acc": 0.9, "latency_ms": 2.0}
    )
    assert o.score({"val_acc": 0.9}) is None


def test_constraint_ranks_every_feasible_arch_above_infeasible() -> None:
    o = Objective("constraint", target=2.0)
    feasible = o.score({"val_acc": 0.5, "latency_ms": 1.9})
    infeasible = o.score({"val_acc": 0.99, "latency_ms": 2.1})
    assert feasible > infeasible
    with pytest.raises(ValueError, match="objective.target"):
        Objective("constraint")


def test_non_dominated_sort_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    pts = rng.integers(0, 6, size=(40, 2)).tolist()
    ranks = non_dominated_sort(pts)
    remaining = set(range(len(pts)))
    r = 0
    while remaining:
        front = {i for i in remaining if not any(dominates(pts[j], pts[i]) for j in remaining)}
        assert {i for i in remaining if ranks[i] == r} == front
        remaining -= front
        r += 1
    assert set(pareto_front(pts)) == {i for i, x in enumerate(ranks) if x == 0}
    d = crowding_distance([[0, 3], [1, 2], [3, 0]])
    assert d[0] == d[2] == float("inf") and d[1] == pytest.approx(2.0)
