"""`nasforge doctor CONFIG`: name the domain brief's anti-patterns in a config before a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nasforge.experiment.config import ExperimentConfig


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning" | "info"
    field: str
    message: str


def diagnose(cfg: ExperimentConfig) -> list[Finding]:
    out: list[Finding] = []
    o, lat = cfg.objective, cfg.latency
    if o.metric in ("test_acc", "test_accuracy"):
        out.append(Finding("error", "objective.metric",
                           "searching on the test split leaks it into model selection; search on val_acc"))
    if o.cost_metric in ("flops", "params", "size_bytes") and o.kind != "accuracy":
        out.append(Finding("warning", "objective.cost_metric",
                           f"{o.cost_metric} is used as the cost: FLOPs and params are not latency "
                           "(depthwise convs and memory-bound ops are slow for their FLOPs); use "
                           "latency_ms measured on the target"))
    if lat.mode == "flops" and o.kind != "accuracy":
        out.append(Finding("warning", "latency.mode",
                           "latency.mode 'flops' reports FLOPs as latency: a proxy, not a measurement"))
    if o.kind == "accuracy":
        out.append(Finding("info", "objective.kind",
                           "the objective ignores hardware cost; consider weighted_product, constraint "
                           "or pareto with a latency target"))
    if lat.mode == "measure" and cfg.search.executor != "inline" and cfg.search.workers > 1:
        out.append(Finding("warning", "search.workers",
                           f"{cfg.search.workers} workers train while latency is measured: timings "
                           "are disturbed by the other workers; use workers: 1 or latency.mode: predict"))
    if lat.mode == "predict":
        if not lat.table:
            out.append(Finding("error", "latency.table", "latency.mode 'predict' needs a table"))
        elif not Path(lat.table).is_file():
            out.append(Finding("error", "latency.table", f"{lat.table} does not exist"))
        else:
            out.extend(_table_findings(lat.table))
    if cfg.final.epochs == 0:
        out.append(Finding("warning", "final.epochs", "the final model is not retrained"))
    if cfg.data.name in ("imagefolder", "cifar10"):
        if not cfg.data.path:
            out.append(Finding("error", "data.path", f"dataset {cfg.data.name!r} needs a path"))
        elif not Path(cfg.data.path).exists():
            out.append(Finding("error", "data.path", f"{cfg.data.path} does not exist"))
    if cfg.strategy.name == "darts" or cfg.strategy.options.get("regularize") is False:
        out.append(Finding("warning", "strategy", "DARTS must run regularised (collapse to skip connections)"))
    if cfg.compress is not None:
        c = cfg.compress
        if c.prune.method != "none" and c.prune.ratio > 0.3 and c.finetune.epochs == 0:
            out.append(Finding("warning", "compress.finetune.epochs",
                               f"pruning {c.prune.ratio:.0%} without fine-tuning loses accuracy beyond "
                               "moderate ratios; fine-tune (with distillation) after compressing"))
    return out


def _table_findings(path: str) -> list[Finding]:
    try:
        from nasforge.hardware.table import check_table
    except ImportError:
        return []
    return [Finding("warning", "latency.table", msg) for msg in check_table(path)]
