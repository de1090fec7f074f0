"""The compression pipeline end to end, its config, and the CLI's error handling."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from nasforge.compression import CompressConfig, run_pipeline
from nasforge.compression.cli import compress
from nasforge.compression.zoo import MobileNetV2
from nasforge.data import load_dataset
from nasforge.train import TrainConfig, train_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():  # type: ignore[no-untyped-def]
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = MobileNetV2(width=0.5, setting=((1, 16, 1, 1), (4, 24, 2, 2)), last_channels=64)
    train_model(model, ds.x_train[:600], ds.y_train[:600], TrainConfig(epochs=2, lr=0.05))
    return ds, model.eval()


def _cfg(**kw: object) -> CompressConfig:
    base = {
        "prune": {"method": "channel", "ratio": 0.4, "round_to": 4, "min_keep": 4},
        "finetune": {"epochs": 1},
        "quantize": {
            "activations": "uint8",
            "calibration_size": 64,
            "qat": "never",
            "mixed_precision": False,
            "drop_budget": 0.5,
        },
        "target": {"batch_sizes": [1, 8], "rounds": 1},
    }
    base.update(kw)
    return CompressConfig.model_validate(base)


def test_pipeline_writes_artifacts_and_report(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds, model = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = run_pipeline(model, ds, _cfg(), tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    names = [s.name for s in report.stages]
    assert names == ["original", "pruned (no fine-tune)", "pruned+finetuned", "int8"]
    for f in (
        "model.fp32.onnx",
        "model.pruned.onnx",
        "model.int8.onnx",
        "pruning_plan.json",
        "report.json",
        "report.html",
    ):
        assert (tmp_path / f).is_file(), f
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["stages"][-1]["latency_ms"] and "agreement_vs_float" in data["details"]["int8"]
    assert report.stage("int8").size_bytes < report.stage("original").size_bytes
    assert "<table>" in (tmp_path / "report.html").read_text()
    int8 = report.stage("int8")
    assert set(int8.speedup_ci) == set(int8.speedup_stable) == {1, 8}
    if int8.unstable_batches():  # one round gives no interval: never decided on it
        assert report.deployable is None and "UNDECIDED" in report.verdict
    else:
        assert report.deployable == all(lo > 1 for lo, _ in int8.speedup_ci.values())


def test_aggressive_pruning_without_finetune_warns(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds, model = setup
    cfg = _cfg(finetune={"epochs": 0}, quantize={"mode": "int4"})
    report = run_pipeline(model, ds, cfg, tmp_path)
    assert any("without fine-tuning" in w for w in report.warnings)
    assert (tmp_path / "model.int4.pt").is_file()
    assert "no INT4 convolution kernel" in report.stage("int4-weight-only").notes[0]


def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(Exception, match="extra"):
        CompressConfig.model_validate({"prune": {"methd": "channel"}})


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(compress)
    return app


def test_cli_bad_input_exits_2_with_one_line(tmp_path, setup) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    res = runner.invoke(_app(), [str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "does not exist" in res.output
    torch.save(setup[1].state_dict(), tmp_path / "sd.pt")
    res = runner.invoke(_app(), [str(tmp_path / "sd.pt")])
    assert res.exit_code == 2 and "holds no architecture" in res.output
    torch.save({"model": setup[1]}, tmp_path / "m.pt")
    res = runner.invoke(_app(), [str(tmp_path / "m.pt"), "--prune", "channel:abc"])
    assert res.exit_code == 2 and "--prune" in res.output
    res = runner.invoke(_app(), [str(tmp_path / "m.pt"), "--quantize", "int3"])
    assert res.exit_code == 2 and "quantize.mode" in res.output
