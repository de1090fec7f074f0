"""Every registered strategy passes the shared conformance suite (nasforge.testing)."""

from __future__ import annotations

import pytest

from nasforge.space import SearchSpace
from nasforge.strategies import Constraint, EvolutionStrategy, RandomStrategy, Strategy
from nasforge.testing import StrategyConformance


class TestRandomConformance(StrategyConformance):
    optimum_skip = (
        "uniform sampling needs |space|/2 = 2,048 evaluations in expectation on the "
        "toy; the test would only exercise the sampler, not a search"
    )

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        return RandomStrategy(space, seed=seed, constraint=constraint)


class TestEvolutionConformance(StrategyConformance):
    optimum_budget = 300

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        return EvolutionStrategy(
            space, seed=seed, constraint=constraint, population=10, tournament=3
        )


class TestLocalFirstConformance(StrategyConformance):
    optimum_budget = 150

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        from nasforge.strategies.local import LocalSearchStrategy

        return LocalSearchStrategy(space, seed=seed, constraint=constraint, mode="first")


class TestLocalBestConformance(StrategyConformance):
    optimum_budget = 150

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        from nasforge.strategies.local import LocalSearchStrategy

        return LocalSearchStrategy(space, seed=seed, constraint=constraint, mode="best", warmup=5)


class TestReinforceConformance(StrategyConformance):
    optimum_budget = 300

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        from nasforge.strategies.reinforce import ReinforceStrategy

        return ReinforceStrategy(space, seed=seed, constraint=constraint)


class TestPPOConformance(StrategyConformance):
    optimum_budget = 300

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        from nasforge.strategies.reinforce import ReinforceStrategy

        return ReinforceStrategy(space, seed=seed, constraint=constraint, algorithm="ppo")


class TestPredictorGPConformance(StrategyConformance):
    optimum_budget = 100

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        from nasforge.strategies.predictor import PredictorStrategy

        return PredictorStrategy(space, seed=seed, constraint=constraint)


@pytest.mark.slow  # ~35 s; the MLP surrogate is also covered in test_strategies_predictor.py
class TestPredictorMLPConformance(StrategyConformance):
    optimum_budget = 150

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        from nasforge.strategies.predictor import PredictorStrategy

        return PredictorStrategy(
            space,
            seed=seed,
            constraint=constraint,
            surrogate="mlp",
            acquisition="ucb",
            mlp_steps=60,
            ensemble_size=4,
        )


class TestOptunaTPEConformance(StrategyConformance):
    optimum_budget = 200

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        from nasforge.strategies.optuna import OptunaStrategy

        return OptunaStrategy(space, seed=seed, constraint=constraint, sampler="tpe")


class TestOptunaRandomConformance(StrategyConformance):
    optimum_skip = "Optuna's RandomSampler is uniform sampling (see TestRandomConformance)"

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        from nasforge.strategies.optuna import OptunaStrategy

        return OptunaStrategy(space, seed=seed, constraint=constraint, sampler="random")


def test_registry_builds_every_strategy() -> None:
    from nasforge.strategies import create_strategy
    from nasforge.testing import builtin_strategies, toy_space

    space = toy_space()
    for name in builtin_strategies():  # test modules register toys (imported by every worker)
        if name == "proxy_filter":  # scores built networks: tests/test_proxies.py, on nb201
            continue
        strategy = create_strategy(name, space, seed=1)
        assert strategy.name == name
        if getattr(strategy, "multi_fidelity", False):  # budgets: tests/test_fidelity_strategies
            assert strategy.ask_trial() is not None  # type: ignore[attr-defined]
            continue
        assert len(strategy.ask(2)) == 2
