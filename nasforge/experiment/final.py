"""After the search: retrain the best (or the Pareto set) on train+val, test once, export, measure."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from nasforge.data import Dataset
from nasforge.experiment.config import ExperimentConfig
from nasforge.experiment.export import export_onnx, onnx_max_abs_diff
from nasforge.experiment.setup import make_latency_model, train_config
from nasforge.experiment.store import TrialRecord, TrialStore
from nasforge.hardware import count_flops, count_params, measure_latency, model_size_bytes
from nasforge.nn import fuse_bn
from nasforge.objectives import Objective, pareto_front
from nasforge.space import SearchSpace
from nasforge.strategies.base import scalar
from nasforge.train import evaluate_accuracy, train_model


def select_final(store: TrialStore, objective: Objective, top_k: int) -> list[TrialRecord]:
    """The best ``top_k`` trials by score, or up to ``top_k`` of the Pareto front (by accuracy)."""
    complete = [t for t in store.trials(("complete",)) if t.score is not None]
    if not complete:
        return []
    if objective.multi:
        front = [complete[i] for i in pareto_front([list(t.score) for t in complete])]  # type: ignore[arg-type]
        front.sort(key=lambda t: -t.metrics.get(objective.metric, 0.0))
        if len(front) <= top_k:
            return front
        # spread the picks along the front
        idx = sorted({round(i * (len(front) - 1) / max(top_k - 1, 1)) for i in range(top_k)})
        return [front[i] for i in idx]
    complete.sort(key=lambda t: -scalar(t.score))
    return complete[:top_k]


def finalize(
    cfg: ExperimentConfig,
    run_dir: Path,
    store: TrialStore,
    dataset: Dataset,
    space: SearchSpace,
    objective: Objective,
    console: Console,
) -> dict[str, Any] | None:
    chosen = select_final(store, objective, cfg.final.top_k)
    if not chosen:
        console.print("[red]no trial completed: nothing to retrain[/]")
        return None
    models = []
    for rank, trial in enumerate(chosen):
        out_dir = run_dir / "best" if rank == 0 else run_dir / "best" / f"candidate{rank}"
        console.print(
            f"final: retraining trial {trial.id} on train+val for {cfg.final.epochs} epochs"
        )
        models.append(finalize_one(cfg, trial, out_dir, dataset, space, console))
    store.set_meta("final", models)
    return models[0]


def finalize_table(
    cfg: ExperimentConfig,
    run_dir: Path,
    store: TrialStore,
    space: SearchSpace,
    objective: Objective,
    console: Console,
) -> dict[str, Any] | None:
    """For a table benchmark: the best-by-validation arch and the table's reported (test) value."""
    chosen = select_final(store, objective, cfg.final.top_k)
    if not chosen:
        console.print("[red]no trial completed[/]")
        return None
    cards = []
    for trial in chosen:
        cards.append(
            {
                "trial_id": trial.id,
                "arch_key": trial.arch.key,
                "arch": trial.arch.to_dict(),
                "arch_description": space.describe(trial.arch),
                "space": space.name,
                "search_metrics": trial.metrics,
                "test_acc": trial.metrics.get("test_acc"),
                "latency_ms": trial.metrics.get("latency_ms"),
            }
        )
    out_dir = run_dir / "best"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "card.json").write_text(json.dumps(cards[0], indent=2, default=str))
    store.set_meta("final", cards)
    console.print(
        f"final: best by validation is trial {chosen[0].id}; the table reports "
        f"test accuracy {cards[0]['test_acc']}"
    )
    return cards[0]


def finalize_one(
    cfg: ExperimentConfig,
    trial: TrialRecord,
    out_dir: Path,
    dataset: Dataset,
    space: SearchSpace,
    console: Console,
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = space.build(trial.arch)
    d = dataset
    x = torch.cat([d.x_train, d.x_val])
    y = torch.cat([d.y_train, d.y_val])
    train_model(model, x, y, train_config(cfg, cfg.final.epochs))
    test_acc = evaluate_accuracy(model, d.x_test, d.y_test)  # the one use of the test split
    train_seconds = time.perf_counter() - t0
    model.eval()
    fused = fuse_bn(model)
    lat = cfg.latency
    stat = lat.statistic or "median"

    def measured(backend: str) -> float:
        return measure_latency(
            fused,
            d.input_shape,
            lat.batch_size,
            lat.warmup,
            max(lat.repeats, 50),
            lat.threads,
            backend=backend,
        ).value_ms(stat)

    latency_ms = measured("torch")
    torch.save(model, out_dir / "model.pt")
    card: dict[str, Any] = {
        "trial_id": trial.id,
        "arch_key": trial.arch.key,
        "arch": trial.arch.to_dict(),
        "arch_description": space.describe(trial.arch),
        "space": space.name,
        "dataset": d.summary(),
        "input_shape": list(d.input_shape),
        "classes": list(d.classes),
        "search_metrics": trial.metrics,
        "test_acc": test_acc,
        "final_epochs": cfg.final.epochs,
        "final_train_seconds": train_seconds,
        "latency_ms_torch": latency_ms,
        "latency_statistic": stat,
        "latency_batch_size": lat.batch_size,
        "latency_threads": lat.threads,
        "params": count_params(model),
        "flops": count_flops(model, d.input_shape),
        "size_bytes": model_size_bytes(fused),
    }
    latency_model = make_latency_model(cfg, space)
    if latency_model is not None:
        # the search's latency (predicted or measured) beside a fresh measurement, same statistic
        check = latency_model.final_check(trial.arch, fused, d.input_shape)
        card["fingerprint"] = check.pop("fingerprint", None)
        card["latency_check"] = check
        if check.get("latency_ms_predicted") is not None:
            card["latency_ms_predicted"] = check["latency_ms_predicted"]
    if cfg.final.export_onnx:
        onnx_bytes = export_onnx(fused, d.input_shape, out_dir / "model.onnx")
        card["onnx_max_abs_diff"] = onnx_max_abs_diff(fused, onnx_bytes, d.x_test[:64])
        card["latency_ms_onnxruntime"] = measured("onnxruntime")
        card["onnx_size_bytes"] = len(onnx_bytes)
    if cfg.compress:
        card["compression"] = _compress(cfg, model, dataset, out_dir, console)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2, default=str))
    msg = (
        f"final: test accuracy {test_acc:.4f}, latency {latency_ms:.3f} ms (torch, batch "
        f"{lat.batch_size}, {lat.threads} thread(s))"
    )
    if "onnx_max_abs_diff" in card:
        msg += (
            f", onnxruntime {card['latency_ms_onnxruntime']:.3f} ms, ONNX max abs diff "
            f"{card['onnx_max_abs_diff']:.2e}"
        )
    console.print(msg)
    return card


def _compress(
    cfg: ExperimentConfig, model: torch.nn.Module, dataset: Dataset, out_dir: Path, console: Console
) -> dict[str, Any]:
    from nasforge.compression.pipeline import run_pipeline

    assert cfg.compress is not None
    report = run_pipeline(model, dataset, cfg.compress, out_dir)
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)
