"""Ask/tell black-box search strategies (never see modules), behind `create_strategy`."""

from __future__ import annotations

import importlib
from typing import Any

from nasforge.errors import ConfigError
from nasforge.space import SearchSpace
from nasforge.strategies.base import Score, Strategy, scalar
from nasforge.strategies.evolution import EvolutionStrategy
from nasforge.strategies.random import RandomStrategy

STRATEGIES: dict[str, str] = {
    "random": "nasforge.strategies.random:RandomStrategy",
    "evolution": "nasforge.strategies.evolution:EvolutionStrategy",
    "reinforce": "nasforge.strategies.reinforce:ReinforceStrategy",
    "local": "nasforge.strategies.local:LocalSearchStrategy",
    "predictor": "nasforge.strategies.predictor:PredictorStrategy",
    "optuna": "nasforge.strategies.optuna:OptunaStrategy",
}


def register_strategy(name: str, target: str) -> None:
    """Register a strategy class under ``name`` as an import path ``module:attr``."""
    STRATEGIES[name] = target


def create_strategy(name: str, space: SearchSpace, seed: int = 0, **options: Any) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(
            f"strategy.name: unknown strategy {name!r}; expected one of "
            f"{', '.join(sorted(STRATEGIES))}"
        )
    module, attr = STRATEGIES[name].split(":")
    cls = getattr(importlib.import_module(module), attr)
    try:
        return cls(space, seed=seed, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"strategy.options: {exc}") from None


_LAZY = {
    "ReinforceStrategy": "nasforge.strategies.reinforce",
    "LocalSearchStrategy": "nasforge.strategies.local",
    "PredictorStrategy": "nasforge.strategies.predictor",
    "OptunaStrategy": "nasforge.strategies.optuna",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = [
    "STRATEGIES",
    "EvolutionStrategy",
    "LocalSearchStrategy",
    "OptunaStrategy",
    "PredictorStrategy",
    "RandomStrategy",
    "ReinforceStrategy",
    "Score",
    "Strategy",
    "create_strategy",
    "register_strategy",
    "scalar",
]
