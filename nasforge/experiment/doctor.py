"""`nasforge doctor CONFIG`: name the domain brief's anti-patterns in a config before a run.

The config is loaded with :func:`~nasforge.experiment.config.load_config`, so its plugins are
imported and what they register (spaces, strategies, evaluators, backends) is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nasforge.experiment.config import ExperimentConfig
from nasforge.hardware.doctor import latency_findings


@dataclass(frozen=True)
class Finding:
    """One problem: ``level`` is ``error`` (exit 1), ``warning`` or ``info``."""

    level: str
    field: str
    message: str


def diagnose(cfg: ExperimentConfig) -> list[Finding]:
    """Findings (error / warning / info, each naming the field) for a validated config."""
    out: list[Finding] = []
    o, lat = cfg.objective, cfg.latency
    if o.metric in ("test_acc", "test_accuracy"):
        out.append(
            Finding(
                "error",
                "objective.metric",
                "searching on the test split leaks it into model selection; search on val_acc",
            )
        )
    out.extend(Finding(level, field, msg) for level, field, msg in latency_findings(cfg))
    if o.kind == "accuracy":
        out.append(
            Finding(
                "info",
                "objective.kind",
                "the objective ignores hardware cost; consider weighted_product, constraint "
                "or pareto with a latency target",
            )
        )
    if lat.mode == "measure" and cfg.search.executor != "inline" and cfg.search.workers > 1:
        out.append(
            Finding(
                "warning",
                "search.workers",
                f"{cfg.search.workers} workers train while latency is measured: timings "
                "are disturbed by the other workers; use workers: 1 or latency.mode: predict",
            )
        )
    if cfg.final.epochs == 0:
        out.append(Finding("warning", "final.epochs", "the final model is not retrained"))
    if cfg.data.name in ("imagefolder", "cifar10"):
        if not cfg.data.path:
            out.append(Finding("error", "data.path", f"dataset {cfg.data.name!r} needs a path"))
        elif not Path(cfg.data.path).exists():
            out.append(Finding("error", "data.path", f"{cfg.data.path} does not exist"))
    if cfg.strategy.name == "darts" or cfg.strategy.options.get("regularize") is False:
        out.append(
            Finding(
                "warning", "strategy", "DARTS must run regularised (collapse to skip connections)"
            )
        )
    if cfg.compress is not None:
        c = cfg.compress
        if c.prune.method != "none" and c.prune.ratio > 0.3 and c.finetune.epochs == 0:
            out.append(
                Finding(
                    "warning",
                    "compress.finetune.epochs",
                    f"pruning {c.prune.ratio:.0%} without fine-tuning loses accuracy beyond "
                    "moderate ratios; fine-tune (with distillation) after compressing",
                )
            )
    return out
