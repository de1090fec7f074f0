"""Live learning curves (`nasforge.experiment.live_curves`): while a trial of a real search on
digits trains, each finished epoch is in ``<run>/live/<trial>.jsonl`` and the dashboard's
snapshot and trial detail show the running trial's partial curve, read between two epochs by a
probe plugin (``live_probe_plugin``) in the process that trains it (inline and process pool);
the file goes when the trial's finish is recorded; torn and garbage lines are skipped; stale
files of a killed run are never shown as running and are removed on resume; a stopper reporter
still stops the trial. No timing is asserted."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console
from runproc import TINY, kill_group, start_search, wait_for, write_config

from nasforge.dashboard.data import snapshot, trial_detail
from nasforge.evaluators.base import Reporter, Result, StopTrial
from nasforge.experiment import report
from nasforge.experiment.config import parse_config
from nasforge.experiment.executors import evaluate_payload
from nasforge.experiment.live_curves import (
    MAX_BYTES,
    LiveCurveReporter,
    evaluate_with,
    live_curve,
    live_path,
    read_live,
)
from nasforge.experiment.runner import Experiment
from nasforge.experiment.setup import build_run, make_evaluator
from nasforge.experiment.store import StoreError, TrialStore
from nasforge.space import Arch
from nasforge.yamlfile import parse_yaml

EPOCHS = 3
TESTS = Path(__file__).resolve().parent


def _cfg(tmp_path: Path, name: str, executor: str, trials: int, **sections: Any) -> dict[str, Any]:
    probe = tmp_path / f"probe-{name}"
    probe.mkdir()
    cfg: dict[str, Any] = {
        "name": name,
        "runs_dir": str(tmp_path / "runs"),
        "plugins": ["live_probe_plugin"],
        "data": {"name": "digits", "limit": 400},  # small: the curves, not accuracy, matter
        "space": parse_yaml(TINY, "TINY"),
        "search": {"trials": trials, "executor": executor, "workers": 1},
        "train": {"epochs": EPOCHS, "lr": 0.1},
        "strategy": {"name": "random"},
        "objective": {"kind": "accuracy"},
        "latency": {"mode": "flops"},
        "evaluator": {"kind": "train_probe", "options": {"probe_dir": str(probe)}},
    }
    cfg.update(sections)
    return cfg


def _search(cfg: dict[str, Any], resume: bool = False) -> Path:
    run = Path(cfg["runs_dir"]) / cfg["name"]
    with pytest.MonkeyPatch.context() as mp:  # the report (plots) is not read here: spare it
        mp.setattr(report, "write_report", lambda *a, **k: None)
        exp = Experiment(parse_config(cfg), run, console=Console(quiet=True), progress=False)
        exp.run(resume=resume, final=False)
    return run


def _probes(cfg: dict[str, Any]) -> dict[tuple[int, int], dict[str, Any]]:
    """What the probe saw: ``(trial id, epoch) -> {snapshot, detail, file, ...}``."""
    folder = Path(cfg["evaluator"]["options"]["probe_dir"])
    out = {}
    for p in folder.glob("trial*-epoch*.json"):
        tid, epoch = p.stem.removeprefix("trial").split("-epoch")
        out[(int(tid), int(epoch))] = json.loads(p.read_text())
    return out


def _check_mid_trial_views(run: Path, cfg: dict[str, Any], trials: int) -> set[int]:
    """Every epoch of every trial was seen live, as the store has it after the trial; returns
    the PIDs that trained."""
    seen = _probes(cfg)
    assert sorted({t for t, _ in seen}) == list(range(1, trials + 1))
    with TrialStore.open_readonly(run / "trials.db") as store:
        final = {t: store.curve(t) for t in range(1, trials + 1)}
        assert all(store.trial(t).state == "complete" for t in final)
    for (tid, epoch), probe in seen.items():
        assert len(final[tid]) == EPOCHS
        snap, detail = probe["snapshot"], probe["detail"]
        assert snap["run"]["status"] == "running"
        assert str(tid) in snap["live"], f"trial {tid} not live at epoch {epoch}"
        live = snap["live"][str(tid)]
        assert live["epochs"] == list(range(1, epoch + 1))
        # the partial curve is the store's later curve, epoch by epoch (the same numbers)
        assert live["val_acc"] == pytest.approx(final[tid][:epoch])
        assert all(isinstance(v, float) and math.isfinite(v) for v in live["loss"])
        assert snap["curves"][str(tid)] == pytest.approx(final[tid][:epoch])
        assert [t["state"] for t in snap["trials"] if t["id"] == tid] == ["running"]
        assert detail["live"] is True and detail["state"] == "running"
        assert detail["curve"] == pytest.approx(final[tid][:epoch])
        # earlier trials are finished by then: their curve is the store's, not a live one
        assert all(str(t) not in snap["live"] for t in range(1, tid))
        # an earlier trial's file went when its finish was recorded
        assert probe["live_files"] == [f"{tid}.jsonl"]
        lines = [json.loads(x) for x in probe["file"].splitlines()]
        assert [x["epoch"] for x in lines] == list(range(1, epoch + 1))
    assert not (run / "live").exists(), "a finished run left its live folder"
    done = snapshot(run)
    assert done["run"]["status"] == "finished" and done["live"] == {}
    assert all(trial_detail(run, t)["live"] is False for t in final)
    return {int(p["pid"]) for p in seen.values()}


def test_inline_search_shows_each_running_trials_partial_curve(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "inline", "inline", trials=2)
    run = _search(cfg)
    assert _check_mid_trial_views(run, cfg, trials=2) == {os.getpid()}


@pytest.mark.slow  # a spawned pool worker imports torch and loads the data (several seconds)
def test_process_pool_worker_writes_the_live_curve_the_dashboard_reads(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "pool", "process", trials=2)
    run = _search(cfg)
    pids = _check_mid_trial_views(run, cfg, trials=2)
    assert os.getpid() not in pids and len(pids) == 1


def test_a_payload_without_live_or_a_reachable_run_dir_writes_nothing(tmp_path: Path) -> None:
    """``"live"`` is the loop's: a payload without it, or whose run directory is not on this
    machine (a Ray worker on another node), gets no reporter and writes no live file."""
    cfg = parse_config(_cfg(tmp_path, "p", "inline", trials=1, train={"epochs": 1, "lr": 0.1}))
    arch = build_run(cfg, None).space.sample(np.random.default_rng(0))
    base = {"config_json": json.dumps(cfg.model_dump(mode="json")), "arch_json": arch.to_json()}
    gone = tmp_path / "elsewhere" / "run"  # not on this machine
    for extra in (
        {"run_dir": str(tmp_path), "trial_id": 7},
        {"run_dir": str(gone), "live": True, "trial_id": 7},
    ):
        out = evaluate_payload({**base, **extra})
        assert out["ok"], out
    assert not (tmp_path / "live").exists() and not gone.exists()
    probe = Path(cfg.evaluator.options["probe_dir"])
    assert len(list(probe.glob("no-reporter-*.json"))) == 1  # both calls: one pid, one arch


# -- reading a live file ---------------------------------------------------------------------------
def test_torn_and_garbage_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "live" / "3.jsonl"
    rep = LiveCurveReporter(path)
    rep(0, {"val_acc": 0.5, "loss": 1.5})
    with open(path, "ab") as fh:
        fh.write(b"not json\n[1, 2]\n{}\n" + b'{"epoch": true, "val_acc": 0.1}\n')
        fh.write(b'{"epoch": 99999999, "val_acc": 0.1}\n{"epoch": "2"}\n\xff\xfe\n')
        fh.write(b'{"epoch": 2, "val_acc": NaN, "loss": "x", "note": [1]}\n')
    rep(2, {"val_acc": 0.75, "loss": float("nan")})
    with open(path, "ab") as fh:
        fh.write(b'{"epoch": 4, "val_acc": 0.9')  # a writer killed mid-line
    records = read_live(path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[1] == {"epoch": 2}  # its NaN and non-numbers dropped, the epoch kept
    assert records[2]["val_acc"] == 0.75 and records[2]["loss"] is None
    assert live_curve(records) == [0.5, None, 0.75]
    assert read_live(tmp_path / "missing.jsonl") == [] and read_live(tmp_path) == []


def test_reading_is_capped_to_the_newest_lines(tmp_path: Path) -> None:
    path = tmp_path / "1.jsonl"
    with open(path, "w") as fh:
        for e in range(1, 9001):
            fh.write(json.dumps({"epoch": e, "val_acc": e / 9000, "pad": "x" * 20}) + "\n")
    assert path.stat().st_size > MAX_BYTES
    records = read_live(path, max_lines=1000)
    assert len(records) == 1000 and records[-1]["epoch"] == 9000
    assert [r["epoch"] for r in records] == list(range(8001, 9001))


def test_a_stopper_reporter_still_stops_the_trial_and_its_epoch_is_live(tmp_path: Path) -> None:
    cfg = parse_config(_cfg(tmp_path, "stop", "inline", trials=1, evaluator={"kind": "train"}))
    ev = make_evaluator(cfg, None)
    arch = build_run(cfg, None).space.sample(np.random.default_rng(1))

    class Stopper(Reporter):
        def __call__(self, step: int, metrics: dict[str, float]) -> None:
            super().__call__(step, metrics)
            raise StopTrial

    stopper = Stopper()
    path = live_path(tmp_path, 5)
    result = evaluate_with(ev, arch, None, LiveCurveReporter(path, inner=stopper))
    assert result.info["stopped_early"] is True and len(stopper.values) == 1
    assert [r["epoch"] for r in read_live(path)] == [1]


def test_an_evaluator_without_a_reporter_argument_is_called_without_one() -> None:
    class Old:
        def evaluate(self, arch: Arch, budget: Any = None) -> Result:
            return Result({"val_acc": 1.0}, 0.0)

    assert evaluate_with(Old(), Arch({}), None, Reporter()).metrics == {"val_acc": 1.0}


# -- stale files ---------------------------------------------------------------------------------
def test_stale_live_file_of_a_killed_run_is_not_running_and_resume_removes_it(
    tmp_path: Path,
) -> None:
    cfg = _cfg(tmp_path, "stale", "inline", trials=1, train={"epochs": 1, "lr": 0.1})
    run = _search(cfg)
    # what a kill -9 mid-trial leaves: a running row, its live file, a lock nobody holds
    with TrialStore(run / "trials.db") as store:
        tid = store.add_trial(Arch({"stale": 1}))
        store.set_meta("status", "running")
    LiveCurveReporter(live_path(run, tid))(0, {"val_acc": 0.3, "loss": 2.0})
    snap = snapshot(run)
    assert snap["run"]["status"] == "interrupted" and snap["live"] == {}
    assert str(tid) not in snap["curves"]
    detail = trial_detail(run, tid)
    assert detail["live"] is False and detail["curve"] == []
    _search(cfg, resume=True)
    assert not live_path(run, tid).exists()
    assert snapshot(run)["live"] == {}


@pytest.mark.slow  # a real CLI search killed with SIGKILL mid-trial, then resumed
def test_a_real_search_killed_mid_trial_then_resumed(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        "k",
        search="{trials: 1, executor: process, workers: 1}",
        train="{epochs: 12, lr: 0.1}",
        data="{name: digits, limit: 400}",
    )
    run = tmp_path / "runs" / "k"

    def live_epochs() -> int:
        try:
            live = snapshot(run)["live"]
        except StoreError:  # the run directory or its store is not made yet
            return 0
        return max((len(v["epochs"]) for v in live.values()), default=0)

    proc = start_search(cfg)
    try:
        wait_for(lambda: live_epochs() >= 2, what="a running trial's 2 epochs, read live")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_group(proc)
    left = list((run / "live").glob("*.jsonl"))
    assert left, "the killed run left its running trial's live file"
    killed = snapshot(run)
    assert killed["run"]["status"] == "interrupted" and killed["live"] == {}
    assert [t["state"] for t in killed["trials"]] == ["running"]  # as the kill left it
    assert trial_detail(run, 1)["live"] is False
    res = subprocess.run(
        [sys.executable, "-m", "nasforge.cli", "search", str(cfg), "--quiet", "--no-final"]
        + ["--resume"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr
    assert not (run / "live").exists()
    done = snapshot(run)
    assert done["live"] == {} and done["progress"]["complete"] == 1
