"""Every example in ``examples/`` runs through ``search``, ``show``, ``export`` (where it
applies) and ``doctor`` (issue 11).

Each search runs a temporary copy of the example with a small budget (fewer trials, one
epoch, a slice of the data); everything else in the example is as shipped. Examples that
need a measured latency table or a compression pipeline are marked slow.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.compression.cli import read_compress_yaml
from nasforge.compression.config import CompressConfig
from nasforge.evaluators.table import NB201_CIFAR10_FILE, shared_data_dir

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
runner = CliRunner()
HAS_NB201 = (shared_data_dir() / NB201_CIFAR10_FILE).is_file()


def small_copy(example: Path, dest: Path, **sections: dict[str, Any]) -> Path:
    """``example`` with ``sections`` merged in (a small budget), written to ``dest``."""
    cfg = yaml.safe_load(example.read_text())
    for key, values in sections.items():
        cfg[key] = {**(cfg.get(key) or {}), **values}
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def ok(args: list[str]) -> Any:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    return res


def test_every_example_is_covered() -> None:
    shipped = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.yaml")}
    assert shipped == {
        "quickstart.yaml",
        "latency_predict.yaml",
        "nb201_table.yaml",
        "compress.yaml",
        "own_space/channel_bench.yaml",
        "darts.yaml",
        "spos.yaml",
        "ofa.yaml",
        "automl.yaml",  # run small in test_automl_config.py
        "scale.yaml",  # run small in test_scaling.py
    }, "a new example needs a test here"


def test_quickstart(tmp_path: Path) -> None:
    example = EXAMPLES / "quickstart.yaml"
    res = ok(["doctor", str(example)])
    assert "error" not in res.output
    cfg = small_copy(
        example,
        tmp_path / "quickstart.yaml",
        data={"limit": 300},
        search={"trials": 2, "executor": "inline"},
        train={"epochs": 1},
        latency={"repeats": 3, "warmup": 1},
        final={"epochs": 1},
    )
    ok(["search", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    run = tmp_path / "runs" / "quickstart"
    res = ok(["show", str(run)])
    assert "final model" in res.output
    # each latency of the best model says backend, statistic and when it was measured
    html = (run / "report.html").read_text()
    assert "median of 3 runs on torch, batch 1, 1 thread(s), measured once after the final" in html
    assert "measured once per trial during the search" in html
    assert "latency measured at the end, same statistic" not in html  # the duplicate is gone
    cost = json.loads((run / "report.json").read_text())["search_cost"]
    assert cost["device_seconds"] == round(cost["device_seconds"], 1)
    ok(["export", str(run), "--out", str(tmp_path / "exp")])
    assert (tmp_path / "exp" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("name", "run_name", "budget"),
    [
        ("darts.yaml", "darts-digits", {"epochs": 2, "steps_per_epoch": 2}),
        ("spos.yaml", "spos-digits", {"epochs": 1}),
    ],
)
def test_oneshot_examples(tmp_path: Path, name: str, run_name: str, budget: dict) -> None:
    example = EXAMPLES / name
    res = ok(["doctor", str(example)])
    assert "error" not in res.output
    if name == "spos.yaml":  # a two-minute demo: its supernet is too short to rank honestly
        assert res.output.count("warning") == 1 and "oneshot.options.epochs" in res.output
    else:
        assert "warning" not in res.output
    options = yaml.safe_load(example.read_text())["oneshot"]["options"]
    cfg = small_copy(
        example,
        tmp_path / name,
        oneshot={"options": {**options, **budget}},
        search={"trials": 3},
        latency={"repeats": 3, "warmup": 1},
        final={"epochs": 1},
    )
    ok(["search", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    run = tmp_path / "runs" / run_name
    res = ok(["show", str(run)])
    assert "final model" in res.output
    assert (run / "supernet" / f"epoch_{budget['epochs']:04d}.pt").is_file()
    ok(["export", str(run), "--out", str(tmp_path / "exp")])
    assert (tmp_path / "exp" / "model.onnx").is_file()


def test_ofa_example(tmp_path: Path) -> None:
    example = EXAMPLES / "ofa.yaml"
    res = ok(["doctor", str(example)])
    assert "error" not in res.output and "warning" not in res.output
    train = yaml.safe_load(example.read_text())["ofa"]["train"]
    phases = [{**p, "epochs": 1} for p in train["phases"]]  # every phase, one epoch each
    cfg = small_copy(
        example,
        tmp_path / "ofa.yaml",
        data={"samples": 400},
        ofa={"train": {**train, "phases": phases}},
    )
    res = runner.invoke(app, ["search", str(cfg)])  # Once-for-All has its own commands
    assert res.exit_code == 2 and "nasforge ofa train" in res.output
    ok(["ofa", "train", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    run = tmp_path / "runs" / "ofa-mnist1d"
    assert (run / "supernet" / "final.pt").is_file() and (run / "report.html").is_file()
    assert (run / "supernet" / f"epoch_{len(phases):04d}.pt").is_file()
    res = ok(["ofa", "list", str(run)])
    assert "no specialisations" in res.output


@pytest.mark.skipif(not HAS_NB201, reason="NAS-Bench-201 table not in shared data")
def test_nb201_table(tmp_path: Path) -> None:
    example = EXAMPLES / "nb201_table.yaml"
    res = ok(["doctor", str(example)])
    assert "error" not in res.output
    cfg = small_copy(example, tmp_path / "nb201.yaml", search={"trials": 20})
    ok(["search", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    run = tmp_path / "runs" / "nb201-table"
    res = ok(["show", str(run)])  # used to crash: KeyError 'latency_ms_torch'
    assert "final model" in res.output and "20 complete" in res.output
    # a table run trains no network: export says so on one line
    res = runner.invoke(app, ["export", str(run)])
    assert res.exit_code == 2 and "trains no network" in res.output
    assert "Traceback" not in res.output


def _synthetic_latency_csv(path: Path) -> None:
    """A latency.csv of the shape latency.py writes (a formula, not a measurement)."""
    base = (8, 8, 16, 16, 32, 32, 64)
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow([f"c{i + 1}" for i in range(7)] + ["lat_ms_cpu"])
        for doubled in itertools.product((0, 1), repeat=7):
            widths = [b * (1 + d) for b, d in zip(base, doubled)]
            out.writerow([*widths, f"{0.3 + 0.06 * sum(doubled):.4f}"])


def test_own_space_channel_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "own_space"
    shutil.copytree(EXAMPLES / "own_space", work)
    if not (work / "latency.csv").is_file():  # latency.py times the layers (README test)
        _synthetic_latency_csv(work / "latency.csv")
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    res = ok(["doctor", "channel_bench.yaml"])
    assert "error" not in res.output
    cfg = small_copy(work / "channel_bench.yaml", work / "small.yaml", search={"trials": 10})
    ok(["search", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    run = tmp_path / "runs" / "channel-bench"
    res = ok(["show", str(run)])
    assert "final model" in res.output
    res = runner.invoke(app, ["export", str(run)])
    assert res.exit_code == 2 and "trains no network" in res.output


def test_latency_predict_doctor_says_how_to_get_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where tables/ does not exist
    res = runner.invoke(app, ["doctor", str(EXAMPLES / "latency_predict.yaml")])
    assert res.exit_code == 1 and "latency.table" in res.output and "Traceback" not in res.output


def test_compress_example_loads() -> None:
    raw, factory = read_compress_yaml(EXAMPLES / "compress.yaml")
    assert factory is None
    CompressConfig.model_validate(raw)


@pytest.mark.slow  # measures a latency table for the mobile space (about a minute)
def test_latency_predict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nasforge.hardware.builder import BuildConfig, TableBuilder
    from nasforge.spaces import create_space

    monkeypatch.chdir(tmp_path)
    example = EXAMPLES / "latency_predict.yaml"
    cfg = yaml.safe_load(example.read_text())
    table = tmp_path / cfg["latency"]["table"]
    table.parent.mkdir(parents=True)
    space = create_space("mobile", (1, 28, 28), 10)
    TableBuilder(space, "torch", 1, BuildConfig(calibration_archs=4), progress=False).build(table)
    small = small_copy(
        example,
        tmp_path / "lp.yaml",
        # the flow, not this build's trust verdict (tests/test_hardware_trust.py checks that)
        latency={"allow_untrusted_table": True},
        data={"limit": 300},
        search={"trials": 2, "executor": "inline"},
        train={"epochs": 1},
        final={"epochs": 1},
    )
    ok(["doctor", str(small)])
    ok(["search", str(small), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    run = tmp_path / "runs" / "latency-predict"
    ok(["show", str(run)])
    ok(["export", str(run)])


@pytest.mark.slow  # a prune + fine-tune + int8 pipeline
def test_compress_example_on_a_search_result(tmp_path: Path) -> None:
    cfg = small_copy(
        EXAMPLES / "quickstart.yaml",
        tmp_path / "q.yaml",
        data={"limit": 300},
        search={"trials": 1, "executor": "inline"},
        train={"epochs": 1},
        latency={"repeats": 3, "warmup": 1},
        final={"epochs": 1, "export_onnx": False},
    )
    ok(["search", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    best = tmp_path / "runs" / "quickstart" / "best"
    out = tmp_path / "compressed"
    ok(
        [
            "compress",
            str(best / "model.pt"),
            "--config",
            str(EXAMPLES / "compress.yaml"),
            "--data",
            "mnist5k",
            "--finetune-epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    assert (out / "report.html").is_file()
    assert json.loads((best / "card.json").read_text())["trial_id"] == 1
