"""A plugin for the store's fault-injection tests: an instant evaluator, so a whole search is
milliseconds and a fault can be injected at every write of a run."""

from __future__ import annotations

import hashlib
from typing import Any

from nasforge.evaluators import Evaluator, EvaluatorContext, Result, register_evaluator
from nasforge.space import Arch


class InstantEvaluator(Evaluator):
    """val_acc from a hash of the arch: deterministic, no training."""

    def produces(self) -> frozenset[str]:
        return frozenset({"val_acc"})

    def evaluate(self, arch: Arch, budget: float | None = None, reporter: Any = None) -> Result:
        h = int(hashlib.sha256(arch.key.encode()).hexdigest()[:8], 16)
        return Result({"val_acc": (h % 10_000) / 10_000}, cost_seconds=0.01)


def _factory(context: EvaluatorContext, **options: Any) -> Evaluator:
    return InstantEvaluator()


register_evaluator("instant", _factory, "instant hash-scored evaluator", needs_data=False)
