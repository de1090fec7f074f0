"""Bad input: each a one-line error naming the field, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nasforge.cli import app

runner = CliRunner()
BASE = (
    "name: bad\ndata: {name: digits}\nsearch: {trials: 2, executor: inline}\ntrain: {epochs: 1}\n"
)


def run_cli(tmp_path: Path, text: str, *args: str):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    return runner.invoke(
        app, ["search", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet", *args]
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            BASE.replace("trials: 2", "trails: 2"),
            "search.trails: unknown field; did you mean 'trials'?",
        ),
        (
            BASE.replace("trials: 2", "trials: many"),
            "search.trials: Input should be a valid integer",
        ),
        (
            BASE + "latency: {mode: fast}\n",
            "latency.mode: Input should be 'measure', 'predict' or 'flops'",
        ),
        (
            BASE.replace("{name: digits}", "{name: cifar10, path: /no/such/dir}"),
            "data.path: /no/such/dir does not exist",
        ),
        (
            BASE.replace("{name: digits}", "{name: imagenet}"),
            "data.name: unknown dataset 'imagenet'",
        ),
        (
            BASE + "space: {name: mobile, fixed: {stage9/depth: 2}}\n",
            "unknown label 'stage9/depth'",
        ),
        (
            BASE + "space: {name: mobile, fixed: {stage0/block0/kernel: 4}}\n",
            "stage0/block0/kernel = 4 is not allowed; expected one of 3, 5, 7",
        ),
        (BASE + "space: {name: mobilenet}\n", "space.name: unknown space 'mobilenet'"),
        (BASE + "strategy: {name: evolution, options: {popsize: 3}}\n", "strategy.options"),
        ("name: bad\ndata: [unclosed\n", "not valid YAML"),
        (BASE + "objective: {kind: constraint}\n", "objective.target"),
    ],
)
def test_bad_config_is_one_line_error_with_exit_code_2(
    tmp_path: Path, text: str, expected: str
) -> None:
    res = run_cli(tmp_path, text)
    assert res.exit_code == 2, res.output
    assert expected in res.output
    assert "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1


def test_missing_config_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["search", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "config file not found" in res.output


def test_existing_run_needs_resume_and_resume_needs_run(tmp_path: Path) -> None:
    res = run_cli(tmp_path, BASE, "--resume")
    assert res.exit_code == 2 and "nothing to resume" in res.output


def test_console_script_exit_code(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(BASE.replace("trials: 2", "trails: 2"))
    proc = subprocess.run(
        [sys.executable, "-m", "nasforge.cli", "search", str(cfg)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "search.trails" in proc.stderr


def test_doctor_names_flops_as_latency(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        BASE + "objective: {kind: weighted_product, cost_metric: flops, target: 1000000}\n"
    )
    res = runner.invoke(app, ["doctor", str(cfg)])
    assert res.exit_code == 0 and "FLOPs and params rank latency poorly" in res.output
    cfg.write_text(BASE + "objective: {metric: test_acc}\n")
    res = runner.invoke(app, ["doctor", str(cfg)])
    assert res.exit_code == 1 and "test split" in res.output
