"""Deployability: every stage against every earlier stage, what ships, and the report.

Timings come from scripted runners (a fixed time per call, times a factor per visit), so the
verdicts are the same on any host; models, exports and accuracy are real.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from scripted_timing import JUMPY, SCRIPTED

from nasforge.compression import CompressConfig, run_pipeline
from nasforge.compression import pipeline as pipeline_mod
from nasforge.compression.cli import table_lines
from nasforge.compression.pipeline import DEPLOY_FILE, _ship
from nasforge.compression.report import float_layers_text, layer_decisions, render_html
from nasforge.compression.results import (
    Comparison,
    CompressionReport,
    StageOutput,
    StageResult,
)
from nasforge.compression.zoo import MobileNetV2
from nasforge.data import load_dataset
from nasforge.hardware.backends import Runner

pytestmark = pytest.mark.usefixtures("one_thread")


class Scripted(Runner):
    """``value`` ms per call, times ``factors[k]`` on its k-th visit."""

    def __init__(self, name: str, value: float, factors: list[float] | None = None) -> None:
        super().__init__(lambda: None, name)
        self.value, self.factors, self.calls = value, factors or [1.0], 0

    def run(self, n: int) -> tuple[list[float], list[float]]:
        f = self.factors[self.calls % len(self.factors)]
        self.calls += 1
        v = [self.value * f] * n
        return v, list(v)


def _script(monkeypatch: pytest.MonkeyPatch, times: dict[str, Scripted]) -> None:
    def fake(path: str | Path, x: torch.Tensor, threads: int = 1) -> Runner:
        return next(r for k, r in times.items() if k in Path(path).name)

    monkeypatch.setattr(pipeline_mod, "ort_runner", fake)


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = MobileNetV2(width=0.5, setting=((1, 16, 1, 1), (4, 24, 2, 2)), last_channels=64)
    return ds, model.eval()


def _cfg(**kw: object) -> CompressConfig:
    base: dict[str, object] = {
        "stages": [{"name": "finetune", "epochs": 0}, "quantize_int8"],
        "quantize": {
            "activations": "uint8",
            "calibration_size": 64,
            "qat": "never",
            "mixed_precision": False,
            "drop_budget": 0.5,
        },
        "deploy": {"accuracy_budget": 0.5},
        "target": {"batch_sizes": [1, 8], "rounds": 8},
    }
    base.update(kw)
    return CompressConfig.model_validate(base)


def test_a_stage_slower_than_an_earlier_one_is_flagged_and_not_shipped(
    digits, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    ds, model = digits
    # int8 is faster than the original (1.6x) but slower than the float stage before it
    _script(
        monkeypatch,
        {"fp32": Scripted("o", 4.0), "finetuned": Scripted("f", 2.0), "int8": Scripted("q", 2.5)},
    )
    report = run_pipeline(model, ds, _cfg(), tmp_path, timing=SCRIPTED)
    assert [s.name for s in report.stages] == ["original", "float", "int8"]
    pairs = {(c.stage, c.earlier, c.batch_size): c for c in report.comparisons}
    assert set(pairs) == {
        (s, e, b)
        for s, e in (("float", "original"), ("int8", "original"), ("int8", "float"))
        for b in (1, 8)
    }
    slow = pairs[("int8", "float", 1)]
    assert slow.verdict == "slower" and slow.ratio == pytest.approx(0.8)
    assert pairs[("int8", "original", 8)].verdict == "faster"
    assert report.flagged() == ["int8"]
    assert any(w.startswith("SLOWER: int8") and "vs float" in w for w in report.warnings)
    assert report.deployable is False
    assert report.shipped == "float" and report.shipped_artifact == DEPLOY_FILE
    assert "int8 is slower than float" in report.shipped_reason
    deployed = (tmp_path / DEPLOY_FILE).read_bytes()
    assert deployed == (tmp_path / "model.finetuned.onnx").read_bytes()
    data = json.loads((tmp_path / "report.json").read_text())
    assert (
        data["shipped"] == "float" and data["details"]["shipped"]["from"] == "model.finetuned.onnx"
    )
    assert {c["verdict"] for c in data["comparisons"]} == {"faster", "slower"}
    lines = table_lines(report)
    assert any("int8 vs float b1" in ln and "SLOWER" in ln for ln in lines)
    assert any(ln.startswith("shipped: float -> model.deploy.onnx") for ln in lines)
    page = (tmp_path / "report.html").read_text()
    assert "Every stage against every earlier stage" in page and "shipped: <b>float" in page


def test_the_last_stage_ships_when_no_earlier_one_is_faster(digits, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ds, model = digits
    _script(
        monkeypatch,
        {"fp32": Scripted("o", 4.0), "finetuned": Scripted("f", 4.0), "int8": Scripted("q", 1.0)},
    )
    report = run_pipeline(model, ds, _cfg(), tmp_path, timing=SCRIPTED)
    assert report.flagged() == [] and report.deployable is True
    assert report.shipped == "int8"
    assert (tmp_path / DEPLOY_FILE).read_bytes() == (tmp_path / "model.int8.onnx").read_bytes()


def test_an_unstable_comparison_is_undecided_not_guessed(digits, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ds, model = digits
    _script(
        monkeypatch,
        {
            "fp32": Scripted("o", 4.0),
            "finetuned": Scripted("f", 1.2, JUMPY),
            "int8": Scripted("q", 1.0),
        },
    )
    report = run_pipeline(model, ds, _cfg(), tmp_path, timing=SCRIPTED)
    vs_float = [c for c in report.comparisons if c.stage == "int8" and c.earlier == "float"]
    assert vs_float and all(c.verdict == "undecided" for c in vs_float)
    assert report.deployable is None
    assert any(w.startswith("UNDECIDED: could not decide whether int8") for w in report.warnings)
    assert report.shipped == "int8" and "UNDECIDED" in report.shipped_reason


def _row(name: str, acc: float, artifact: str) -> StageResult:
    return StageResult(name, acc, 100, {1: 1.0}, artifact=artifact)


def _cmp(stage: str, earlier: str, low: float, high: float, stable: bool = True) -> Comparison:
    return Comparison(stage, earlier, 1, (low + high) / 2, low, high, stable, "x")


def test_ship_skips_a_stage_over_the_accuracy_budget() -> None:
    rows = [
        _row("original", 0.95, "model.fp32.onnx"),
        _row("pruned+finetuned", 0.94, "model.pruned.onnx"),
        _row("int8", 0.90, "model.int8.onnx"),
    ]
    comps = [
        _cmp("pruned+finetuned", "original", 1.5, 1.6),
        _cmp("int8", "original", 2.0, 2.2),
        _cmp("int8", "pruned+finetuned", 1.2, 1.3),
    ]
    warnings: list[str] = []
    row, why = _ship(rows, comps, 0.02, warnings)
    assert row.name == "pruned+finetuned" and "int8 loses 5.00 test points" in why
    row, why = _ship(rows, comps, 0.06, warnings)
    assert row.name == "int8" and not warnings
    # every compressed stage is out: the original ships, said in a warning
    row, why = _ship(rows, comps, 0.0, warnings)
    assert row.name == "original" and warnings[0].startswith("SHIPPED THE ORIGINAL")


def test_comparison_verdicts() -> None:
    assert _cmp("a", "b", 1.1, 1.2).verdict == "faster"
    assert _cmp("a", "b", 0.8, 0.9).verdict == "slower"
    assert _cmp("a", "b", 0.9, 1.1).verdict == "no measurable difference"
    assert _cmp("a", "b", 1.5, 1.6, stable=False).verdict == "undecided"


@dataclass(frozen=True)
class _WithDecisions(StageOutput):
    layers: tuple[dict[str, object], ...] = ()

    def details(self) -> dict[str, object]:
        return {"int8_layers": list(self.layers)}


def test_report_lists_the_layers_int8_left_float_and_why() -> None:
    out = _WithDecisions(
        "quantize_int8",
        "int8",
        0.9,
        layers=(
            {"name": "features.0", "op": "conv", "quantized": True, "reason": "measured faster"},
            {
                "layer": "blocks.1.ln",
                "op_kind": "layernorm",
                "precision": "float",
                "reason": "no integer kernel",
                "measured": 0.97,
            },
        ),
    )
    rows = (StageResult("original", 0.9, 1), StageResult("int8", 0.9, 1))
    report = CompressionReport(rows, (), {}, {}, True, (out,))
    decisions = layer_decisions(report)
    assert [d["precision"] for d in decisions] == ["int8", "float"]
    assert float_layers_text(report) == ["blocks.1.ln (layernorm): float, no integer kernel"]
    page = render_html(report)
    assert "INT8 decisions per layer" in page and "1 of 2 layers stayed float" in page
    assert any("stayed float" in ln for ln in table_lines(report))


def test_int8_stage_decisions_reach_the_report(digits, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ds, model = digits
    _script(monkeypatch, {"fp32": Scripted("o", 4.0), "int8": Scripted("q", 1.0)})
    cfg = _cfg(stages=["quantize_int8"])
    report = run_pipeline(model, ds, cfg, tmp_path, timing=SCRIPTED)
    decisions = layer_decisions(report)
    if not decisions:
        pytest.skip("the INT8 stage does not write per-layer decisions yet (engineer E)")
    assert all(d["precision"] for d in decisions)
    assert "INT8 decisions per layer" in (tmp_path / "report.html").read_text()
