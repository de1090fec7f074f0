"""A validation that finds the machine in another state than at build time says so (issue 10).

The table's calibration models are re-measured beside the validation archs; when their median
time moved by more than ``NoisePolicy.max_drift`` the validation is unstable, with the ratio in
words, instead of scoring the table against a machine that changed under it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nasforge.hardware.cli import app
from nasforge.hardware.noise import NoisePolicy
from nasforge.hardware.validate import drift_stability

runner = CliRunner()


@pytest.mark.parametrize(
    ("drift", "stable", "words"),
    [
        (1.0, True, ""),
        (1.03, True, ""),
        (0.97, True, ""),
        (1.088, False, "1.09x as slow"),
        (0.8, False, "1.25x as fast"),
        (None, True, ""),
        (math.nan, True, ""),
    ],
)
def test_drift_beyond_the_policy_is_unstable(drift: float | None, stable: bool, words: str) -> None:
    v = drift_stability(drift, 20)
    assert v.stable is stable
    if not stable:
        assert words in v.label and "20 calibration models" in v.label
        assert v.label.startswith("unstable: host busy")


def test_the_limit_is_the_policys() -> None:
    assert drift_stability(1.08, 5, NoisePolicy(max_drift=0.10)).stable
    assert not drift_stability(1.08, 5, NoisePolicy(max_drift=0.05)).stable


def test_validate_marks_a_table_whose_calibration_models_now_run_twice_as_slow(
    tmp_path: Path,
) -> None:
    """The build-time times of the calibration models are halved in the file: re-measured now,
    they take about twice as long, and the validation must say the machine is not the one the
    table was built on (whatever else the busy test host adds)."""
    path = tmp_path / "t.json"
    build = [
        "build", "--out", str(path), "--space", "nb201", "--input-shape", "3,8,8",
        "--option", "C=4", "--option", "N=1", "--calibration", "3", "--held-out", "2", "--quiet",
    ]  # fmt: skip
    res = runner.invoke(app, build)
    assert res.exit_code == 0, res.output
    data = json.loads(path.read_text())
    points = data["calibration_points"]
    assert points and all("measured_ms" in p for p in points)
    for p in points:
        p["measured_ms"] = {k: v / 2.0 for k, v in p["measured_ms"].items()}
    path.write_text(json.dumps(data))
    out = tmp_path / "v.json"
    res = runner.invoke(app, ["validate", str(path), "--n", "3", "--no-record", "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["stability"]["stable"] is False
    assert any("as slow as when the table was built" in r for r in report["stability"]["reasons"])
    assert "cannot tell" in report["verdict"]["status"]
