"""The noise verdict of a search's measured latencies reaches the trial record, the progress
lines, the card and the report (issue 10: "unstable: host busy" instead of a figure printed as
a fact), and a stable measurement shows no warning.

The measurement is scripted (``LatencyModel.measure`` returns a chosen verdict), so the tests
check the wiring on any host, busy or quiet, and assert no timing.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from torch import nn

from nasforge.evaluators.base import STABILITY_INFO, UNSTABLE_METRIC
from nasforge.experiment.config import LatencyConfig, parse_config
from nasforge.experiment.latency_verdict import (
    UNSTABLE_TRIALS_META,
    latency_text,
    search_summary,
    summary_text,
    trial_latency_text,
)
from nasforge.experiment.progress import LOG_NAME
from nasforge.experiment.runner import Experiment
from nasforge.experiment.setup import build_run, make_evaluator
from nasforge.experiment.store import TrialRecord, TrialStore
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.noise import UNSTABLE, Stability
from nasforge.hardware.timing import LatencyMeasurement
from nasforge.space import Arch
from nasforge.spaces import create_space

TINY_MOBILE = {
    "stages": [[8, 1, 1], [16, 1, 2]],
    "kernels": [3],
    "expands": [1, 3],
    "activations": ["relu"],
    "se": [False],
}
BUSY = (
    "other processes used 1.6 of 2 CPUs while 1 were needed",
    "round medians spread 12% (> 5%)",
)


def _measurement(stability: Stability, median_ms: float = 3.21) -> LatencyMeasurement:
    return LatencyMeasurement(
        median_ms=median_ms,
        iqr_ms=0.1,
        min_ms=median_ms * 0.9,
        repeats=5,
        batch_size=1,
        threads=1,
        q1_ms=median_ms * 0.95,
        q3_ms=median_ms * 1.05,
        mean_ms=median_ms,
        p10_ms=median_ms * 0.92,
        stability=stability,
    )


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[Stability]:
    """``LatencyModel.measure`` returns the verdicts pushed onto the list (the last one
    repeats), and records that it was called."""
    verdicts: list[Stability] = []

    def measure(
        self: LatencyModel, model: nn.Module, input_shape: Sequence[int]
    ) -> LatencyMeasurement:
        stability = verdicts.pop(0) if len(verdicts) > 1 else verdicts[0]
        return _measurement(stability)

    monkeypatch.setattr(LatencyModel, "measure", measure)
    return verdicts


def _config(tmp_path: Path) -> dict[str, object]:
    return {
        "name": "v",
        "runs_dir": str(tmp_path),
        "data": {"name": "digits"},
        "space": {"name": "mobile", "options": TINY_MOBILE},
        "search": {"trials": 2, "executor": "inline"},
        "train": {"epochs": 1},
        "final": {"epochs": 1, "export_onnx": False},
        "latency": {"mode": "measure"},
    }


def _run(tmp_path: Path, terminal: bool = False) -> tuple[Path, str]:
    buf = io.StringIO()
    cfg = parse_config(_config(tmp_path))
    Experiment(cfg, console=Console(file=buf, force_terminal=terminal, width=300)).run()
    return tmp_path / "v", buf.getvalue()


def test_the_evaluator_reports_the_verdict_beside_the_measured_latency(
    tmp_path: Path, scripted: list[Stability]
) -> None:
    scripted.append(Stability(stable=False, reasons=BUSY))
    cfg = parse_config(_config(tmp_path))
    objects = build_run(cfg)
    evaluator = make_evaluator(cfg, objects=objects)
    assert UNSTABLE_METRIC in (evaluator.produces() or set())
    arch = objects.space.sample(np.random.default_rng(0))
    result = evaluator.evaluate(arch, budget=1)
    assert result.metrics["latency_ms"] == pytest.approx(3.21)
    assert result.metrics[UNSTABLE_METRIC] == 1.0
    verdict = result.info[STABILITY_INFO]
    assert verdict["stable"] is False and verdict["reasons"] == list(BUSY)
    # a stable measurement: flag 0, verdict stable
    scripted[0] = Stability()
    result = evaluator.evaluate(arch, budget=1)
    assert result.metrics[UNSTABLE_METRIC] == 0.0
    assert result.info[STABILITY_INFO]["stable"] is True


def test_predicted_latency_carries_no_measurement_verdict(tmp_path: Path) -> None:
    cfg = parse_config({**_config(tmp_path), "latency": {"mode": "flops"}})
    evaluator = make_evaluator(cfg)
    assert UNSTABLE_METRIC not in (evaluator.produces() or set())


def test_unstable_latencies_are_marked_in_the_store_log_console_card_and_report(
    tmp_path: Path, scripted: list[Stability]
) -> None:
    scripted.append(Stability(stable=False, reasons=BUSY))
    run, printed = _run(tmp_path)

    with TrialStore(run / "trials.db", create=False) as store:
        trials = store.trials(("complete",))
        verdicts = store.get_meta(UNSTABLE_TRIALS_META)
        events = [e for e in store.events() if e[1] == "latency_unstable"]
    assert len(trials) == 2
    assert all(t.metrics[UNSTABLE_METRIC] == 1.0 for t in trials)
    assert {int(k) for k in verdicts} == {t.id for t in trials}
    assert all(v["stable"] is False and v["reasons"] == list(BUSY) for v in verdicts.values())
    assert len(events) == 2 and all(UNSTABLE in e[2] for e in events)

    logged = (run / LOG_NAME).read_text()
    trial_lines = [ln for ln in logged.splitlines() if " complete (" in ln]
    assert len(trial_lines) == 2
    for line in trial_lines:
        assert f"latency_ms 3.21 ({UNSTABLE} ({BUSY[0]}; {BUSY[1]}))" in line
    for text in (logged, printed):
        assert "2 of 2 trials' measured latencies are unstable: host busy" in text
        assert "WARNING: the final latency 3.210 ms is unstable: host busy" in text
    assert f"latency 3.210 ms ({UNSTABLE} ({BUSY[0]}; {BUSY[1]}))" in printed

    card = json.loads((run / "best" / "card.json").read_text())
    assert card["latency_stability"]["stable"] is False
    assert card["latency_stability"]["reasons"] == list(BUSY)
    assert "latency_stability" not in card["latency_check"]
    assert card["search_metrics"][UNSTABLE_METRIC] == 1.0

    report = json.loads((run / "report.json").read_text())
    search = report["latency_stability"]["search"]
    assert search["measured"] == 2 and search["unstable"] == 2
    assert sorted(search["unstable_trial_ids"]) == sorted(t.id for t in trials)
    assert sum(search["reasons"].values()) == 4  # two reasons, two trials
    assert report["latency_stability"]["final"]["stable"] is False
    page = (run / "report.html").read_text()
    assert "The best model's final latency is unstable: host busy" in page
    assert page.count(f"({UNSTABLE})") >= 2  # leaderboard rows

    from typer.testing import CliRunner

    from nasforge.cli import app

    shown = CliRunner().invoke(app, ["show", str(run)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    # rich wraps lines at the console width it found when nasforge.cli was first imported
    assert f"latency 3.210 ms ({UNSTABLE}" in " ".join(shown.output.split())


def test_stable_latencies_show_no_warning(tmp_path: Path, scripted: list[Stability]) -> None:
    scripted.append(Stability())
    run, printed = _run(tmp_path)
    with TrialStore(run / "trials.db", create=False) as store:
        trials = store.trials(("complete",))
        assert store.get_meta(UNSTABLE_TRIALS_META) is None
    assert len(trials) == 2 and all(t.metrics[UNSTABLE_METRIC] == 0.0 for t in trials)
    logged = (run / LOG_NAME).read_text()
    for text in (logged, printed, (run / "report.html").read_text()):
        assert "unstable" not in text.lower()
        assert "WARNING" not in text
    assert "latency_ms 3.21;" in logged or "latency_ms 3.21," in logged
    card = json.loads((run / "best" / "card.json").read_text())
    assert card["latency_stability"]["stable"] is True
    report = json.loads((run / "report.json").read_text())
    assert report["latency_stability"]["search"]["unstable"] == 0
    assert report["latency_stability"]["search"]["measured"] == 2
    assert report["latency_stability"]["final"]["stable"] is True


def test_a_later_stable_pass_is_not_marked(tmp_path: Path, scripted: list[Stability]) -> None:
    """Only the trial whose measurement stayed unstable is marked; the final one is stable."""
    scripted.extend([Stability(stable=False, reasons=BUSY[:1]), Stability()])
    run, printed = _run(tmp_path)
    report = json.loads((run / "report.json").read_text())
    search = report["latency_stability"]["search"]
    assert search["measured"] == 2 and search["unstable"] == 1
    assert report["latency_stability"]["final"]["stable"] is True
    assert "WARNING: the final latency" not in printed
    assert "1 of 2 trials' measured latencies are unstable" in printed


def test_on_a_terminal_the_first_unstable_trial_is_said_once(
    tmp_path: Path, scripted: list[Stability]
) -> None:
    """A terminal shows a live bar instead of the log lines: one warning names the first
    unstable trial and where the others are marked; the summary and the final warning follow."""
    scripted.append(Stability(stable=False, reasons=BUSY[:1]))
    run, printed = _run(tmp_path, terminal=True)
    assert printed.count(f"measured latency is {UNSTABLE} ({BUSY[0]})") == 1
    assert str(run / LOG_NAME) in printed
    assert "2 of 2 trials' measured latencies are unstable" in printed
    assert "WARNING: the final latency" in printed


def _trial(tid: int, metrics: dict[str, float]) -> TrialRecord:
    return TrialRecord(tid, Arch({"a": tid}), "complete", 0.5, metrics)


def test_wording_and_tallies() -> None:
    busy = Stability(stable=False, reasons=BUSY)
    assert latency_text(3.21) == "3.210 ms"
    assert latency_text(3.21, Stability()) == "3.210 ms"
    assert latency_text(3.21, busy) == f"3.210 ms ({busy.label})"
    assert latency_text(3.21, unstable=True) == f"3.210 ms ({UNSTABLE})"
    stable = _trial(1, {"latency_ms": 2.0, UNSTABLE_METRIC: 0.0})
    shaky = _trial(2, {"latency_ms": 2.0, UNSTABLE_METRIC: 1.0})
    predicted = _trial(3, {"latency_ms": 2.0})
    assert trial_latency_text(stable) == "latency_ms 2"
    assert trial_latency_text(shaky) == f"latency_ms 2 ({UNSTABLE})"
    assert trial_latency_text(shaky, busy) == f"latency_ms 2 ({busy.label})"
    other = Stability(
        stable=False, reasons=("other processes used 1.1 of 2 CPUs while 1 were needed",)
    )
    summary = search_summary(
        [stable, shaky, predicted, _trial(4, {UNSTABLE_METRIC: 1.0})],
        {"2": busy.to_dict(), "4": other.to_dict()},
    )
    assert summary["measured"] == 3 and summary["unstable"] == 2
    assert summary["unstable_trial_ids"] == [2, 4]
    # the same cause with other numbers counts once per trial, under one wording
    assert summary["reasons"]["other processes used # of # CPUs while # were needed"] == 2
    assert summary["examples"]["round medians spread #% (> #%)"] == BUSY[1]
    assert "2 of 3 trials' measured latencies" in summary_text(summary)
    assert summary_text(search_summary([stable, predicted], None)) == ""


def test_the_final_check_hands_back_the_real_measurements_verdict() -> None:
    """On the real backend (a tiny model): the final check carries the harness's verdict,
    whatever it is on this host, in the form the card stores."""
    space = create_space("nb201", (3, 8, 8), 10, C=4, N=1)
    arch = space.sample(np.random.default_rng(0))
    lm = LatencyModel.from_config(LatencyConfig(mode="measure", warmup=1, repeats=6))
    check = lm.final_check(arch, space.build(arch), (3, 8, 8))
    verdict = Stability.from_dict(check["latency_stability"])
    assert verdict.stable == (not verdict.reasons)
    assert json.loads(json.dumps(check["latency_stability"])) == check["latency_stability"]
