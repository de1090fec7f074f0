"""A search over NAS-Bench-201 through its table, via the CLI (config evaluator.kind: table)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.experiment.store import TrialStore

REPO = Path(__file__).resolve().parents[1]


def test_nb201_table_search_respects_constraint_and_cost_budget(
    tmp_path: Path, nb201_csv: Path
) -> None:
    text = (REPO / "examples" / "nb201_table.yaml").read_text()
    text += f"runs_dir: {tmp_path}\n"
    text = text.replace(
        "{preset: nb201_cifar10, device: pixel3}",
        f"{{preset: nb201_cifar10, device: pixel3, path: {nb201_csv}}}",
    )
    text = text.replace("search: {trials: 100}", "search: {trials: 100, cost_budget_s: 400000}")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    res = CliRunner().invoke(app, ["search", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "nb201-table"
    with TrialStore(run / "trials.db") as store:
        trials = store.trials(("complete",))
        cost = store.total_cost_seconds()
    # the simulated-cost budget stopped the search before 100 queries (one query past it at most)
    assert len(trials) < 100
    assert cost - max(t.cost_seconds for t in trials) < 400000 <= cost
    # the latency table is known before a query: the strategy never asks an arch over the limit
    assert all(t.metrics["latency_ms"] <= 20.0 for t in trials)
    card = json.loads((run / "best" / "card.json").read_text())
    assert card["latency_ms"] <= 20.0
    best = max(
        (t for t in trials if t.metrics["latency_ms"] <= 20.0), key=lambda t: t.metrics["val_acc"]
    )
    assert card["trial_id"] == best.id and card["test_acc"] == best.metrics["test_acc"]


def test_a_device_the_table_lacks_is_a_one_line_config_error(
    tmp_path: Path, nb201_csv: Path
) -> None:
    text = (REPO / "examples" / "nb201_table.yaml").read_text() + f"runs_dir: {tmp_path}\n"
    text = text.replace(
        "{preset: nb201_cifar10, device: pixel3}",
        f"{{preset: nb201, device: pixel_3, path: {nb201_csv}}}",
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    res = CliRunner().invoke(app, ["search", str(cfg), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "table.device: 'pixel_3'" in res.output and "did you mean 'pixel3'" in res.output
    assert "eyeriss" in res.output  # the devices the file has are listed
    assert "Traceback" not in res.output
