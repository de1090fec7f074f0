"""The `ray` executor on a local Ray started for the run: results reach the store, a trial
names the Ray node it ran on, and workers get the data from Ray's object store (not from
the data files) and never make the driver's run directory. The multi-node cluster tests are
in ``tests/test_ray_cluster.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
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
    assert not ray.is_initialized()  # the driver disconnected from the Ray it started
    with TrialStore(tmp_path / "r" / "trials.db") as store:
        trials = store.trials(("complete",))
        assert len(trials) == 3
        assert all(t.metrics["latency_ms"] > 0 for t in trials)
        for t in trials:  # "<node ip>:<pid>"
            ip, pid = str(t.worker).rsplit(":", 1)
            assert ip.count(".") == 3 and pid.isdigit(), t.worker


def test_workers_get_the_data_from_the_object_store(tmp_path: Path) -> None:
    from PIL import Image

    from nasforge.experiment.config import parse_config
    from nasforge.experiment.executors import make_executor
    from nasforge.experiment.setup import build_run

    data = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                data / c / f"{i}.png"
            )
    cfg = parse_config(
        {
            "data": {"name": "imagefolder", "path": str(data), "image_size": 8, "channels": 1},
            "search": {"executor": "ray", "workers": 2},
            "train": {"epochs": 1},
            "latency": {"repeats": 3, "warmup": 1},
        }
    )
    run = build_run(cfg)  # the driver loads the data once, as the search does
    archs = [run.space.sample(np.random.default_rng(s)) for s in (1, 2)]
    cfg_json = json.dumps(cfg.model_dump(mode="json"))
    # the run dir is on the driver's machine only: as for a worker on another host
    elsewhere = tmp_path / "driver-host" / "runs" / "r"
    shutil.rmtree(data)  # nobody can read the files from now on: not the executor, no worker
    executor = make_executor("ray", 2, 1, None, cfg_json, run.dataset)  # put as loaded
    try:
        payloads = [
            {"config_json": cfg_json, "arch_json": a.to_json(), "run_dir": str(elsewhere)}
            for a in archs
        ]
        futures = [executor.submit(p) for p in payloads]
        outs = [f.result(timeout=300) for f in futures]
    finally:
        executor.shutdown()
    assert all(o["ok"] for o in outs), [o.get("error") for o in outs]
    assert all(0.0 <= o["metrics"]["val_acc"] <= 1.0 for o in outs)
    assert not elsewhere.parent.exists()  # no worker made the driver's paths
