"""Evaluators: what a candidate is worth (train, table lookup, supernet, proxy), behind one
registry (`register_evaluator`, `create_evaluator`).

An evaluator factory is called as ``factory(context, **options)`` with an
:class:`EvaluatorContext` (space, dataset, training recipe, latency model, run dir, seed)
and the config's ``evaluator.options``; it returns an :class:`Evaluator`.
:func:`register_evaluator` checks that contract when it is called.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nasforge.errors import ConfigError
from nasforge.evaluators.base import (
    Evaluator,
    EvaluatorContext,
    EvaluatorFactory,
    Reporter,
    Result,
    StopTrial,
)
from nasforge.registry import check_factory, resolve_factory

EVALUATOR_CONTRACT = "factory(context: EvaluatorContext, **options) -> Evaluator"


@dataclass(frozen=True)
class EvaluatorEntry:
    """One registered evaluator: ``target`` is a factory or an import path ``module:attr``;
    ``needs_data``: the experiment loads the dataset for it (``False`` for table lookups);
    ``metrics``: the metric names it may report (``None``: not declared; an evaluator's own
    :meth:`~nasforge.evaluators.base.Evaluator.produces` takes precedence)."""

    name: str
    target: str | EvaluatorFactory = field(repr=False)
    description: str
    needs_data: bool = True
    metrics: frozenset[str] | None = None


_REGISTRY: dict[str, EvaluatorEntry] = {}


def register_evaluator(
    name: str,
    factory: str | EvaluatorFactory,
    description: str = "",
    needs_data: bool = True,
    metrics: Iterable[str] | None = None,
) -> None:
    """Register an evaluator under ``name`` (the config's ``evaluator.kind``).

    Args:
        name: registry name; a later registration replaces an earlier one.
        factory: a callable keeping :class:`EvaluatorFactory`'s contract (checked now), or
            an import path ``"module:attr"`` to one (checked when first used).
        description: one line for listings.
        needs_data: whether the experiment must load the dataset for it.
        metrics: the metric names its results hold (what ``objective.metric`` and
            ``objective.cost_metric`` may name); ``None`` if the evaluator declares them
            itself (:meth:`Evaluator.produces`) or not at all.

    Raises:
        RegistrationError: the factory cannot be called as ``factory(context, **options)``.
    """
    if not isinstance(factory, str):
        _check(name, factory)
    declared = frozenset(metrics) if metrics is not None else None
    _REGISTRY[name] = EvaluatorEntry(name, factory, description, needs_data, declared)


def _check(name: str, factory: Any) -> None:
    check_factory("register_evaluator", name, factory, EVALUATOR_CONTRACT, positional=1)


def list_evaluators() -> list[EvaluatorEntry]:
    """Registered evaluators, sorted by name."""
    return sorted(_REGISTRY.values(), key=lambda e: e.name)


def evaluator_entry(name: str) -> EvaluatorEntry:
    """The entry registered as ``name``.

    Raises:
        ConfigError: no such evaluator (names the registered ones).
    """
    if name not in _REGISTRY:
        raise ConfigError(
            f"evaluator.kind: unknown evaluator {name!r}; registered: "
            f"{', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def create_evaluator(name: str, context: EvaluatorContext, **options: Any) -> Evaluator:
    """Build the registered evaluator ``name``; bad options are :class:`ConfigError`."""
    target = resolve_factory(evaluator_entry(name).target, lambda f: _check(name, f))
    try:
        return target(context, **options)
    except TypeError as exc:
        raise ConfigError(f"evaluator.options: {exc}") from None


def produced_metrics(name: str, evaluator: Evaluator) -> frozenset[str] | None:
    """The metric names ``evaluator`` (registered as ``name``) reports: its own
    :meth:`~Evaluator.produces`, else its registration's ``metrics``, else ``None``."""
    own = evaluator.produces()
    return own if own is not None else evaluator_entry(name).metrics


register_evaluator(
    "train",
    "nasforge.evaluators.factories:train_evaluator",
    "train each candidate on the data's train split, score it on validation",
)
register_evaluator(
    "table",
    "nasforge.evaluators.factories:table_evaluator",
    "look each candidate up in a benchmark table (NAS-Bench-201 or your own CSV)",
    needs_data=False,
)

_LAZY = {
    "TrainEvaluator": "nasforge.evaluators.train",
    "TableEvaluator": "nasforge.evaluators.table",
    "TableSpec": "nasforge.evaluators.table",
    "BudgetExhausted": "nasforge.evaluators.table",
    "OracleBest": "nasforge.evaluators.table",
    "nb201_cifar10_spec": "nasforge.evaluators.table",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = [
    "EVALUATOR_CONTRACT",
    "BudgetExhausted",
    "Evaluator",
    "EvaluatorContext",
    "EvaluatorEntry",
    "EvaluatorFactory",
    "OracleBest",
    "Reporter",
    "Result",
    "StopTrial",
    "TableEvaluator",
    "TableSpec",
    "TrainEvaluator",
    "create_evaluator",
    "evaluator_entry",
    "list_evaluators",
    "produced_metrics",
    "nb201_cifar10_spec",
    "register_evaluator",
]

register_evaluator(
    "proxy",
    "nasforge.evaluators.proxy:proxy_evaluator",
    "score each candidate by zero-cost proxies (synflow, naswot, grad_norm, ...) at init",
)

register_evaluator(
    "supernet",
    "nasforge.evaluators.supernet:supernet_evaluator",
    "score each candidate with a single-path supernet's inherited weights (SPOS / FairNAS)",
)

register_evaluator(
    "compressed",
    "nasforge.evaluators.compressed:compressed_evaluator",
    "train each candidate, compress it (channel pruning, fine-tuning, INT8) as its "
    "compress/ settings say, score the exported model: validation accuracy after compression "
    "and its latency measured on onnxruntime",
)
