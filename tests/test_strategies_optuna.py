"""OptunaStrategy: every sampler drives the search; multi-objective NSGA-II; state and replay."""

from __future__ import annotations

import json

import pytest

from nasforge.errors import ConfigError
from nasforge.objectives import non_dominated_sort
from nasforge.strategies import create_strategy
from nasforge.testing import (
    conditional_objective,
    conditional_toy_space,
    run_search,
    toy_objective,
    toy_space,
)

optuna = pytest.importorskip("optuna")

from nasforge.strategies.optuna import OptunaStrategy  # noqa: E402 - needs optuna


@pytest.mark.parametrize(
    "sampler, budget", [("tpe", 30), ("random", 30), ("nsga2", 30), ("cmaes", 30), ("gp", 12)]
)
def test_every_sampler_asks_valid_unique_archs(sampler: str, budget: int) -> None:
    if sampler == "cmaes":
        pytest.importorskip("cmaes")
    space = conditional_toy_space()
    strategy = OptunaStrategy(space, seed=0, sampler=sampler)
    records = run_search(strategy, conditional_objective, budget=budget, batch=2)
    keys = [a.key for a, _ in records]
    assert len(set(keys)) == len(keys) == budget
    for arch, _ in records:
        space.validate(arch)
    # conditional dims are suggested only when active: no trial has an inactive label
    for trial in strategy.study.get_trials(deepcopy=False):
        depth = trial.params["depth"]
        assert all(int(k[len("block")]) < depth for k in trial.params if k.startswith("block"))


def test_nsga2_multi_objective_keeps_a_pareto_front() -> None:
    space = toy_space()
    eval_a, _ = toy_objective(space, 0)
    eval_b, _ = toy_objective(space, 1)

    def both(arch):  # two conflicting targets
        return (eval_a(arch), eval_b(arch))

    strategy = OptunaStrategy(
        space, seed=3, sampler="nsga2", n_objectives=2, sampler_options={"population_size": 10}
    )
    records = run_search(strategy, both, budget=60)
    assert [d.name for d in strategy.study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    best = strategy.study.best_trials
    assert best
    front = [tuple(t.values) for t in best]
    assert all(r == 0 for r in non_dominated_sort(front))
    points = [s for _, s in records]
    ranks = non_dominated_sort(points)
    assert {p for p, r in zip(points, ranks) if r == 0} == set(front)


def test_scores_with_wrong_arity_are_rejected() -> None:
    strategy = OptunaStrategy(toy_space(), seed=0, n_objectives=2)
    arch = strategy.ask(1)[0]
    with pytest.raises(ValueError, match="2 objectives"):
        strategy.tell(arch, 1.0)


def test_failed_and_duplicate_trials_reach_optuna() -> None:
    space = toy_space(n_dims=2, n_choices=3)  # 9 archs: TPE repeats itself soon
    strategy = OptunaStrategy(space, seed=0, sampler="tpe")
    records = run_search(strategy, lambda a: None if a["d0"] == 0 else float(a["d1"]), budget=9)
    states = [t.state.name for t in strategy.study.get_trials(deepcopy=False)]
    assert states.count("FAIL") >= sum(s is None for _, s in records)
    assert len(states) >= len(records)  # duplicates were told their known result
    assert "RUNNING" not in states


def test_state_dict_roundtrip_keeps_sampler_state() -> None:
    space = toy_space()
    evaluate, _ = toy_objective(space, 2)
    for sampler in ("nsga2", "tpe"):
        a = OptunaStrategy(
            space,
            seed=5,
            sampler=sampler,
            sampler_options=({"population_size": 8} if sampler == "nsga2" else None),
        )
        run_search(a, evaluate, budget=20)
        pending = a.ask(1)
        b = OptunaStrategy(
            space,
            seed=5,
            sampler=sampler,
            sampler_options=({"population_size": 8} if sampler == "nsga2" else None),
        )
        b.load_state_dict(json.loads(json.dumps(a.state_dict())))
        assert len(b.study.trials) == len(a.study.trials)
        for s in (a, b):
            s.tell(pending[0], evaluate(pending[0]))
        assert [x.key for x, _ in run_search(a, evaluate, 12)] == [
            x.key for x, _ in run_search(b, evaluate, 12)
        ]


def test_replayed_trials_enter_the_study() -> None:
    space = toy_space()
    evaluate, _ = toy_objective(space, 0)
    donor = create_strategy("random", space, seed=0)
    records = run_search(donor, evaluate, budget=15)
    strategy = OptunaStrategy(space, seed=0)
    strategy.replay(records)
    assert len(strategy.study.trials) == 15
    assert strategy.study.best_value == max(s for _, s in records)


def test_cmaes_suggests_categorical_indices() -> None:
    pytest.importorskip("cmaes")
    strategy = OptunaStrategy(toy_space(), seed=0, sampler="cmaes")
    dist = strategy.distribution(toy_space().dimension("d0"))
    assert isinstance(dist, optuna.distributions.IntDistribution) and (dist.low, dist.high) == (
        0,
        3,
    )


def test_bad_options_are_config_errors_and_logging_is_restored() -> None:
    with pytest.raises(ConfigError, match="sampler"):
        create_strategy("optuna", toy_space(), sampler="bogus")
    with pytest.raises(ConfigError, match="sampler_options"):
        create_strategy("optuna", toy_space(), sampler_options={"no_such_option": 1})
    level = optuna.logging.get_verbosity()
    run_search(OptunaStrategy(toy_space(), seed=0), lambda a: 1.0, budget=3)
    assert optuna.logging.get_verbosity() == level
