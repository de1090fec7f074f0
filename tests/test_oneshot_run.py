"""Weight-sharing search through `nasforge search` (the ``oneshot:`` section) on `digits`:
config errors name the field; a DARTS run records every epoch and checkpoint, derives one arch,
records it as a trial and retrains it (best/); `kill -9` then `--resume` continues from the
last checkpoint to the records an uninterrupted run writes; a single-path supernet is trained
once and the trials are scored on it without training again; doctor flags plain DARTS unless
the config says `regularization: none`. Small sizes; no timing or accuracy is asserted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from runproc import kill_group, wait_for
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.errors import ConfigError
from nasforge.experiment.config import parse_config
from nasforge.experiment.doctor import diagnose
from nasforge.experiment.oneshot_run import checkpoints
from nasforge.experiment.runner import Experiment
from nasforge.experiment.store import TrialStore
from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.entries import ENTRY_TIMING
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import LatencyTable
from nasforge.oneshot import spos
from nasforge.spaces import create_space

runner = CliRunner()

SPACE_OPTIONS = {"C": 4, "N": 1}
SPACE = {"name": "nb201", "options": SPACE_OPTIONS}
DARTS_SMALL = {
    "epochs": 3,
    "steps_per_epoch": 2,
    "batch_size": 32,
    "channels": 4,
    "hessian_iters": 2,
    "eval_batches": 1,
    "alpha_lr": 0.05,
}


def config(tmp_path: Path, name: str, oneshot: dict[str, Any], **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "runs_dir": str(tmp_path / "runs"),
        "data": {"name": "digits"},
        "space": SPACE,
        "oneshot": oneshot,
        "search": {"trials": 3, "executor": "inline"},
        "strategy": {"name": "random"},
        "train": {"batch_size": 32, "lr": 0.05},
        "objective": {"kind": "accuracy"},
        "latency": {"mode": "flops", "repeats": 3, "warmup": 1},
        "final": {"epochs": 1},
    }
    cfg.update(sections)
    return cfg


def write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def darts(**options: Any) -> dict[str, Any]:
    return {"method": "darts", "options": {**DARTS_SMALL, **options}}


# -- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("oneshot", "sections", "field"),
    [
        (darts(epocs=2), {}, "oneshot.options.epocs: unknown field; did you mean 'epochs'?"),
        (darts(epochs=0), {}, "oneshot.options.epochs: must be >= 1"),
        (darts(order="two"), {}, "oneshot.options.order:"),
        (darts(regularization="bogus"), {}, "oneshot.options.regularization:"),
        (darts(regularizers={"beta_lamda": 1}), {}, "oneshot.options.regularizers.beta_lamda"),
        (darts(latency_penalty=0.1), {}, "oneshot.options.latency_penalty: latency-aware"),
        (darts(latency_limit_ms=1.0), {}, "oneshot.options.latency_limit_ms: latency-aware"),
        (darts(), {"space": {"name": "mobile"}}, "oneshot.method: 'darts' searches"),
        ({"method": "dart"}, {}, "oneshot.method:"),
        ({"metod": "darts"}, {}, "oneshot.metod: unknown field; did you mean 'method'?"),
        ({"method": "spos", "options": {"samplng": "fair"}}, {}, "oneshot.options.samplng"),
        ({"method": "spos", "options": {"sampling": "fai"}}, {}, "oneshot.options.sampling"),
        ({"method": "spos"}, {"evaluator": {"kind": "train"}}, "evaluator.kind: oneshot.method"),
        (
            {"method": "spos"},
            {"evaluator": {"options": {"epochs": 1}}},
            "evaluator.options: with oneshot.method 'spos'",
        ),
    ],
)
def test_config_errors_name_the_field(
    tmp_path: Path, oneshot: dict[str, Any], sections: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config(tmp_path, "bad", oneshot, **sections))
    assert field in str(err.value)


def test_cli_refuses_a_bad_oneshot_field_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, config(tmp_path, "bad", darts(epocs=2)))
    for command in ("search", "doctor"):
        res = runner.invoke(app, [command, str(path)])
        assert res.exit_code == 2, res.output
        assert "oneshot.options.epocs" in res.output and "Traceback" not in res.output


def test_spos_selects_the_supernet_evaluator_and_saved_config_reloads(tmp_path: Path) -> None:
    cfg = parse_config(config(tmp_path, "s", {"method": "spos", "options": {"epochs": 1}}))
    assert cfg.evaluator.kind == "supernet"
    again = parse_config(yaml.safe_load(cfg.to_yaml()))  # config.yaml as a run saves it
    assert again == cfg


# -- DARTS ---------------------------------------------------------------------------------------
def test_darts_run_records_epochs_checkpoints_derived_trial_and_best(tmp_path: Path) -> None:
    path = write(tmp_path, config(tmp_path, "d", darts()))
    res = runner.invoke(app, ["search", str(path), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "darts search cost:" in res.output  # the phase's CPU seconds, in the summary
    run = tmp_path / "runs" / "d"
    with TrialStore(run / "trials.db", create=False) as store:
        epochs = store.epochs("darts")
        trials = store.trials()
        meta = store.get_meta("oneshot")
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for rec in epochs:
        for key in ("val_acc", "skip_count", "entropy", "hessian_eigenvalue", "arch", "cells"):
            assert key in rec, key
        assert rec["regularization"] == ["beta"]  # regularised by default
    # one checkpoint per epoch, loadable without running code, the last one the final state
    assert [e for e, _ in checkpoints(run)] == [1, 2, 3]
    state = torch.load(run / "supernet" / "epoch_0003.pt", weights_only=True)
    assert state["epoch"] == 3 and len(state["history"]) == 3
    # the derived arch is the run's one trial, and the final step retrained it
    assert len(trials) == 1 and trials[0].state == "complete"
    derived = trials[0]
    assert derived.metrics["val_acc"] == epochs[-1]["val_acc"]
    assert "mflops" in derived.metrics and derived.metrics["supernet_epochs"] == 3
    assert derived.cost_seconds > 0 and meta["cpu_seconds"] == pytest.approx(derived.cost_seconds)
    assert meta["method"] == "darts" and meta["in_trial_costs"] is True
    card = json.loads((run / "best" / "card.json").read_text())
    assert card["trial_id"] == derived.id and card["arch"] == derived.arch.to_dict()
    assert 0.0 <= card["test_acc"] <= 1.0 and (run / "best" / "model.onnx").is_file()
    log = (run / "progress.log").read_text()
    assert "darts epoch 3/3: val_acc" in log and "darts: derived" in log
    assert (run / "report.html").is_file()
    res = runner.invoke(app, ["show", str(run)])
    assert res.exit_code == 0 and "Traceback" not in res.output
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "exp")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "exp" / "model.onnx").is_file()


def test_darts_kill_9_then_resume_continues_from_the_last_checkpoint(tmp_path: Path) -> None:
    epochs = 15
    path = write(tmp_path, config(tmp_path, "k", darts(epochs=epochs)))
    run = tmp_path / "runs" / "k"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasforge.cli", "search", str(path), "--quiet", "--no-final"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(checkpoints(run)) >= 2, what="two DARTS checkpoints")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_group(proc)
    last = checkpoints(run)[-1][0]
    assert 2 <= last < epochs, "the run finished before it could be killed"
    res = runner.invoke(app, ["search", str(path), "--quiet", "--resume", "--no-final"])
    assert res.exit_code == 0, res.output
    log = (run / "progress.log").read_text()
    assert f"darts: resumed from {run / 'supernet' / f'epoch_{last:04d}.pt'}" in log
    with TrialStore(run / "trials.db", create=False) as store:
        resumed = store.epochs("darts")
        derived = store.trials(("complete",))
    assert [r["epoch"] for r in resumed] == list(range(1, epochs + 1))
    assert [e for e, _ in checkpoints(run)] == list(range(1, epochs + 1))
    assert len(derived) == 1
    # the same search uninterrupted writes the same records and derives the same arch
    whole = config(tmp_path, "whole", darts(epochs=epochs))
    Experiment(parse_config(whole), progress=False).run(final=False)
    with TrialStore(tmp_path / "runs" / "whole" / "trials.db", create=False) as store:
        reference = store.epochs("darts")
        ref_arch = store.trials(("complete",))[0].arch
    for a, b in zip(resumed, reference):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5), a["epoch"]
        assert a["arch"] == b["arch"], a["epoch"]
    assert derived[0].arch == ref_arch


@pytest.fixture(scope="module")
def nb201_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A latency table of the test space, measured here (few repeats: the wiring is tested,
    not the table's accuracy)."""
    space = create_space("nb201", (1, 8, 8), 10, **SPACE_OPTIONS)
    path = tmp_path_factory.mktemp("table") / "nb201.json"
    timing = replace(ENTRY_TIMING, repeats=5, warmup=1)
    build = BuildConfig(calibration_archs=2, held_out_archs=0, timing=timing)
    TableBuilder(space, "torch", 1, build, progress=False).build(path)
    return path


