"""Ask/tell black-box search strategies (never see modules), behind `create_strategy`.

A strategy factory (usually the class) is called as
``factory(space, seed=..., constraint=..., **options)`` (see :class:`StrategyFactory`);
:func:`register_strategy` checks that contract when it is called.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from nasforge.errors import ConfigError
from nasforge.registry import check_factory, resolve_factory
from nasforge.space import SearchSpace
from nasforge.strategies.base import Constraint, Score, Strategy, scalar
from nasforge.strategies.evolution import EvolutionStrategy
from nasforge.strategies.random import RandomStrategy

STRATEGY_CONTRACT = "factory(space, seed=..., constraint=..., **options) -> Strategy"


class StrategyFactory(Protocol):
    """How :func:`create_strategy` calls a registered factory (usually a Strategy class)."""

    def __call__(
        self, space: SearchSpace, *, seed: int, constraint: Constraint | None, **options: Any
    ) -> Strategy: ...


#: name -> factory, or an import path ``"module:attr"`` to one (imported when first used)
STRATEGIES: dict[str, str | StrategyFactory] = {
    "random": "nasforge.strategies.random:RandomStrategy",
    "evolution": "nasforge.strategies.evolution:EvolutionStrategy",
    "reinforce": "nasforge.strategies.reinforce:ReinforceStrategy",
    "local": "nasforge.strategies.local:LocalSearchStrategy",
    "predictor": "nasforge.strategies.predictor:PredictorStrategy",
    "optuna": "nasforge.strategies.optuna:OptunaStrategy",
    "proxy_filter": "nasforge.strategies.proxy_filter:ProxyFilterStrategy",
    # multi-fidelity (FidelityStrategy: the loop calls ask_trial/tell_trial with budgets)
    "sh": "nasforge.strategies.fidelity:SuccessiveHalvingStrategy",
    "hyperband": "nasforge.strategies.fidelity:HyperbandStrategy",
    "asha": "nasforge.strategies.fidelity:AshaStrategy",
    "bohb": "nasforge.strategies.fidelity:BohbStrategy",
}


def register_strategy(name: str, factory: str | StrategyFactory) -> None:
    """Register a strategy under ``name`` (the config's ``strategy.name``).

    Args:
        name: registry name; a later registration replaces an earlier one.
        factory: a Strategy subclass or another callable keeping :class:`StrategyFactory`'s
            contract (checked now), or an import path ``"module:attr"`` (checked when used).

    Raises:
        RegistrationError: the factory cannot be called as
            ``factory(space, seed=..., constraint=...)``.
    """
    if not isinstance(factory, str):
        _check(name, factory)
    STRATEGIES[name] = factory


def _check(name: str, factory: Any) -> None:
    check_factory(
        "register_strategy",
        name,
        factory,
        STRATEGY_CONTRACT,
        positional=1,
        keywords=("seed", "constraint"),
    )


def strategy_factory(name: str) -> StrategyFactory:
    """The factory registered as ``name`` (an import path is imported and checked now)."""
    if name not in STRATEGIES:
        raise ConfigError(
            f"strategy.name: unknown strategy {name!r}; expected one of "
            f"{', '.join(sorted(STRATEGIES))}"
        )
    target = STRATEGIES[name]
    return resolve_factory(target, lambda factory: _check(name, factory))  # type: ignore[no-any-return]


def create_strategy(
    name: str,
    space: SearchSpace,
    seed: int = 0,
    constraint: Constraint | None = None,
    **options: Any,
) -> Strategy:
    """Build the registered strategy ``name`` over ``space``.

    Args:
        name: registry name (``strategy.name``).
        space: the (pinned) search space.
        seed: the experiment seed.
        constraint: a predicate known before evaluation; asks skip archs failing it.
        **options: the config's ``strategy.options``.

    Raises:
        ConfigError: unknown name or bad options (``strategy.options: ...``).
    """
    factory = strategy_factory(name)
    try:
        return factory(space, seed=seed, constraint=constraint, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"strategy.options: {exc}") from None


_LAZY = {
    "ReinforceStrategy": "nasforge.strategies.reinforce",
    "LocalSearchStrategy": "nasforge.strategies.local",
    "PredictorStrategy": "nasforge.strategies.predictor",
    "OptunaStrategy": "nasforge.strategies.optuna",
    "ProxyFilterStrategy": "nasforge.strategies.proxy_filter",
    "FidelityStrategy": "nasforge.strategies.fidelity_base",
    "TrialRequest": "nasforge.strategies.fidelity_base",
    "SuccessiveHalvingStrategy": "nasforge.strategies.fidelity",
    "HyperbandStrategy": "nasforge.strategies.fidelity",
    "AshaStrategy": "nasforge.strategies.fidelity",
    "BohbStrategy": "nasforge.strategies.fidelity",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = [
    "STRATEGIES",
    "STRATEGY_CONTRACT",
    "AshaStrategy",
    "BohbStrategy",
    "FidelityStrategy",
    "HyperbandStrategy",
    "SuccessiveHalvingStrategy",
    "TrialRequest",
    "Constraint",
    "EvolutionStrategy",
    "LocalSearchStrategy",
    "OptunaStrategy",
    "PredictorStrategy",
    "ProxyFilterStrategy",
    "RandomStrategy",
    "ReinforceStrategy",
    "Score",
    "Strategy",
    "StrategyFactory",
    "create_strategy",
    "register_strategy",
    "scalar",
    "strategy_factory",
]
