"""The `ray` executor runs trials as tasks on a local Ray cluster; results reach the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.experiment.store import TrialStore

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'nasforge[ray]')")


def test_search_on_a_local_ray_cluster(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: r\nruns_dir: {tmp_path}\ndata: {{name: digits}}\n"
        "search: {trials: 3, executor: ray, workers: 2}\ntrain: {epochs: 1}\n"
        "latency: {repeats: 5, warmup: 1}\n"
    )
    try:
        res = CliRunner().invoke(app, ["search", str(cfg), "--quiet", "--no-final"])
    finally:
        ray.shutdown()
    assert res.exit_code == 0, res.output
    with TrialStore(tmp_path / "r" / "trials.db") as store:
        trials = store.trials(("complete",))
        assert len(trials) == 3
        assert all(t.metrics["latency_ms"] > 0 for t in trials)
