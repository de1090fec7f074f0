"""Multi-fidelity rungs that continue instead of retraining (session 23, H6).

A promoted configuration continues from its lower rung's checkpoint: every rung trains on the
top budget's schedule, so continuing ``1 -> 3`` epochs is the run that trains 3 epochs
straight (the differential oracle); its row stores where it started and its cost is the
increment; damaged or mismatched checkpoints fall back to scratch with a log line;
``automl.fidelity.continue_rungs: false`` trains as before; a Hyperband search resumes into
its checkpoints.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

from nasforge.data import load_dataset
from nasforge.errors import ConfigError
from nasforge.evaluators import register_evaluator
from nasforge.evaluators.base import EvaluatorContext, Fidelity, Reporter
from nasforge.evaluators.rung_checkpoint import (
    BUDGET_STARTED_FROM,
    RUNGS_DIR,
    RUNGS_LOG,
    RungCheckpoints,
    RungPolicy,
    fingerprint,
)
from nasforge.evaluators.train import TrainEvaluator
from nasforge.experiment.config import parse_config
from nasforge.experiment.fidelity_view import (
    BUDGET_EPOCHS,
    RUNG,
    discard_finished_rungs,
    rung_start_text,
)
from nasforge.experiment.runner import Experiment
from nasforge.experiment.setup import rung_policy
from nasforge.experiment.store import TrialStore
from nasforge.space import Arch
from nasforge.spaces import create_space
from nasforge.strategies import create_strategy
from nasforge.train import TrainConfig, TrainSpan, train_model

TINY = {"stages": [[8, 1, 1]], "kernels": [3, 5], "expands": [1, 3], "se": [False]}


@pytest.fixture(scope="module")
def digits() -> Any:
    ds = load_dataset("digits", seed=0)  # a smaller train split: fast on a busy host
    return dataclasses.replace(ds, x_train=ds.x_train[:480], y_train=ds.y_train[:480])


@pytest.fixture(scope="module")
def space(digits: Any) -> Any:
    return create_space("mobile", digits.input_shape, digits.num_classes, **TINY)


def _arch(space: Any, seed: int = 0) -> Arch:
    return space.sample(np.random.default_rng(seed))  # type: ignore[no-any-return]


def _evaluator(
    space: Any, digits: Any, run_dir: Path | None, policy: RungPolicy | None, **train: Any
) -> TrainEvaluator:
    cfg = TrainConfig(**{"epochs": 1, "lr": 0.1, **train})
    return TrainEvaluator(space, digits, cfg, None, rungs=policy, run_dir=run_dir)


# -- the training loop: the differential oracle --------------------------------------------------
RECIPES = [
    pytest.param({}, id="sgd-cosine"),
    pytest.param(
        {"optimizer": "adamw", "lr": 0.01, "schedule": "onecycle", "augment": "shift"},
        id="adamw-onecycle-shift",
    ),
    pytest.param({"schedule": "step", "warmup_epochs": 0.5}, id="step-warmup"),
]


@pytest.mark.parametrize("recipe", RECIPES)
def test_continuing_1_to_3_epochs_through_a_checkpoint_equals_3_straight(
    space: Any, digits: Any, tmp_path: Path, one_thread: None, recipe: dict[str, Any]
) -> None:
    arch = _arch(space)
    x, y = digits.x_train[:256], digits.y_train[:256]
    cfg3 = TrainConfig(**{"epochs": 3, "lr": 0.1, "seed": 5, **recipe})
    torch.manual_seed(5)
    straight = space.build(arch)
    train_model(straight, x, y, cfg3, span=TrainSpan(schedule_epochs=3))

    torch.manual_seed(5)
    first = space.build(arch)
    hist = train_model(first, x, y, cfg3.model_copy(update={"epochs": 1}), span=TrainSpan(3))
    assert hist.state is not None and hist.state.epoch == 1
    # through the disk: a fresh process builds a fresh model and loads the checkpoint
    store = RungCheckpoints(tmp_path)
    fp = fingerprint(arch, cfg3, 3, 1.0, len(y))
    store.save(arch.key, first, hist.state, fp)
    torch.randn(1000)  # the process's random stream moved on meanwhile
    start = store.find(arch.key, 3, fp)
    assert start is not None and start.epoch == 1
    torch.manual_seed(123)
    resumed = space.build(arch)
    resumed.load_state_dict(start.model)
    rep = Reporter()
    train_model(resumed, x, y, cfg3, reporter=rep, span=TrainSpan(3, start.state))
    assert [step for step, _ in rep.values] == [1, 2]  # trained the difference only
    want, got = straight.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.allclose(want[k].float(), got[k].float(), atol=1e-6), k
    # the oracle can fail: the lower rung on its own 1-epoch schedule is another run
    torch.manual_seed(5)
    own = space.build(arch)
    train_model(own, x, y, cfg3.model_copy(update={"epochs": 1}))
    train_model(own, x, y, cfg3.model_copy(update={"epochs": 2}))
    assert not all(torch.allclose(want[k].float(), v.float()) for k, v in own.state_dict().items())


def test_a_span_shorter_than_the_epochs_is_refused(space: Any, digits: Any) -> None:
    with pytest.raises(ValueError, match="schedule_epochs"):
        train_model(
            space.build(_arch(space)),
            digits.x_train[:64],
            digits.y_train[:64],
            TrainConfig(epochs=2),
            span=TrainSpan(schedule_epochs=1),
        )


# -- the evaluator -------------------------------------------------------------------------------
def test_promoted_trial_continues_and_stores_where_it_started(
    space: Any, digits: Any, tmp_path: Path, one_thread: None
) -> None:
    arch = _arch(space, 1)
    ev = _evaluator(space, digits, tmp_path / "run", RungPolicy(max_epochs=9))
    low = ev.evaluate(arch, Fidelity(epochs=1))
    assert low.metrics[BUDGET_STARTED_FROM] == 0.0 and low.info["epochs_trained"] == [0, 1]
    store = RungCheckpoints(tmp_path / "run")
    assert store.epochs_saved(arch.key) == [1]
    rep = Reporter()
    mid = ev.evaluate(arch, Fidelity(epochs=3), rep)
    assert mid.metrics[BUDGET_STARTED_FROM] == 1.0
    assert mid.info["epochs_trained"] == [1, 3]
    # the model's whole curve from epoch 1: the checkpoint's epoch, then the two trained now
    assert len(mid.info["curve"]) == 3 and mid.info["curve"][0] == low.info["curve"][0]
    assert [step for step, _ in rep.values] == [1, 2]  # the increment only
    assert mid.metrics["val_acc"] == mid.info["curve"][-1]
    assert store.epochs_saved(arch.key) == [3]  # the lower one was removed
    # the same budget again (a trial re-asked after kill -9 before it was recorded): nothing
    # left to train, the saved weights are scored
    again = ev.evaluate(arch, Fidelity(epochs=3))
    assert again.metrics[BUDGET_STARTED_FROM] == 3.0
    assert again.info["curve"] == mid.info["curve"]  # the checkpoint's epochs, none new
    assert again.metrics["val_acc"] == pytest.approx(mid.metrics["val_acc"])
    # a straight 3-epoch trial of the 9-epoch schedule is the same run
    other = _evaluator(space, digits, tmp_path / "other", RungPolicy(max_epochs=9))
    straight = other.evaluate(arch, Fidelity(epochs=3))
    assert straight.metrics[BUDGET_STARTED_FROM] == 0.0
    assert straight.info["curve"] == pytest.approx(mid.info["curve"], abs=1e-6)
    # the top rung keeps no checkpoint: nothing continues from it
    ev9 = _evaluator(space, digits, tmp_path / "top", RungPolicy(max_epochs=3))
    ev9.evaluate(arch, Fidelity(epochs=1))
    ev9.evaluate(arch, Fidelity(epochs=3))
    assert RungCheckpoints(tmp_path / "top").epochs_saved(arch.key) == []


def test_damaged_or_mismatched_checkpoints_train_from_scratch_with_a_log_line(
    space: Any, digits: Any, tmp_path: Path, one_thread: None
) -> None:
    arch = _arch(space, 2)
    policy = RungPolicy(max_epochs=9)
    ev = _evaluator(space, digits, tmp_path / "run", policy)
    ev.evaluate(arch, Fidelity(epochs=1))
    store = RungCheckpoints(tmp_path / "run")
    path = store.path(arch.key, 1)
    path.write_bytes(path.read_bytes()[:200])  # a torn file
    path.with_name(path.name + ".tmp").write_bytes(b"half")  # kill -9 mid-write
    res = ev.evaluate(arch, Fidelity(epochs=3))
    assert res.metrics[BUDGET_STARTED_FROM] == 0.0 and len(res.info["curve"]) == 3
    log = (tmp_path / "run" / RUNGS_DIR / RUNGS_LOG).read_text()
    assert "e0001.pt" in log and "cannot be read" in log
    assert store.epochs_saved(arch.key) == [3]
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())
    # scratch is the straight run of the same schedule
    fresh = _evaluator(space, digits, tmp_path / "fresh", policy).evaluate(arch, Fidelity(3))
    assert res.info["curve"] == pytest.approx(fresh.info["curve"], abs=1e-6)
    # another data fraction is another run: not continued
    half = ev.evaluate(arch, Fidelity(epochs=3, data_fraction=0.5))
    assert half.metrics[BUDGET_STARTED_FROM] == 0.0
    # a checkpoint of other options (another recipe under the same key) is not continued
    (tmp_path / "run" / RUNGS_DIR / RUNGS_LOG).unlink()
    ev_lr = _evaluator(space, digits, tmp_path / "run", policy, lr=0.02)
    ev.evaluate(arch, Fidelity(epochs=1))
    assert ev_lr.evaluate(arch, Fidelity(epochs=3)).metrics[BUDGET_STARTED_FROM] == 0.0
    assert "other options or data" in (tmp_path / "run" / RUNGS_DIR / RUNGS_LOG).read_text()
    # a checkpoint whose weights do not fit the model (the space builds it otherwise now)
    ev.evaluate(arch, Fidelity(epochs=1))
    saved = torch.load(store.path(arch.key, 1), weights_only=True)
    name = next(iter(saved["model"]))
    saved["model"][name] = torch.zeros(1)
    torch.save(saved, store.path(arch.key, 1))
    res = ev.evaluate(arch, Fidelity(epochs=2))
    assert res.metrics[BUDGET_STARTED_FROM] == 0.0 and len(res.info["curve"]) == 2
    assert "does not fit the model" in (tmp_path / "run" / RUNGS_DIR / RUNGS_LOG).read_text()


def test_continue_rungs_false_and_plain_budgets_train_as_before(
    space: Any, digits: Any, tmp_path: Path, one_thread: None
) -> None:
    arch = _arch(space, 3)
    before = _evaluator(space, digits, None, None).evaluate(arch, Fidelity(epochs=2))
    assert BUDGET_STARTED_FROM not in before.metrics
    off = _evaluator(space, digits, tmp_path, RungPolicy(max_epochs=9, enabled=False))
    off.evaluate(arch, Fidelity(epochs=1))
    res = off.evaluate(arch, Fidelity(epochs=2))
    assert res.metrics[BUDGET_STARTED_FROM] == 0.0
    assert res.info["curve"] == before.info["curve"]  # its own 2-epoch schedule, as before
    assert not (tmp_path / RUNGS_DIR).exists()
    # a plain number of epochs (not a multi-fidelity budget) is never a rung
    on = _evaluator(space, digits, tmp_path, RungPolicy(max_epochs=9))
    assert on.evaluate(arch, 2).info["curve"] == before.info["curve"]
    assert not (tmp_path / RUNGS_DIR).exists()


# -- the config ----------------------------------------------------------------------------------
def _config(strategy: dict[str, Any], **sections: Any) -> Any:
    base = {
        "name": "mf",
        "data": {"name": "digits"},
        "space": {"name": "mobile", "options": TINY},
        "strategy": strategy,
        "train": {"epochs": 4},
        **sections,
    }
    return parse_config(base)


def test_the_config_switch_and_the_policy_it_gives() -> None:
    hb = {"name": "hyperband", "options": {"min_epochs": 1, "max_epochs": 9}}
    assert rung_policy(_config(hb)) == RungPolicy(max_epochs=9, enabled=True)
    assert rung_policy(_config({"name": "asha"})) == RungPolicy(max_epochs=4)  # train.epochs
    off = _config(hb, automl={"fidelity": {"continue_rungs": False}})
    assert rung_policy(off) == RungPolicy(max_epochs=9, enabled=False)
    assert rung_policy(_config({"name": "random"})) is None
    with pytest.raises(ConfigError, match="automl.fidelity"):
        _config(hb, automl={"fidelity": {"continue_rung": False}})
    assert rung_start_text({BUDGET_STARTED_FROM: 3.0, RUNG: 1.0}) == ", from epoch 3"
    assert rung_start_text({BUDGET_STARTED_FROM: 0.0, RUNG: 1.0}) == ", from scratch"
    assert rung_start_text({BUDGET_STARTED_FROM: 0.0, RUNG: 0.0}) == ""


def test_checkpoints_of_finished_configurations_are_discarded(space: Any, tmp_path: Path) -> None:
    hb = create_strategy("asha", space, seed=0, min_epochs=1, max_epochs=9, eta=3)
    store = RungCheckpoints(tmp_path)
    requests = [hb.ask_trial() for _ in range(3)]
    for r in requests:
        assert r is not None
        (store.root / r.arch.key).mkdir(parents=True)
        (store.root / r.arch.key / "e0001.pt").write_bytes(b"x")
    for r, score in zip(requests, (0.1, 0.9, 0.5), strict=True):
        hb.tell_trial(r, score)
    live = hb.live_keys()
    assert live is not None and 0 < len(live) < 3  # promoted ones stay open
    assert discard_finished_rungs(tmp_path, hb) == 3 - len(live)
    assert {p.name for p in store.root.iterdir()} == live


# -- end to end ----------------------------------------------------------------------------------
def _continuing_train(context: EvaluatorContext, **options: Any) -> TrainEvaluator:
    """``evaluator.kind: train`` with rung continuation (max 3 epochs): the config's own
    switch reaches the train evaluator through the experiment's context where it is wired;
    this registration tests the evaluator inside the real loop either way."""
    policy = getattr(context, "rungs", None) or RungPolicy(max_epochs=3)
    assert context.dataset is not None
    return TrainEvaluator(
        context.space, context.dataset, context.train, None, rungs=policy, run_dir=context.run_dir
    )


register_evaluator("train_rungs_test", _continuing_train, "tests: train with rung checkpoints")


def _hb(tmp_path: Path, trials: int) -> Any:
    return parse_config(
        {
            "name": "hb",
            "runs_dir": str(tmp_path / "runs"),
            "data": {"name": "digits"},
            "space": {"name": "mobile", "options": TINY},
            "evaluator": {"kind": "train_rungs_test"},
            "search": {"trials": trials, "executor": "inline"},
            "train": {"epochs": 3, "lr": 0.1},
            "strategy": {"name": "hyperband", "options": {"min_epochs": 1, "max_epochs": 3}},
            "objective": {"kind": "accuracy"},
            "latency": {"mode": "flops"},
        }
    )


def _rows(run_dir: Path) -> list[Any]:
    with TrialStore(run_dir / "trials.db", create=False) as s:
        return s.trials()


def _run(cfg: Any, run_dir: Path, resume: bool = False) -> None:
    Experiment(cfg, run_dir, console=Console(quiet=True), progress=False).run(
        resume=resume, final=False
    )


@pytest.mark.slow  # two tiny Hyperband searches that train (~20-40 s on a busy host)
def test_hyperband_search_continues_promoted_configs_and_resumes_into_its_checkpoints(
    tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nasforge.experiment import report

    monkeypatch.setattr(report, "write_report", lambda *a, **k: None)  # plots: not under test
    # ladder [1, 3]; bracket 0: three configs at 1 epoch, the best continues to 3
    _run(_hb(tmp_path, 4), tmp_path / "whole")
    whole = _rows(tmp_path / "whole")
    promoted = [t for t in whole if t.metrics[RUNG] == 1.0]
    assert len(promoted) == 1 and promoted[0].metrics[BUDGET_EPOCHS] == 3.0
    assert promoted[0].metrics[BUDGET_STARTED_FROM] == 1.0
    assert all(t.metrics[BUDGET_STARTED_FROM] == 0.0 for t in whole if t.metrics[RUNG] == 0)
    # stopped after rung 0, resumed in a new evaluator: it finds rung 0's checkpoint
    _run(_hb(tmp_path, 3), tmp_path / "part")
    _run(_hb(tmp_path, 4), tmp_path / "part", resume=True)
    part = _rows(tmp_path / "part")

    def seen(rows: list[Any]) -> list[tuple[str, float, float]]:
        return [(t.key, t.metrics["val_acc"], t.metrics[BUDGET_STARTED_FROM]) for t in rows]

    assert seen(part) == seen(whole)  # continuation is exact, resumed or not
    assert part[-1].metrics[BUDGET_STARTED_FROM] == 1.0


WIRED = "rungs" in {f.name for f in dataclasses.fields(EvaluatorContext)}


@pytest.mark.slow  # two tiny successive-halving searches that train
@pytest.mark.skipif(not WIRED, reason="the experiment does not hand the rung policy yet")
@pytest.mark.parametrize("continue_rungs", [True, False])
def test_the_config_switch_reaches_the_train_evaluator(
    tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch, continue_rungs: bool
) -> None:
    from nasforge.experiment import report

    monkeypatch.setattr(report, "write_report", lambda *a, **k: None)
    cfg = _hb(tmp_path, 4).model_dump(mode="json")
    cfg["evaluator"] = {"kind": "train"}
    cfg["strategy"] = {"name": "sh", "options": {"n_configs": 3, "min_epochs": 1, "max_epochs": 3}}
    cfg["automl"] = {"fidelity": {"continue_rungs": continue_rungs}}
    _run(parse_config(cfg), tmp_path / "sh")
    rows = _rows(tmp_path / "sh")
    top = [t for t in rows if t.metrics[RUNG] == 1.0]
    assert len(top) == 1 and top[0].metrics[BUDGET_STARTED_FROM] == float(continue_rungs)
    log = (tmp_path / "sh" / "progress.log").read_text()
    assert ("from epoch 1" in log) == continue_rungs
