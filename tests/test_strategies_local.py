"""LocalSearchStrategy: first- vs best-improvement moves, restarts, reuse of known scores."""

from __future__ import annotations

import pytest

from nasforge.errors import ConfigError
from nasforge.strategies import create_strategy
from nasforge.strategies.local import LocalSearchStrategy
from nasforge.testing import run_search, toy_objective, toy_space


def test_first_improvement_climbs_monotonically() -> None:
    space = toy_space()
    evaluate, optimum = toy_objective(space, 0)
    strategy = LocalSearchStrategy(space, seed=0, mode="first")
    currents = []
    for _ in range(60):
        arch = strategy.ask(1)[0]
        strategy.tell(arch, evaluate(arch))
        assert strategy.current is not None
        currents.append(strategy.current[1])
        if currents[-1] == optimum:
            break
    assert currents == sorted(currents)
    assert currents[-1] == optimum  # the toy is unimodal under one-dimension moves


def test_best_improvement_scans_the_whole_neighbourhood_first() -> None:
    space = toy_space()
    evaluate, _ = toy_objective(space, 1)
    strategy = LocalSearchStrategy(space, seed=0, mode="best")
    start = strategy.ask(1)[0]
    strategy.tell(start, evaluate(start))
    neighbours = {n.key for n in space.neighbors(start)}
    asked = []
    for _ in range(len(neighbours)):  # 6 dims x 3 alternatives
        arch = strategy.ask(1)[0]
        strategy.tell(arch, evaluate(arch))
        asked.append(arch.key)
    assert set(asked) == neighbours
    best = max(evaluate(n) for n in space.neighbors(start))
    nxt = strategy.ask(1)[0]  # now it moves to the best neighbour
    assert strategy.current is not None and strategy.current[1] == best
    assert nxt.key in {n.key for n in space.neighbors(strategy.current[0])}


def test_restarts_at_a_local_optimum() -> None:
    space = toy_space(n_dims=3, n_choices=3)  # a flat score: every arch is a local optimum
    strategy = LocalSearchStrategy(space, seed=0)
    run_search(strategy, lambda a: 1.0, budget=20)
    assert strategy.restarts >= 2


def test_replay_resumes_the_climb_from_the_best_arch() -> None:
    space = toy_space()
    evaluate, _ = toy_objective(space, 2)
    donor = LocalSearchStrategy(space, seed=0)
    records = run_search(donor, evaluate, budget=40)
    resumed = LocalSearchStrategy(space, seed=1)
    resumed.replay(records)
    assert resumed.current is not None and resumed.current[1] == max(s for _, s in records)


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="local.mode"):
        create_strategy("local", toy_space(), mode="steepest")
    with pytest.raises(ConfigError, match="local.warmup"):
        create_strategy("local", toy_space(), warmup=0)
