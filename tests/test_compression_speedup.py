"""Compression speed-ups are paired comparisons with intervals, and an unstable one is said.

Every timing here comes from scripted runners (a fixed time per call, times a factor per
visit), so the tests pass on any host, loaded or quiet; no test asserts a measured time. The
models, exports and ONNX Runtime accuracy checks are real; only the stopwatch is scripted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scripted_timing import JUMPY, SCRIPTED

from nasforge.compression import CompressConfig, run_pipeline
from nasforge.compression import pipeline as pipeline_mod
from nasforge.compression.cli import table_lines
from nasforge.compression.quantization import (
    FormatChoice,
    format_candidates,
    select_int8_format,
)
from nasforge.compression.quantization import ptq as ptq_mod
from nasforge.compression.quantization.runtime import (
    compare_speedups,
    paired,
    speedup_text,
)
from nasforge.compression.zoo import MobileNetV2
from nasforge.data import load_dataset
from nasforge.hardware.backends import Runner
from nasforge.hardware.noise import UNSTABLE, NoisePolicy
from nasforge.hardware.timing import TimingConfig

pytestmark = pytest.mark.usefixtures("one_thread")


class Scripted(Runner):
    """``value`` ms per call (both clocks), times ``factors[k]`` on its k-th visit."""

    def __init__(self, name: str, value: float, factors: list[float] | None = None) -> None:
        super().__init__(lambda: None, name)
        self.value, self.factors, self.calls = value, factors or [1.0], 0

    def run(self, n: int) -> tuple[list[float], list[float]]:
        f = self.factors[self.calls % len(self.factors)]
        self.calls += 1
        v = [self.value * f] * n
        return v, list(v)


def test_speedups_come_from_one_paired_pass_with_an_interval() -> None:
    res = compare_speedups(
        {"fp32": Scripted("x", 4.0), "int8": Scripted("y", 1.0), "pruned": Scripted("z", 2.0)},
        "fp32",
        1,
        1,
        SCRIPTED,
    )
    assert list(res) == ["fp32", "int8", "pruned"]
    s = res["int8"].speedup
    assert s is not None and s.name == "int8" and s.baseline == "fp32"
    assert s.ratio == pytest.approx(4.0) and s.stable and s.rounds == 8
    assert speedup_text(s) == "4.00x [4.00, 4.00]"
    # any two models of the pass compare the same way
    assert paired(res["pruned"], res["int8"]).ratio == pytest.approx(2.0)
    with pytest.raises(ValueError, match="baseline 'nope'"):
        compare_speedups({"a": Scripted("a", 1.0)}, "nope", 1, 1, SCRIPTED)


def test_unstable_speedup_is_printed_as_unstable_never_as_a_bare_ratio() -> None:
    res = compare_speedups(
        {"fp32": Scripted("a", 4.0), "int8": Scripted("b", 1.0, JUMPY)}, "fp32", 1, 1, SCRIPTED
    )
    s = res["int8"].speedup
    assert s is not None and not s.stable
    text = speedup_text(s)
    assert text.startswith(f"{UNSTABLE} (") and f"{s.ratio:.2f}x" not in text
    assert f"[{s.low:.2f}, {s.high:.2f}]" in text  # the interval is shown, the point is not


def test_too_few_rounds_give_no_interval_and_are_unstable() -> None:
    cfg = TimingConfig(
        warmup=0, repeats=4, rounds=2, reference=False, clock="wall", policy=NoisePolicy(retries=0)
    )
    res = compare_speedups({"a": Scripted("a", 2.0), "b": Scripted("b", 1.0)}, "a", 1, 1, cfg)
    s = res["b"].speedup
    assert s is not None and not s.stable and "too few for a 95% interval" in s.reasons[-1]


# -- the pipeline: report, card, console ---------------------------------------------------------
@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = MobileNetV2(width=0.5, setting=((1, 16, 1, 1), (4, 24, 2, 2)), last_channels=64)
    return ds, model.eval()


def _int8_only() -> CompressConfig:
    return CompressConfig.model_validate(
        {
            "stages": ["quantize_int8"],
            "quantize": {
                "activations": "uint8",
                "calibration_size": 64,
                "qat": "never",
                "mixed_precision": False,
                "drop_budget": 0.5,
            },
            "target": {"batch_sizes": [1, 8], "rounds": 8},
        }
    )


def _script(monkeypatch: pytest.MonkeyPatch, module: object, times: dict[str, Scripted]) -> None:
    """Make ``module.ort_runner`` hand out the scripted runner whose key the file name holds."""

    def fake(path: str | Path, x: torch.Tensor, threads: int = 1) -> Runner:
        name = Path(path).name
        return next(r for k, r in times.items() if k in name)

    monkeypatch.setattr(module, "ort_runner", fake)


def test_report_shows_the_interval_and_decides_on_a_stable_figure(
    digits, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    ds, model = digits
    _script(monkeypatch, pipeline_mod, {"fp32": Scripted("o", 4.0), "int8": Scripted("q", 1.6)})
    report = run_pipeline(model, ds, _int8_only(), tmp_path, timing=SCRIPTED)
    row = report.stage("int8")
    assert row.speedup_stable == {1: True, 8: True}
    assert row.speedup_label[1] == "2.50x [2.50, 2.50]"
    assert row.speedup_ci[8] == pytest.approx((2.5, 2.5))
    assert report.deployable is True and report.verdict.startswith("deployable")
    page = (tmp_path / "report.html").read_text()
    assert "2.50x [2.50, 2.50]" in page and "95% interval" in page
    data = json.loads((tmp_path / "report.json").read_text())
    int8 = data["stages"][-1]
    assert int8["speedup_ci"]["1"] == [2.5, 2.5] and int8["speedup_stable"]["8"] is True
    assert data["deployable"] is True and data["details"]["timing"]["int8"]["1"]["speedup"]
    lines = table_lines(report)
    assert any(ln.startswith("int8") and "(2.50x [2.50, 2.50])" in ln for ln in lines)


def test_unstable_speedup_blocks_the_deployable_verdict(digits, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ds, model = digits
    _script(
        monkeypatch,
        pipeline_mod,
        {"fp32": Scripted("o", 4.0), "int8": Scripted("q", 1.6, JUMPY)},
    )
    report = run_pipeline(model, ds, _int8_only(), tmp_path, timing=SCRIPTED)
    row = report.stage("int8")
    assert row.unstable_batches() == [1, 8]
    assert report.deployable is None and report.verdict.startswith("UNDECIDED")
    assert any(w.startswith("UNDECIDED: could not decide") for w in report.warnings)
    assert any(n.startswith(f"batch 1 speed-up {UNSTABLE}") for n in row.notes)
    page = (tmp_path / "report.html").read_text()
    assert UNSTABLE in page and "UNDECIDED" in page
    assert f"{row.speedup[1]:.2f}x" not in page  # the bare ratio is never shown as fact
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["deployable"] is None and data["verdict"].startswith("UNDECIDED")
    assert data["stages"][-1]["speedup_label"]["1"].startswith(UNSTABLE)
    int8_line = next(ln for ln in table_lines(report) if ln.startswith("int8"))
    assert UNSTABLE.upper() in int8_line and f"{row.speedup[1]:.2f}x" not in int8_line


def test_measurably_slower_artifact_is_not_deployable(digits, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ds, model = digits
    _script(monkeypatch, pipeline_mod, {"fp32": Scripted("o", 1.0), "int8": Scripted("q", 1.25)})
    report = run_pipeline(model, ds, _int8_only(), tmp_path, timing=SCRIPTED)
    assert report.deployable is False
    assert any("NOT FASTER" in w and "0.80x [0.80, 0.80]" in w for w in report.warnings)


# -- INT8 format selection ------------------------------------------------------------------------
Script = tuple[float, list[float]]  # (ms per call, factor per visit)


def _formats(digits, tmp_path, monkeypatch, default: Script, other: Script) -> FormatChoice:  # type: ignore[no-untyped-def]
    """Run the real format selection (real exports) with the default candidate and every
    other one timed as scripted (each runner its own instance: one visit per round)."""
    ds, model = digits
    cands = format_candidates(model)
    names = list(cands)
    assert names[0] == "u8act_s8w_per_channel" and len(names) >= 2
    times = {"fp32_reference": Scripted("f", 4.0), names[0]: Scripted("d", *default)}
    times.update({n: Scripted(n, *other) for n in names[1:]})
    # the longest key first, so "u8act_s8w_per_channel" does not swallow its "_fp32_stem" twin
    _script(monkeypatch, ptq_mod, dict(sorted(times.items(), key=lambda kv: -len(kv[0]))))
    return select_int8_format(
        model, ds.x_train[:64], ds.input_shape, cands, (1, 8), 1, tmp_path, SCRIPTED
    )


def test_format_selection_notes_an_unstable_comparison_and_keeps_the_default(
    digits, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    choice = _formats(digits, tmp_path, monkeypatch, (1.0, JUMPY), (0.8, [1.0]))
    assert choice.chosen == choice.default == "u8act_s8w_per_channel"
    assert choice.trials[0].name == choice.default
    assert "unstable" in choice.notes[0] and "kept the default" in choice.notes[0]
    assert set(choice.fp32_ms) == {1, 8}


def test_format_selection_keeps_the_default_when_intervals_overlap(
    digits, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # the other formats are 1% faster on average, within +-5% round-to-round noise
    choice = _formats(
        digits, tmp_path, monkeypatch, (1.0, [1.0, 1.03, 0.97, 1.0]), (0.99, [1.0, 0.97, 1.03, 1.0])
    )
    assert choice.chosen == choice.default
    assert "overlap" in choice.notes[0] and "kept the default" in choice.notes[0]


def test_format_selection_takes_a_measurably_faster_format(digits, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    choice = _formats(digits, tmp_path, monkeypatch, (2.0, [1.0]), (1.0, [1.0]))
    assert choice.chosen != choice.default and choice.trials[0].name == choice.chosen
    assert choice.trials[0].speedup[1].ratio == pytest.approx(4.0)
    assert "faster than the default" in choice.notes[0]
    assert "vs FP32 in the same pass: b1 4.00x [4.00, 4.00]" in choice.notes[1]
