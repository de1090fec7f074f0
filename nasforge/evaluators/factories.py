"""The built-in evaluator factories (``train``, ``table``), registered by import path in
:mod:`nasforge.evaluators` and called as ``factory(context, **options)``."""

from __future__ import annotations

from typing import Any

from nasforge.errors import ConfigError
from nasforge.evaluators.base import EvaluatorContext
from nasforge.evaluators.table import TableEvaluator, table_spec_from_config
from nasforge.evaluators.train import TrainEvaluator


def train_evaluator(context: EvaluatorContext, **options: Any) -> TrainEvaluator:
    """``evaluator.kind: train``: trains each candidate with ``context.train`` (no options)."""
    if options:
        raise ConfigError(f"evaluator.options: 'train' takes no options, got {sorted(options)}")
    if context.dataset is None:
        raise ConfigError("evaluator.kind: 'train' needs a dataset (data: section)")
    lock = context.run_dir / ".latency.lock" if context.run_dir is not None else None
    return TrainEvaluator(
        context.space,
        context.dataset,
        context.train,
        context.latency,
        lock,
        rungs=context.rungs,
        run_dir=context.run_dir,
    )


def table_evaluator(
    context: EvaluatorContext, table: dict[str, Any] | None = None
) -> TableEvaluator:
    """``evaluator.kind: table``: looks candidates up in ``evaluator.table``, either
    ``{preset: nb201, device: ..., path: ...}`` or the fields of
    :class:`~nasforge.evaluators.table.TableSpec` (see
    :func:`~nasforge.evaluators.table.table_spec_from_config`)."""
    return TableEvaluator(table_spec_from_config(table))