@pytest.mark.filterwarnings("ignore::nasforge.hardware.trust.UntrustedTableWarning")
@pytest.mark.parametrize("mode", ["predict", "measure"])  # the table: the model's, or its file
def test_latency_aware_darts_derives_under_the_limit_of_the_runs_table(
    tmp_path: Path, nb201_table: Path, mode: str
) -> None:
    space = create_space("nb201", (1, 8, 8), 10, **SPACE_OPTIONS)
    predictor = LatencyPredictor(LatencyTable.load(nb201_table), space)
    cheap = predictor.predict(space.make(dict.fromkeys(space.labels(), "skip_connect")))
    dear = predictor.predict(space.make(dict.fromkeys(space.labels(), "nor_conv_3x3")))
    limit = (cheap + dear) / 2
    latency = {"mode": mode, "table": str(nb201_table), "allow_untrusted_table": True}
    raw = config(
        tmp_path,
        "lat",
        darts(epochs=2, latency_penalty=1.0, latency_limit_ms=limit),
        latency={**latency, "repeats": 3, "warmup": 1},
    )
    Experiment(parse_config(raw), progress=False).run(final=False)
    with TrialStore(tmp_path / "runs" / "lat" / "trials.db", create=False) as store:
        records = store.epochs("darts")
        (derived,) = store.trials()
    assert all(r["expected_latency_ms"] > 0 and "derived_latency_ms" in r for r in records)
    assert derived.metrics["predicted_latency_ms"] <= limit
    assert derived.metrics["predicted_latency_ms"] == pytest.approx(predictor.predict(derived.arch))


