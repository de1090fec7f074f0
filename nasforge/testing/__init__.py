"""Test support shipped with the package: conformance suites that implementations subclass."""

from nasforge.testing.strategies import (
    StrategyConformance,
    builtin_strategies,
    conditional_objective,
    conditional_toy_space,
    run_search,
    toy_objective,
    toy_space,
)

__all__ = [
    "StrategyConformance",
    "builtin_strategies",
    "conditional_objective",
    "conditional_toy_space",
    "run_search",
    "toy_objective",
    "toy_space",
]
