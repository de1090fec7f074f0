"""`nasforge ofa train` (Once-for-All, the training side of the product) on a small mnist1d:
bad `ofa:` fields are refused naming the field (exit 2); a training writes the run directory
(config, store records per epoch with their phase names, atomic checkpoints, final weights,
CPU seconds, progress lines); Ctrl-C stops it with the resume command, and a resumed training
(after Ctrl-C, or after `kill -9` of a real process) ends with the weights of an uninterrupted
one; `nasforge search` refuses an `ofa:` config; `ofa list` on a run without specialisations
says so; doctor warns about a schedule that makes nothing elastic. Small sizes; no timing or
accuracy is asserted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from runproc import kill_group, wait_for
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.errors import ConfigError
from nasforge.experiment.config import load_config, parse_config
from nasforge.experiment.doctor import diagnose
from nasforge.experiment.interrupt import SearchInterrupted
from nasforge.experiment.ofa_run import OFA_META, final_path, load_final_weights, train_ofa
from nasforge.experiment.oneshot_run import checkpoints
from nasforge.experiment.setup import make_dataset, make_space
from nasforge.experiment.store import TrialStore
from nasforge.oneshot.ofa import train as ofa_train
from nasforge.oneshot.ofa.train import OFATrainer
from nasforge.spaces.mobile import MobileSpace

runner = CliRunner()

SPACE = {
    "name": "mobile",
    "options": {
        "stages": [[8, 1, 2], [12, 2, 2]],
        "kernels": [3, 5],
        "expands": [2, 3],
        "widths": [0.5, 1.0],
        "se": [False],
        "activations": ["relu"],
        "stem_channels": 8,
        "head_features": 16,
    },
}
PHASES = [
    {"name": "full", "epochs": 1},
    {"name": "kernel", "elastic": ["kernel"], "epochs": 1},
    {"name": "depth", "elastic": ["kernel", "depth"], "epochs": 1},
    {"name": "expand", "elastic": ["kernel", "depth", "expand", "width"], "epochs": 1},
]
STAGES = [p["name"] for p in PHASES]


def config(
    tmp_path: Path,
    name: str,
    samples: int = 400,
    phases: list[dict[str, Any]] | None = None,
    **ofa: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "runs_dir": str(tmp_path / "runs"),
        "data": {"name": "mnist1d", "samples": samples},
        "space": SPACE,
        "ofa": {"train": {"batch_size": 32, "phases": phases or PHASES, **ofa}},
        "latency": {"threads": 1},
    }


def write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-7), key
        else:
            assert torch.equal(a[key], b[key]), key


# -- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ofa", "sections", "message"),
    [
        ({"train": {"batch_sise": 8}}, {}, "ofa.train.batch_sise: unknown field; did you mean"),
        ({"train": {"epochs": 3}}, {}, "ofa.train.epochs: unknown field; 'epochs' is set per"),
        ({"train": {"optimizer": "adam"}}, {}, "ofa.train.optimizer:"),
        ({"train": {"phases": []}}, {}, "ofa.train.phases:"),
        (
            {"train": {"phases": [{"name": "full", "epocs": 1}]}},
            {},
            "ofa.train.phases: phases[0] ('full').epocs: unknown field; did you mean 'epochs'?",
        ),
        (
            {"train": {"phases": [{"name": "k", "elastic": ["kernal"], "epochs": 1}]}},
            {},
            "ofa.train.phases: phases[0] ('k').elastic",
        ),
        (
            {"train": {"phases": [{"name": "k", "epochs": -1}]}},
            {},
            "ofa.train.phases: phases[0] ('k').epochs:",
        ),
        ({"specialize": {"sampels": 50}}, {}, "ofa.specialize.sampels: unknown field; did you"),
        ({"specialize": {"objective": "lim"}}, {}, "ofa.specialize.objective:"),
        ({"trian": {}}, {}, "ofa.trian: unknown field; did you mean 'train'?"),
        ({}, {"space": {"name": "nb201"}}, "space.name: Once-for-All"),
        ({}, {"oneshot": {"method": "spos"}}, "oneshot.method: a config has either"),
    ],
)
def test_config_errors_name_the_field(
    tmp_path: Path, ofa: dict[str, Any], sections: dict[str, Any], message: str
) -> None:
    raw = {**config(tmp_path, "bad"), "ofa": ofa, **sections}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert message in str(err.value)


def test_cli_refuses_a_bad_ofa_field_with_exit_2(tmp_path: Path) -> None:
    raw = config(tmp_path, "bad")
    raw["ofa"]["specialize"] = {"evaluatons": 10}
    path = write(tmp_path, raw)
    for command in (["ofa", "train"], ["search"], ["doctor"]):
        res = runner.invoke(app, [*command, str(path)])
        assert res.exit_code == 2, res.output
        assert "ofa.specialize.evaluatons: unknown field; did you mean 'evaluations'?" in (
            " ".join(res.output.split())
        )
        assert "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()


def test_search_refuses_an_ofa_config(tmp_path: Path) -> None:
    path = write(tmp_path, config(tmp_path, "s"))
    res = runner.invoke(app, ["search", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"nasforge ofa train {path}" in " ".join(res.output.split())
    assert not (tmp_path / "runs").exists()


def test_doctor_warns_when_nothing_is_elastic(tmp_path: Path) -> None:
    fixed = config(tmp_path, "d", phases=[{"name": "full", "epochs": 2}])
    found = [f for f in diagnose(parse_config(fixed), build=False) if f.field.startswith("ofa")]
    assert [(f.level, f.field) for f in found] == [("warning", "ofa.train.phases")]
    assert "every latency target gets the same answer" in found[0].message
    shrinking = [f for f in diagnose(parse_config(config(tmp_path, "e"))) if f.level != "info"]
    assert shrinking == []  # the trial loop's budget is not judged for an ofa: config


# -- training ------------------------------------------------------------------------------------
def test_ofa_train_writes_the_run(tmp_path: Path) -> None:
    path = write(tmp_path, config(tmp_path, "t"))
    res = runner.invoke(app, ["ofa", "train", str(path), "--quiet"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "t"
    assert "ofa: supernet trained, 4 epochs (full 1, kernel 1, depth 1, expand 1)" in " ".join(
        res.output.split()
    )
    assert load_config(run / "config.yaml") == load_config(path)  # the config as run
    with TrialStore(run / "trials.db", create=False) as store:
        records = store.epochs("ofa")
        meta = store.get_meta(OFA_META)
        status = store.get_meta("status")
        assert store.count() == 0  # a training records epochs, no trials
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [r["stage"] for r in records] == STAGES
    assert [r["elastic"] for r in records] == [p.get("elastic", []) for p in PHASES]
    assert records[0]["subnets"] == 0 and all(r["subnets"] > 0 for r in records[1:])
    assert all(r["cpu_seconds"] > 0 and r["steps"] > 0 for r in records)
    assert status == "done" and meta["done"] is True and meta["epochs"] == 4
    assert meta["cpu_seconds"] == pytest.approx(sum(r["cpu_seconds"] for r in records))
    assert meta["final"] == "supernet/final.pt" and meta["total_epochs"] == 4
    # one checkpoint per epoch (the trainer's whole state), then the weights alone
    assert [e for e, _ in checkpoints(run)] == [1, 2, 3, 4]
    last = torch.load(run / "supernet" / "epoch_0004.pt", weights_only=True)
    assert last["epoch"] == 4 and len(last["records"]) == 4
    assert not list((run / "supernet").glob("*.tmp"))
    weights = load_final_weights(run)
    weights_equal(weights, last["supernet"])
    cfg = load_config(run / "config.yaml")
    dataset, section = make_dataset(cfg), cfg.ofa
    space = make_space(cfg, dataset)
    assert isinstance(space, MobileSpace) and section is not None
    trainer = OFATrainer(space, dataset, section.train_config(cfg.seed))
    trainer.supernet.load_state_dict(weights)  # what `ofa specialize` loads
    assert 0.0 <= trainer.accuracy(trainer.largest) <= 1.0
    log = (run / "progress.log").read_text()
    for i, name in enumerate(STAGES, start=1):
        assert f"ofa epoch {i}/4 phase {name} (" in log
    assert "ofa: supernet trained" in log
    # a second training of the same name is refused; nothing was specialised yet
    res = runner.invoke(app, ["ofa", "train", str(path), "--quiet"])
    assert res.exit_code == 2 and "pass --resume" in res.output
    res = runner.invoke(app, ["ofa", "list", str(run)])
    assert res.exit_code == 0 and "no specialisations in" in " ".join(res.output.split())
    res = runner.invoke(app, ["ofa", "list", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not a run directory" in res.output


def test_specialize_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    raw = config(tmp_path, "sp", phases=[{"name": "full", "epochs": 0}])
    run = tmp_path / "runs" / "sp"
    cases = [
        ([str(tmp_path / "nothing"), "--target-ms", "1"], "not a run directory"),
        ([str(run), "--target-ms", "0"], "--target-ms: must be a positive number"),
        ([str(run), "--target-ms", "nan"], "--target-ms: must be a positive number"),
        ([str(run), "--target-ms", "1", "--batch-size", "0"], "--batch-size: must be >= 1"),
        ([str(run), "--target-ms", "1", "--finetune-epochs", "-1"], "--finetune-epochs:"),
        ([str(run), "--target-ms", "1", "--table", str(tmp_path / "t.json")], "--table:"),
    ]
    train_ofa(parse_config(raw), progress=False)  # 0 epochs: an untrained supernet, on purpose
    for args, message in cases:
        res = runner.invoke(app, ["ofa", "specialize", *args])
        assert res.exit_code == 2, (args, res.output)
        assert message in " ".join(res.output.split()) and "Traceback" not in res.output
    final_path(run).unlink()  # a training that never finished
    res = runner.invoke(app, ["ofa", "specialize", str(run), "--target-ms", "1"])
    assert res.exit_code == 2 and "--resume" in res.output and "Traceback" not in res.output


def test_ctrl_c_then_resume_ends_like_an_uninterrupted_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train_ofa(parse_config(config(tmp_path, "whole")), progress=False)
    assert whole.epochs == 4 and whole.resumed_from is None
    reference = load_final_weights(whole.run_dir)

    step_epoch = ofa_train.OFATrainer.step_epoch

    def ctrl_c_at_epoch_2(self: OFATrainer) -> ofa_train.OFAEpochRecord:
        if self.epoch == 2:
            raise SearchInterrupted(signal.SIGINT)
        return step_epoch(self)

    raw = config(tmp_path, "stopped")
    monkeypatch.setattr(ofa_train.OFATrainer, "step_epoch", ctrl_c_at_epoch_2)
    with pytest.raises(SearchInterrupted) as stop:
        train_ofa(parse_config(raw), progress=False)
    run = tmp_path / "runs" / "stopped"
    assert "continue with: nasforge ofa train" in stop.value.message
    assert f"{run / 'config.yaml'} --resume" in stop.value.message
    assert not final_path(run).exists() and [e for e, _ in checkpoints(run)] == [1, 2]
    with TrialStore(run / "trials.db", create=False) as store:
        assert store.get_meta("status") == "interrupted"
    monkeypatch.setattr(ofa_train.OFATrainer, "step_epoch", step_epoch)
    resumed = train_ofa(parse_config(raw), resume=True, progress=False)
    assert resumed.resumed_from == 2 and resumed.epochs == 4
    assert "ofa: resumed from" in (run / "progress.log").read_text()
    weights_equal(load_final_weights(run), reference)
    with (
        TrialStore(run / "trials.db", create=False) as a,
        TrialStore(whole.run_dir / "trials.db", create=False) as b,
    ):
        got, want = a.epochs("ofa"), b.epochs("ofa")
    assert [r["stage"] for r in got] == STAGES
    for x, y in zip(got, want, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["epoch"]


def test_resume_refuses_a_changed_training(tmp_path: Path) -> None:
    raw = config(tmp_path, "c", phases=[{"name": "full", "epochs": 1}])
    train_ofa(parse_config(raw), progress=False)
    changed = config(tmp_path, "c", phases=[{"name": "full", "epochs": 2}])
    with pytest.raises(ConfigError, match="differs from the one this run started with"):
        train_ofa(parse_config(changed), resume=True, progress=False)
    # the specialisation settings may change: they do not change what was trained
    same = {**raw, "ofa": {**raw["ofa"], "specialize": {"samples": 20}}}
    assert train_ofa(parse_config(same), resume=True, progress=False).epochs == 1
    with pytest.raises(ConfigError, match="nothing to resume"):
        train_ofa(parse_config(config(tmp_path, "new")), resume=True, progress=False)


@pytest.mark.slow  # three processes' start-up plus a few epochs (about a minute when busy)
def test_kill_9_then_resume_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    phases = [
        {"name": "full", "epochs": 4},
        {"name": "kernel", "elastic": ["kernel"], "epochs": 4},
        {"name": "expand", "elastic": ["kernel", "depth", "expand", "width"], "epochs": 4},
    ]
    raw = config(tmp_path, "k", samples=1200, phases=phases)
    path = write(tmp_path, raw)
    run = tmp_path / "runs" / "k"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasforge.cli", "ofa", "train", str(path), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(checkpoints(run)) >= 2, what="two OFA checkpoints")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_group(proc)
    last = checkpoints(run)[-1][0]
    assert 2 <= last < 12 and not final_path(run).exists(), "finished before it was killed"
    res = runner.invoke(app, ["ofa", "train", str(path), "--quiet", "--resume"])
    assert res.exit_code == 0, res.output
    log = (run / "progress.log").read_text()
    assert f"ofa: resumed from {run / 'supernet' / f'epoch_{last:04d}.pt'}" in log
    with TrialStore(run / "trials.db", create=False) as store:
        assert [r["epoch"] for r in store.epochs("ofa")] == list(range(1, 13))
    assert [e for e, _ in checkpoints(run)] == list(range(1, 13))
    whole = train_ofa(parse_config(config(tmp_path, "whole", 1200, phases)), progress=False)
    weights_equal(load_final_weights(run), load_final_weights(whole.run_dir))


@pytest.mark.slow  # builds a small latency table and measures the subnet (about a minute)
def test_specialize_then_list(tmp_path: Path) -> None:
    raw = config(tmp_path, "l")
    raw["ofa"]["specialize"] = {"samples": 16, "evaluations": 100}
    path = write(tmp_path, raw)
    run = tmp_path / "runs" / "l"
    assert runner.invoke(app, ["ofa", "train", str(path), "--quiet"]).exit_code == 0
    res = runner.invoke(
        app,
        ["ofa", "specialize", str(run), "--target-ms", "5", "--backend", "torch", "--name", "t5"],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["ofa", "list", str(run)])
    assert res.exit_code == 0, res.output
    assert "1 specialisation(s)" in res.output
    row = next(line for line in res.output.splitlines() if "t5" in line)
    assert "5.000" in row  # the target, then predicted and measured latency and accuracies
