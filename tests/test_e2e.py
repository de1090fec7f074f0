"""End to end through the CLI on `digits`: search, report, export; SIGKILL then --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.experiment.store import TrialStore

runner = CliRunner()


def write_config(tmp_path: Path, **overrides: str) -> Path:
    sections = {
        "data": "{name: digits}",
        "search": "{trials: 4, executor: process, workers: 1}",
        "train": "{epochs: 2, lr: 0.1}",
        "strategy": "{name: evolution, options: {population: 2, tournament: 2}}",
        "objective": "{kind: weighted_product, target: 1.0}",
        "latency": "{repeats: 5, warmup: 1}",
        "final": "{epochs: 2}",
    }
    sections.update(overrides)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: e2e\nruns_dir: {tmp_path / 'runs'}\n"
        + "".join(f"{k}: {v}\n" for k, v in sections.items())
    )
    return cfg


def test_search_report_show_export(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = runner.invoke(app, ["search", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "e2e"
    for f in (
        "config.yaml",
        "trials.db",
        "report.html",
        "report.json",
        "best/model.pt",
        "best/arch.json",
        "best/model.onnx",
        "best/card.json",
    ):
        assert (run / f).is_file(), f
    report = json.loads((run / "report.json").read_text())
    assert report["search_cost"]["candidates_evaluated"] == 4
    assert report["search_cost"]["device_seconds"] > 0
    assert report["hardware"]["cpu"]
    card = json.loads((run / "best/card.json").read_text())
    assert 0.0 <= card["test_acc"] <= 1.0 and card["onnx_max_abs_diff"] < 1e-3
    assert card["latency_ms_torch"] > 0
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "Leaderboard" in html
    # the exported ONNX model really runs and agrees with the card's test accuracy being computed
    sess = ort.InferenceSession(str(run / "best/model.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((2, 1, 8, 8), np.float32)})[0]
    assert out.shape == (2, 10)
    res = runner.invoke(app, ["show", str(run)])
    assert res.exit_code == 0 and "final model" in res.output
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0 and (tmp_path / "exp" / "model.onnx").is_file()
    res = runner.invoke(app, ["search", str(cfg), "--quiet"])
    assert res.exit_code == 2 and "--resume" in res.output


def test_nan_loss_trials_fail_and_search_goes_on(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        train="{epochs: 1, lr: 1.0e+12, label_smoothing: 0.0}",
        search="{trials: 3, executor: inline}",
    )
    res = runner.invoke(app, ["search", str(cfg), "--quiet"])
    # every trial failed: said so, and the exit code is not success
    assert res.exit_code == 1, res.output
    assert "no trial completed (3 failed)" in res.output
    with TrialStore(tmp_path / "runs" / "e2e" / "trials.db") as store:
        failed = store.trials(("failed",))
        assert len(failed) == 3
        assert all("TrainingDiverged" in (t.error or "") for t in failed)
    assert (tmp_path / "runs" / "e2e" / "report.html").is_file()


def test_sigkill_then_resume_loses_nothing_and_reruns_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, search="{trials: 8, executor: inline}", train="{epochs: 1}")
    db = tmp_path / "runs" / "e2e" / "trials.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasforge.cli", "search", str(cfg), "--quiet", "--no-final"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        before = []
        while time.time() < deadline:
            if db.is_file():
                with TrialStore(db) as s:
                    before = s.trials(("complete",))
                    if len(before) >= 3:
                        break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert 3 <= len(before) < 8, "the run finished before it could be killed"
    with TrialStore(db) as s:
        before = s.trials(("complete",))
    res = runner.invoke(app, ["search", str(cfg), "--quiet", "--resume", "--no-final"])
    assert res.exit_code == 0, res.output
    with TrialStore(db) as s:
        complete = s.trials(("complete",))
        assert len(complete) == 8
        # finished records are intact, and no network was evaluated twice
        by_id = {t.id: t for t in complete}
        for t in before:
            assert by_id[t.id].metrics == t.metrics and by_id[t.id].finished == t.finished
        assert len({t.key for t in complete}) == 8
        assert all(t.state in ("complete", "interrupted") for t in s.trials())
        assert any(kind == "resume" for _, kind, _ in s.events()) or s.count(("interrupted",)) == 0


@pytest.mark.slow
def test_search_with_compress_section_writes_int8_model(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        search="{trials: 2, executor: inline}",
        compress="{prune: {method: channel, ratio: 0.3}, finetune: {epochs: 1}, "
        "quantize: {mode: int8, calibration_size: 64, qat: never}, "
        "target: {rounds: 2}}",
    )
    res = runner.invoke(app, ["search", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output
    best = tmp_path / "runs" / "e2e" / "best"
    assert (best / "model.int8.onnx").is_file()
    card = json.loads((best / "card.json").read_text())
    assert "compression" in card


@pytest.mark.slow  # asserts timing accuracy: a loaded host may fail it
def test_search_with_latency_predicted_from_a_table(tmp_path: Path) -> None:
    from nasforge.hardware.builder import BuildConfig, TableBuilder
    from nasforge.spaces import create_space

    options = {
        "stages": [[8, 1, 1], [16, 2, 2]],
        "kernels": [3, 5],
        "expands": [1, 3],
        "activations": ["relu"],
        "se": [False],
    }
    space = create_space("mobile", (1, 8, 8), 10, **options)
    table_path = tmp_path / "table.json"
    TableBuilder(
        space,
        "torch",
        1,
        BuildConfig(calibration_archs=4),
        space_options=options,
        progress=False,
    ).build(table_path)
    cfg = write_config(
        tmp_path,
        search="{trials: 3, executor: inline}",
        space=f"{{name: mobile, options: {json.dumps(options)}}}",
        # the flow, not this build's trust verdict (tests/test_hardware_trust.py checks that)
        latency=f"{{mode: predict, table: {table_path}, allow_untrusted_table: true}}",
    )
    res = runner.invoke(app, ["search", str(cfg), "--quiet"])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "runs" / "e2e" / "best" / "card.json").read_text())
    check = card["latency_check"]
    # the search's predicted latency sits beside a fresh measurement of the chosen model
    assert check["latency_ms_predicted"] == pytest.approx(card["search_metrics"]["latency_ms"])
    assert check["latency_ms_measured"] > 0 and abs(check["latency_error_pct"]) < 100
    html = (tmp_path / "runs" / "e2e" / "report.html").read_text()
    assert "latency predicted in search" in html
