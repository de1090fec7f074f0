"""Evaluators: what a candidate is worth (train, table lookup, supernet, proxy)."""

from __future__ import annotations

import importlib
from typing import Any

from nasforge.evaluators.base import Evaluator, Reporter, Result, StopTrial

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
    "BudgetExhausted",
    "Evaluator",
    "OracleBest",
    "Reporter",
    "Result",
    "StopTrial",
    "TableEvaluator",
    "TableSpec",
    "TrainEvaluator",
    "nb201_cifar10_spec",
]