# -- single-path supernet ------------------------------------------------------------------------
def test_spos_trains_the_supernet_once_and_trials_load_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    step_epoch = spos.SupernetTrainer.step_epoch

    def counted(self: spos.SupernetTrainer) -> spos.EpochRecord:
        calls.append(self.epoch)
        return step_epoch(self)

    monkeypatch.setattr(spos.SupernetTrainer, "step_epoch", counted)
    oneshot = {"method": "spos", "options": {"sampling": "fair", "epochs": 2}}
    raw = config(tmp_path, "s", oneshot)
    Experiment(parse_config(raw), progress=False).run()
    run = tmp_path / "runs" / "s"
    # the trials ran in this process (inline) and loaded the supernet: 2 epochs trained in all
    assert calls == [0, 1]
    with TrialStore(run / "trials.db", create=False) as store:
        records = store.epochs("supernet")
        trials = store.trials()
        meta = store.get_meta("oneshot")
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["sampling"] == "fair" and r["cpu_seconds"] >= 0 for r in records)
    assert len(trials) == 3 and all(t.state == "complete" for t in trials)
    assert all(0.0 <= t.metrics["val_acc"] <= 1.0 for t in trials)
    assert meta["in_trial_costs"] is False and meta["checkpoint"] == "supernet/epoch_0002.pt"
    assert meta["cpu_seconds"] > 0
    assert [e for e, _ in checkpoints(run)] == [1, 2] and not (run / "supernet.pt").exists()
    assert (run / "best" / "card.json").is_file()
    # the search cost counts the supernet once, beside the trials' own costs
    report = json.loads((run / "report.json").read_text())
    trial_costs = sum(t.cost_seconds for t in trials)
    expected = trial_costs + meta["cpu_seconds"]
    assert report["search_cost"]["device_seconds"] == pytest.approx(expected, abs=0.1)
    # a resumed run with a larger budget scores more trials on the same supernet
    more = parse_config({**raw, "search": {"trials": 5, "executor": "inline"}})
    Experiment(more, progress=False).run(resume=True, final=False)
    assert calls == [0, 1]
    with TrialStore(run / "trials.db", create=False) as store:
        assert store.count(("complete",)) == 5 and len(store.epochs("supernet")) == 2


# -- doctor --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "flagged"),
    [
        ({}, False),  # the default is regularised
        ({"regularization": "none"}, False),  # plain DARTS on purpose
        ({"regularization": []}, True),
        ({"regularization": ["beta"], "regularizers": {"beta_lambda": 0}}, True),
        ({"regularization": ["darts_minus"], "regularizers": {"aux_skip": 0}}, True),
    ],
)
def test_doctor_flags_plain_darts_unless_on_purpose(
    tmp_path: Path, options: dict[str, Any], flagged: bool
) -> None:
    cfg = parse_config(config(tmp_path, "doc", darts(**options)))
    found = [f for f in diagnose(cfg, build=False) if f.field == "oneshot.options.regularization"]
    warned = [f for f in found if f.level == "warning"]
    assert bool(warned) == flagged, found
    if flagged:
        assert "regularization: none" in warned[0].message
    if options.get("regularization") == "none":
        assert [f.level for f in found] == ["info"]


def test_doctor_cli_on_plain_darts_warns_but_exits_0(tmp_path: Path) -> None:
    path = write(tmp_path, config(tmp_path, "doc", darts(regularization=[])))
    res = runner.invoke(app, ["doctor", str(path)])
    assert res.exit_code == 0, res.output
    assert "warning oneshot.options.regularization: this runs plain DARTS" in " ".join(
        res.output.split()
    )
