"""Everything a config names, built and checked once, before the first trial.

:func:`prepare_run` is the one validation that ``nasforge search`` runs before it asks for
the first architecture and that ``nasforge doctor`` runs to report problems: it builds the
run's objects (:func:`~nasforge.experiment.setup.build_run`: data, space, objective, latency
model), the strategy and the evaluator, and checks that the objective's metrics are ones the
evaluator produces. A config error therefore stops a search before any trial (exit 2),
instead of failing every trial with the same message.

:func:`budget_findings` names budgets too small for the strategy to do what it is configured
to do (``trials: 2`` with an evolution population of 50 is random sampling).

A search that predicts latency from a table the table's verdict says not to trust
(:func:`~nasforge.hardware.trust.table_verdict`: poor held-out or validated accuracy, a build
on a busy host, a table from another machine) stops here too, with one line that says why and
how to override (``latency.allow_untrusted_table: true``), unless the config allows it;
:func:`latency_trust_findings` names a table that cannot be judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nasforge.errors import ConfigError
from nasforge.evaluators import Evaluator, produced_metrics
from nasforge.experiment.config import ExperimentConfig
from nasforge.experiment.setup import RunObjects, build_run, make_evaluator, make_strategy
from nasforge.hardware.trust import trust_finding
from nasforge.strategies import Strategy


@dataclass(frozen=True)
class PreparedRun:
    """What :func:`prepare_run` built: the run's objects, its strategy and its evaluator."""

    objects: RunObjects
    strategy: Strategy
    evaluator: Evaluator


def needed_metrics(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """``(field, metric)`` pairs the objective reads: ``objective.metric`` always, and
    ``objective.cost_metric`` for every kind but ``accuracy``."""
    o = cfg.objective
    out = [("objective.metric", o.metric)]
    if o.kind != "accuracy":
        out.append(("objective.cost_metric", o.cost_metric))
    return out


def check_metrics(cfg: ExperimentConfig, evaluator: Evaluator) -> None:
    """Refuse an objective that reads a metric the evaluator does not produce.

    Raises:
        ConfigError: ``objective.metric: the 'train' evaluator produces no 'test_acc'
            (it produces: ...)``; nothing is checked for an evaluator that declares no
            metrics (:meth:`~nasforge.evaluators.Evaluator.produces`).
    """
    produced = produced_metrics(cfg.evaluator.kind, evaluator)
    if produced is None:
        return
    for field, metric in needed_metrics(cfg):
        if metric not in produced:
            hint = (
                "; the test split is touched once, after the search (search on val_acc)"
                if metric.startswith("test")
                else ""
            )
            raise ConfigError(
                f"{field}: the {cfg.evaluator.kind!r} evaluator produces no {metric!r} "
                f"(it produces: {', '.join(sorted(produced))}){hint}"
            )


def prepare_run(cfg: ExperimentConfig, run_dir: str | Path | None = None) -> PreparedRun:
    """Build the run's objects, strategy and evaluator from ``cfg`` and check them together.

    Raises:
        NasforgeError: (usually :class:`ConfigError`) the first problem, naming the field:
            an unknown space, strategy or dataset, options a factory rejects, a table the
            evaluator cannot read or a field it does not know, an objective metric the
            evaluator does not produce, a latency table whose verdict is "do not trust"
            (:class:`~nasforge.hardware.trust.UntrustedTableError`, raised by the run's
            :class:`~nasforge.hardware.model.LatencyModel`) without
            ``latency.allow_untrusted_table``.
    """
    objects = build_run(cfg, run_dir)
    strategy = make_strategy(objects)
    evaluator = make_evaluator(cfg, run_dir, objects)
    check_metrics(cfg, evaluator)
    return PreparedRun(objects, strategy, evaluator)


def warmup_of(strategy: Strategy) -> tuple[int, str] | None:
    """``(n, what)``: how many random architectures the strategy asks before it uses any
    result, and what sets that number; ``None`` if it has no warm-up. A strategy states it
    with a ``warmup_trials`` attribute; the built-in ones are read from their options."""
    declared = getattr(strategy, "warmup_trials", None)
    if isinstance(declared, int):
        return declared, "its warm-up"
    population = getattr(strategy, "population_size", None)
    if isinstance(population, int):
        return population, f"strategy.options.population ({population})"
    warmup = getattr(strategy, "warmup", None)
    if isinstance(warmup, int) and not isinstance(warmup, bool):
        return warmup, f"strategy.options.warmup ({warmup})"
    return None


def budget_findings(cfg: ExperimentConfig, strategy: Strategy) -> list[tuple[str, str, str]]:
    """``(level, field, message)`` for a trial budget that never gets past the strategy's
    random warm-up (the search would be random sampling)."""
    if cfg.oneshot is not None and cfg.oneshot.method == "darts":
        return []  # DARTS derives its arch itself: no strategy, no trial budget
    if cfg.ofa is not None:
        return []  # Once-for-All trains and specialises without the trial loop
    warm = warmup_of(strategy)
    trials = cfg.search.trials
    if warm is None or trials > warm[0]:
        return []
    n, what = warm
    return [
        (
            "warning",
            "search.trials",
            f"{trials} trial(s) never get past {cfg.strategy.name}'s random warm-up of {n} "
            f"architectures, set by {what}: the search is random sampling; raise "
            f"search.trials above {n} or lower the warm-up",
        )
    ]


def latency_trust_findings(prepared: PreparedRun) -> list[tuple[str, str, str]]:
    """``(level, field, message)`` about the verdict of the latency table the run predicts
    from: a warning when it cannot be told whether to trust it, or when
    ``latency.allow_untrusted_table`` lets the search use a table not to be trusted (a table
    refused outright never gets here: :func:`prepare_run` raised)."""
    model = prepared.objects.latency
    if model is None or model.verdict is None or model.predictor is None:
        return []
    table = model.predictor.table
    found = trust_finding(
        model.verdict,
        str(table.path or "the latency table"),
        prepared.objects.config.latency.allow_untrusted_table,
    )
    return [found] if found is not None else []
