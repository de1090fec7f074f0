"""A run seen by a newcomer: plain progress lines off a terminal and in the run's log file,
the final check on the configured backend with the user's repeats, the real input shape."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from nasforge.experiment.config import parse_config
from nasforge.experiment.progress import LOG_NAME, RunLog
from nasforge.experiment.runner import Experiment

TINY_MOBILE = {
    "stages": [[8, 1, 1], [16, 1, 2]],
    "kernels": [3],
    "expands": [1, 3],
    "activations": ["relu"],
    "se": [False],
}


def _run(tmp_path: Path, console: Console, **sections: object) -> Path:
    cfg = parse_config(
        {
            "name": "p",
            "runs_dir": str(tmp_path),
            "data": {"name": "digits"},
            "space": {"name": "mobile", "options": TINY_MOBILE},
            "search": {"trials": 2, "executor": "inline"},
            "train": {"epochs": 1},
            "final": {"epochs": 2, "export_onnx": False},
            **sections,
        }
    )
    Experiment(cfg, console=console).run()
    return tmp_path / "p"


def test_off_a_terminal_each_trial_and_final_epoch_is_one_line_also_in_the_log(
    tmp_path: Path,
) -> None:
    buf = io.StringIO()
    run = _run(
        tmp_path,
        Console(file=buf, force_terminal=False, width=200),
        latency={"mode": "flops"},
    )
    printed = buf.getvalue().splitlines()
    logged = (run / LOG_NAME).read_text().splitlines()
    for lines in (printed, logged):
        assert sum(" complete (" in line and line.count("trial") >= 1 for line in lines) == 2
        assert any("epoch 1/2" in line for line in lines)
        assert any("epoch 2/2" in line for line in lines)
    # the log's lines are the printed ones, each with a UTC time stamp in front
    assert all(line[:4].isdigit() and line[19] == "Z" for line in logged)
    assert sum("final: test accuracy" in line for line in printed) == 1


def test_on_a_terminal_lines_go_to_the_log_only(tmp_path: Path) -> None:
    buf = io.StringIO()
    log = RunLog(tmp_path / LOG_NAME, Console(file=buf, force_terminal=True), show=True)
    with log:
        assert log.live and not log.echo
        log.line("trial 1 complete")
    assert buf.getvalue() == ""
    assert (tmp_path / LOG_NAME).read_text().endswith("trial 1 complete\n")
    quiet = RunLog(tmp_path / LOG_NAME, Console(file=buf, force_terminal=False), show=False)
    with quiet:
        assert not quiet.live and not quiet.echo
        quiet.line("trial 2 complete")
    assert buf.getvalue() == "" and "trial 2 complete" in (tmp_path / LOG_NAME).read_text()


def test_final_latency_is_measured_on_the_configured_backend_with_the_users_repeats(
    tmp_path: Path,
) -> None:
    run = _run(
        tmp_path,
        Console(file=io.StringIO()),
        latency={"mode": "flops", "backend": "onnxruntime", "repeats": 4, "warmup": 1},
    )
    card = json.loads((run / "best" / "card.json").read_text())
    assert card["latency"]["backend"] == "onnxruntime"
    assert card["latency"]["repeats"] == 4 and card["latency"]["warmup"] == 1
    assert card["latency_ms"] == card["latency_ms_onnxruntime"] > 0
    assert "latency_ms_torch" not in card
    report = json.loads((run / "report.json").read_text())
    # digits are 8x8 grey images: the report says so, and not the resize defaults (32, 3)
    assert report["input"] == {"shape": [1, 8, 8], "classes": 10}
    assert card["input_shape"] == [1, 8, 8]
    assert "image_size" not in report["config"]["data"]
    assert "channels" not in report["config"]["data"]
