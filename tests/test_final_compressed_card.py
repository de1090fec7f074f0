"""The final card of a joint architecture x compression search tells the compressed winner's
figures: its top-level latency is the compressed ONNX model timed on the onnxruntime backend
the trials were timed on, not the float model's (kept under ``latency_float_*``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.experiment.config import parse_config
from nasforge.experiment.runner import Experiment

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE_OPTIONS = {
    "stages": [[8, 1, 1], [16, 2, 2]],
    "kernels": [3],
    "expands": [1, 3],
    "activations": ["relu"],
    "se": [False],
}


def joint_run(runs: Path, **over: Any) -> tuple[Path, dict[str, Any]]:
    """One trial of a joint search (prune 0.25 + INT8; ``over`` replaces sections), float
    latency on torch, retrained; returns the run directory and the card."""
    raw: dict[str, Any] = {
        "name": "joint",
        "runs_dir": str(runs),
        "data": {"name": "digits", "limit": 400},
        "space": {"name": "mobile", "options": SPACE_OPTIONS},
        "search": {"trials": 1, "executor": "inline"},
        "strategy": {"name": "random"},
        "train": {"epochs": 1, "lr": 0.1},
        "evaluator": {
            "kind": "compressed",
            "options": {"round_to": 4, "min_keep": 4, "calibration": 64},
        },
        "automl": {"compress": {"prune_ratio": [0.25], "bits": [8]}},
        # the float model is timed on torch: the card must not show that figure as the
        # winner's latency
        "latency": {"backend": "torch", "repeats": 6, "warmup": 1},
        "compress": {"target": {"batch_sizes": [1], "rounds": 2}},
        "final": {"epochs": 1},
        "objective": {"kind": "weighted_product", "target": 1.0},
    }
    cfg = parse_config({k: v for k, v in {**raw, **over}.items() if v is not None})
    Experiment(cfg, console=Console(quiet=True), progress=False).run()
    run_dir = runs / "joint"
    return run_dir, json.loads((run_dir / "best" / "card.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return joint_run(tmp_path_factory.mktemp("runs"))


def test_card_latency_is_the_compressed_int8_model_on_onnxruntime(run) -> None:  # type: ignore[no-untyped-def]
    run_dir, card = run
    measured = card["compression"]["measured"]
    assert measured["artifact"] == "model.int8.onnx"
    assert (run_dir / "best" / measured["artifact"]).is_file()
    # the top-level figure is the INT8 model's measurement, on the search's onnxruntime backend
    assert card["latency_ms"] == measured["latency_ms"] == measured["measurement"]["median_ms"]
    assert card["latency_ms"] == card["latency_ms_onnxruntime"]
    assert card["latency"]["backend"] == measured["measurement"]["backend"] == "onnxruntime"
    assert card["latency"]["batch_size"] == 1  # latency.batch_size, as the trials
    assert "model.int8.onnx" in card["latency"]["model"]
    assert card["latency_stability"] == measured["measurement"]["stability"]
    # the float model's figures are kept under their own names, measured on torch
    assert card["latency_float"]["backend"] == "torch"
    assert card["latency_float_ms"] == card["latency_float_check"]["latency_ms_measured"]
    assert "latency_ms_torch" not in card and "latency_ms_predicted" not in card
    # the test accuracy is the compressed model's (the pipeline's INT8 row), the float one kept
    int8 = next(o for o in card["compression"]["outputs"] if o["artifact"] == "model.int8.onnx")
    assert card["test_acc"] == int8["test_accuracy"]
    assert isinstance(card["test_acc_float"], float)


def test_final_line_and_show_say_the_compressed_figure(run) -> None:  # type: ignore[no-untyped-def]
    run_dir, card = run
    log = (run_dir / "progress.log").read_text()
    line = next(x for x in log.splitlines() if "final: test accuracy" in x)
    assert f"latency {card['latency_ms']:.3f} ms" in line
    assert "on onnxruntime" in line and "compressed (model.int8.onnx)" in line
    assert f"float model {card['latency_float_ms']:.3f} ms" in line and "on torch" in line
    shown = CliRunner().invoke(app, ["show", str(run_dir)])
    assert shown.exit_code == 0, shown.output
    final = " ".join(shown.output.split("final model", 1)[1].split())  # unwrapped
    assert f"{card['latency_ms']:.3f} ms" in final and "on onnxruntime" in final


def test_measure_onnx_times_an_onnx_file_in_the_hardware_layer() -> None:
    from torch import nn

    from nasforge.hardware.backends import BackendError
    from nasforge.hardware.onnx import export_onnx
    from nasforge.hardware.timing import TimingConfig, measure_onnx

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    onnx_bytes = export_onnx(model, (1, 8, 8), batch_size=2)
    timing = TimingConfig(warmup=1, repeats=4, rounds=2)
    m = measure_onnx(onnx_bytes, (1, 8, 8), 2, "onnxruntime", timing, threads=1)
    assert (m.backend, m.batch_size, m.threads) == ("onnxruntime", 2, 1)
    assert m.median_ms > 0 and m.repeats >= 4 and m.fingerprint
    with pytest.raises(BackendError, match="'torch' cannot run an exported ONNX model"):
        measure_onnx(onnx_bytes, (1, 8, 8), 2, "torch", timing, threads=1)


@pytest.mark.slow
def test_compressed_evaluator_without_searched_settings_times_the_float_export(
    tmp_path: Path,
) -> None:
    """No ``compress/`` dims: the trials timed the exported float model on onnxruntime, and
    so does the card (not the torch figure)."""
    _, card = joint_run(tmp_path, automl=None)
    measured = card["compression"]["measured"]
    assert measured["artifact"] == "model.fp32.onnx" and measured["row"] == "original"
    assert card["latency_ms"] == measured["latency_ms"] == card["latency_ms_onnxruntime"]
    assert card["latency"]["model"] == "exported float model (model.fp32.onnx)"
    assert card["latency_float"]["backend"] == "torch"


def test_report_says_the_latency_is_the_compressed_models_on_onnxruntime(run) -> None:  # type: ignore[no-untyped-def]
    run_dir, _ = run
    sources = json.loads((run_dir / "report.json").read_text())["latency_sources"]
    assert sources["search"].startswith("the compressed, exported ONNX model")
    assert "on onnxruntime" in sources["search"] and "on torch" not in sources["search"]
    assert "on onnxruntime" in sources["final"] and "float model's on torch" in sources["final"]
