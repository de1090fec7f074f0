"""Multi-fidelity searches through the experiment loop (issue 15): budgets in the payload, the
rung in every row, no (arch, budget) paid twice, resume after ``kill -9``, executors, and the
train evaluator's budget (epochs, a stratified fraction of the data).

``ToyHalving`` below is a minimal synchronous successive-halving
:class:`~nasforge.strategies.fidelity_base.FidelityStrategy`, so the loop is tested on its
own; the registered strategies (``asha`` ...) are run through the loop too where present.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console

from nasforge.data import load_dataset
from nasforge.evaluators import register_evaluator
from nasforge.evaluators.base import Evaluator, Fidelity, Reporter, Result
from nasforge.evaluators.train import TrainEvaluator, stratified_subset
from nasforge.experiment.config import parse_config
from nasforge.experiment.fidelity_view import BUDGET_EPOCHS, BUDGET_FRACTION, RUNG, full_fidelity
from nasforge.experiment.loop import request_of
from nasforge.experiment.runner import Experiment
from nasforge.experiment.store import TrialStore
from nasforge.space import Arch, SearchSpace
from nasforge.spaces import create_space
from nasforge.strategies import STRATEGIES, register_strategy
from nasforge.strategies.base import Score, scalar
from nasforge.strategies.fidelity_base import FidelityStrategy, TrialRequest
from nasforge.train import TrainConfig

TESTS = Path(__file__).resolve().parent
EIGHT = {"name": "toy_halving", "options": {"n_configs": 8, "rungs": 3, "max_epochs": 4}}
TINY = {"stages": [[8, 1, 1]], "kernels": [3, 5], "expands": [1, 3], "se": [False]}


class ToyHalving(FidelityStrategy):
    """Synchronous successive halving over ``n_configs`` sampled configurations: rung ``r``
    trains the best ``1/eta`` of rung ``r-1`` (failed ones never promoted) with ``eta`` times
    the budget, ``rungs`` rungs up to ``max_epochs`` (``resource: data_fraction``: fractions
    up to 1.0 at ``max_epochs``). ``repeat: true`` asks every rung-0 request twice (the
    loop's dedupe test)."""

    name = "toy_halving"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        constraint: Any = None,
        n_configs: int = 4,
        max_epochs: int = 2,
        eta: int = 2,
        resource: str = "epochs",
        repeat: bool = False,
        rungs: int = 2,
    ) -> None:
        super().__init__(space, seed, constraint)
        self.max_epochs, self.eta, self.resource, self.repeat = max_epochs, eta, resource, repeat
        configs: dict[str, Arch] = {}
        while len(configs) < n_configs:
            arch = space.sample(self.rng)
            configs.setdefault(arch.key, arch)
        self.configs = list(configs.values())
        self.n_rungs = rungs
        self.results: dict[tuple[int, int], Score] = {}
        self.issued: set[tuple[int, int]] = set()
        self.repeated: set[int] = set()

    def _budget(self, rung: int) -> tuple[int, float]:
        scale = self.eta ** (self.n_rungs - 1 - rung)
        if self.resource == "data_fraction":
            return self.max_epochs, 1.0 / scale
        return max(1, self.max_epochs // scale), 1.0

    def _members(self, rung: int) -> list[int] | None:
        if rung == 0:
            return list(range(len(self.configs)))
        prev = self._members(rung - 1)
        if prev is None or any((rung - 1, c) not in self.results for c in prev):
            return None
        ok = [c for c in prev if self.results[(rung - 1, c)] is not None]
        ok.sort(key=lambda c: -scalar(self.results[(rung - 1, c)]))
        return ok[: len(prev) // self.eta]

    def ask_trial(self) -> TrialRequest | None:
        for rung in range(self.n_rungs):
            members = self._members(rung)
            if members is None:
                return None
            for c in members:
                if (rung, c) not in self.issued or (
                    self.repeat and rung == 0 and c not in self.repeated
                ):
                    if (rung, c) in self.issued:
                        self.repeated.add(c)
                    self.issued.add((rung, c))
                    epochs, fraction = self._budget(rung)
                    return TrialRequest(self.configs[c], epochs, fraction, rung, 0, c)
        return None

    def tell_trial(self, request: TrialRequest, score: Score) -> None:
        self.results[(request.rung, request.config_id)] = score
        self.issued.add((request.rung, request.config_id))

    def done(self) -> bool:
        last = self._members(self.n_rungs - 1)
        return last is not None and all((self.n_rungs - 1, c) in self.results for c in last)


register_strategy("toy_halving", ToyHalving)


def _cfg(tmp_path: Path, strategy: dict[str, Any], **sections: Any) -> Any:
    base: dict[str, Any] = {
        "name": "mf",
        "runs_dir": str(tmp_path / "runs"),
        "data": {"name": "digits"},
        "space": {"name": "mobile", "options": TINY},
        "search": {"trials": 20, "executor": "inline"},
        "train": {"epochs": 2, "lr": 0.1},
        "strategy": strategy,
        "objective": {"kind": "accuracy"},
        "latency": {"mode": "flops"},
    }
    base.update(sections)
    return parse_config(base)


def _run(cfg: Any, run_dir: Path, resume: bool = False) -> Any:
    exp = Experiment(cfg, run_dir, console=Console(quiet=True), progress=False)
    return exp.run(resume=resume, final=False)


def _instant(
    tmp_path: Path, strategy: dict[str, Any], trials: int, evaluator: str = "instant"
) -> Any:
    """A config whose trials are instant (hash-scored, no training): loop logic only."""
    return parse_config(
        {
            "name": "mf",
            "plugins": ["fault_plugin"],
            "evaluator": {"kind": evaluator},
            "space": {"name": "mobile", "options": TINY},
            "strategy": strategy,
            "objective": {"kind": "accuracy"},
            "search": {"trials": trials},
        }
    )


@pytest.fixture
def no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report (plots) is not under test there and costs most of an instant run."""
    from nasforge.experiment import report

    monkeypatch.setattr(report, "write_report", lambda *a, **k: None)


def _rows(db: Path) -> list[Any]:
    with TrialStore(db, create=False) as s:
        return s.trials()


# -- the loop, with instant trials ---------------------------------------------------------------
def test_rows_carry_budget_and_rung_and_rungs_promote_the_best(tmp_path: Path) -> None:
    cfg = _instant(tmp_path, EIGHT, 50)
    summary = _run(cfg, tmp_path / "a")
    rows = _rows(tmp_path / "a" / "trials.db")
    # 8 configs at 1 epoch, the best 4 at 2, the best 2 at 4
    assert [int(t.metrics[RUNG]) for t in rows] == [0] * 8 + [1] * 4 + [2] * 2
    assert [t.metrics[BUDGET_EPOCHS] for t in rows] == [1.0] * 8 + [2.0] * 4 + [4.0] * 2
    assert all(t.state == "complete" for t in rows)
    assert all(t.metrics[BUDGET_FRACTION] == 1.0 for t in rows)
    rung0 = sorted((t for t in rows if t.metrics[RUNG] == 0), key=lambda t: -t.score)
    rung1_ids = {t.metrics["config_id"] for t in rows if t.metrics[RUNG] == 1}
    assert rung1_ids == {t.metrics["config_id"] for t in rung0[:4]}
    # the summary's best is a full-fidelity trial (rung 2), not a better-scored cheap rung
    top = full_fidelity([t for t in rows if t.state == "complete"])
    assert {t.id for t in top} == {t.id for t in rows if t.metrics[RUNG] == 2}
    assert summary.best["id"] in {t.id for t in top}
    assert summary.trials_complete == 14
    # the report: a Multi-fidelity section per rung, the leaderboard at full fidelity only
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    fid = report["automl"]["fidelity"]
    assert [(r["rung"], r["epochs"], r["trials"]) for r in fid["rungs"]] == [
        (0, 1.0, 8),
        (1, 2.0, 4),
        (2, 4.0, 2),
    ]
    assert fid["rungs"][2]["best_score"] == max(t.score for t in top)
    assert {t["id"] for t in report["leaderboard"]} == {t.id for t in top}
    assert len(fid["configs"]) == 8 and fid["progress"][-1][1] == max(t.score for t in top)
    page = (tmp_path / "a" / "report.html").read_text()
    assert "<h2>Multi-fidelity</h2>" in page and "Best full-fidelity score over wall time" in page


def test_same_arch_at_same_budget_is_not_paid_twice(tmp_path: Path, no_report: None) -> None:
    cfg = _instant(tmp_path, {"name": "toy_halving", "options": {"repeat": True}}, 50)
    _run(cfg, tmp_path / "a")
    rows = _rows(tmp_path / "a" / "trials.db")
    keys = [request_of(t).key for t in rows]  # type: ignore[union-attr]
    assert len(keys) == len(set(keys)) == 4 + 2


def test_trial_budget_counts_rows_and_resume_continues_the_ladders(
    tmp_path: Path, no_report: None
) -> None:
    options = EIGHT
    _run(_instant(tmp_path, options, 50), tmp_path / "whole")
    whole = _rows(tmp_path / "whole" / "trials.db")
    # stopped by the trial budget in the middle of rung 1, then continued with a larger one
    _run(_instant(tmp_path, options, 10), tmp_path / "part")
    assert len(_rows(tmp_path / "part" / "trials.db")) == 10
    _run(_instant(tmp_path, options, 50), tmp_path / "part", resume=True)
    part = _rows(tmp_path / "part" / "trials.db")
    assert [(t.key, t.metrics) for t in part] == [(t.key, t.metrics) for t in whole]


def test_interrupted_rows_are_asked_again_by_the_strategy_not_rerun_blindly(
    tmp_path: Path, no_report: None
) -> None:
    options = EIGHT
    run_dir = tmp_path / "a"
    _run(_instant(tmp_path, options, 6), run_dir)
    with TrialStore(run_dir / "trials.db") as s:  # as a kill -9 leaves it: one row running
        s.add_trial(s.trials()[0].arch)  # a row the strategy would never ask again as is
        s.add_trial(_rows(run_dir / "trials.db")[0].arch)
    _run(_instant(tmp_path, options, 50), run_dir, resume=True)
    rows = _rows(run_dir / "trials.db")
    done = [t for t in rows if t.state == "complete"]
    assert sum(t.state == "interrupted" for t in rows) == 2
    keys = [request_of(t).key for t in done]  # type: ignore[union-attr]
    assert len(keys) == len(set(keys)) == 14


class FlakyEvaluator(Evaluator):
    """Instant, hash-scored; fails every arch whose hash is divisible by 3 (at any budget)."""

    def produces(self) -> frozenset[str]:
        return frozenset({"val_acc"})

    def evaluate(self, arch: Arch, budget: Any = None, reporter: Any = None) -> Result:
        h = int(hashlib.sha256(arch.key.encode()).hexdigest()[:8], 16)
        if h % 3 == 0:
            raise RuntimeError("flaky: this candidate fails")
        return Result({"val_acc": (h % 10_000) / 10_000}, cost_seconds=0.01)


register_evaluator("flaky", lambda context, **o: FlakyEvaluator(), "test", needs_data=False)


class Stuck(ToyHalving):
    """Asks two requests, then nothing ever again (a strategy waiting on nothing)."""

    def ask_trial(self) -> TrialRequest | None:
        return super().ask_trial() if len(self.issued) < 2 else None


register_strategy("toy_stuck", Stuck)


def test_failed_rows_carry_their_budget_are_never_promoted_and_replay(
    tmp_path: Path, no_report: None
) -> None:
    def cfg(trials: int) -> Any:
        return _instant(tmp_path, EIGHT, trials, evaluator="flaky")

    _run(cfg(50), tmp_path / "whole")
    rows = _rows(tmp_path / "whole" / "trials.db")
    failed = [t for t in rows if t.state == "failed"]
    assert failed and all(RUNG in t.metrics and BUDGET_EPOCHS in t.metrics for t in failed)
    dead = {t.metrics["config_id"] for t in failed}
    assert all(t.metrics["config_id"] not in dead for t in rows if t.metrics[RUNG] > 0)
    _run(cfg(5), tmp_path / "part")
    _run(cfg(50), tmp_path / "part", resume=True)
    part = _rows(tmp_path / "part" / "trials.db")
    assert [(t.key, t.state, t.metrics) for t in part] == [
        (t.key, t.state, t.metrics) for t in rows
    ]


def test_a_strategy_that_asks_nothing_while_nothing_runs_ends_the_search(
    tmp_path: Path, no_report: None
) -> None:
    _run(_instant(tmp_path, {"name": "toy_stuck"}, 50), tmp_path / "s")
    assert len(_rows(tmp_path / "s" / "trials.db")) == 2
    with TrialStore(tmp_path / "s" / "trials.db", create=False) as s:
        assert any(kind == "stalled" for _, kind, _ in s.events())


REGISTERED = [n for n in ("sh", "hyperband", "asha", "bohb") if n in STRATEGIES]


@pytest.mark.skipif(not REGISTERED, reason="no multi-fidelity strategy registered yet")
@pytest.mark.parametrize("name", REGISTERED)
def test_registered_strategies_resume_like_an_uninterrupted_run(
    tmp_path: Path, no_report: None, name: str
) -> None:
    options = {"name": name, "options": {"min_epochs": 1, "max_epochs": 9, "eta": 3}}
    _run(_instant(tmp_path, options, 30), tmp_path / "whole")
    whole = _rows(tmp_path / "whole" / "trials.db")
    # sh is one ladder (9 + 3 + 1 trials), then done; the others start brackets forever
    total = 13 if name == "sh" else 30
    _run(_instant(tmp_path, options, 7 if name == "sh" else 13), tmp_path / "part")
    _run(_instant(tmp_path, options, 30), tmp_path / "part", resume=True)
    part = _rows(tmp_path / "part" / "trials.db")
    assert [(t.key, t.metrics) for t in part] == [(t.key, t.metrics) for t in whole]
    assert len(whole) == total and all(t.state == "complete" for t in whole)
    assert {t.metrics[BUDGET_EPOCHS] for t in whole} <= {1.0, 3.0, 9.0}
    assert any(t.metrics[BUDGET_EPOCHS] == 9.0 for t in whole)  # something reached the top
    keys = [request_of(t).key for t in whole]  # type: ignore[union-attr]
    assert len(keys) == len(set(keys))


# -- the train evaluator's budget ----------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> Any:
    return load_dataset("digits", seed=0)


def _evaluator(digits: Any, epochs: int = 1) -> TrainEvaluator:
    space = create_space("mobile", digits.input_shape, digits.num_classes, **TINY)
    return TrainEvaluator(space, digits, TrainConfig(epochs=epochs, lr=0.1), latency=None)


def test_fidelity_epochs_and_fraction_reach_training(digits: Any, one_thread: None) -> None:
    ev = _evaluator(digits, epochs=1)
    arch = ev.space.sample(np.random.default_rng(0))
    reporter = Reporter()
    res = ev.evaluate(arch, Fidelity(epochs=2, data_fraction=0.25), reporter)
    assert res.info["epochs"] == 2 and len(res.info["curve"]) == 2
    assert [step for step, _ in reporter.values] == [0, 1]
    assert res.metrics["val_acc"] == res.info["curve"][-1]
    n = len(digits.y_train)
    assert res.info["train_samples"] == round(0.25 * n)
    # a float budget is epochs, as before; the whole split
    res2 = ev.evaluate(arch, 2.0)
    assert len(res2.info["curve"]) == 2 and res2.info["train_samples"] == n


def test_a_trial_is_the_same_model_whatever_ran_before_it(digits: Any, one_thread: None) -> None:
    ev = _evaluator(digits)
    rng = np.random.default_rng(2)
    a, b = ev.space.sample(rng), ev.space.sample(rng)
    first = ev.evaluate(b).info["curve"]
    ev.evaluate(a)
    torch.randn(100)  # the process's random stream moved on
    assert ev.evaluate(b).info["curve"] == first  # a resumed or re-asked trial repeats


def test_stratified_subset_keeps_class_shares_and_is_seeded(digits: Any) -> None:
    y = digits.y_train
    idx = stratified_subset(y, 0.2, seed=3)
    assert torch.equal(idx, stratified_subset(y, 0.2, seed=3))
    assert not torch.equal(idx, stratified_subset(y, 0.2, seed=4))
    full = torch.bincount(y, minlength=10).float() / len(y)
    part = torch.bincount(y[idx], minlength=10).float() / len(idx)
    assert float((full - part).abs().max()) < 0.02
    assert len(set(idx.tolist())) == len(idx) == round(0.2 * len(y))


def test_recipe_labels_train_with_their_recipe_and_budget_epochs_win(
    digits: Any, one_thread: None
) -> None:
    ev = _evaluator(digits, epochs=1)
    inner = dict(ev.space.sample(np.random.default_rng(1)))
    joint = Arch({**inner, "recipe/epochs": 2, "recipe/lr": 0.05})
    assert len(ev.evaluate(joint).info["curve"]) == 2  # the recipe's epochs
    res = ev.evaluate(joint, Fidelity(epochs=1))  # an explicit budget overrides them
    assert len(res.info["curve"]) == 1 and res.info["recipe"] == {"epochs": 2, "lr": 0.05}
    # the recipe really applies: train:'s own lr trains exactly as the plain arch, another
    # lr and optimizer do not (compared on the per-epoch training loss the reporter gets)

    def losses(arch: Arch) -> list[float]:
        rep = Reporter()
        ev.evaluate(arch, reporter=rep)
        return [m["loss"] for _, m in rep.values]

    plain = losses(Arch(inner))
    assert losses(Arch({**inner, "recipe/lr": 0.1})) == plain
    assert losses(Arch({**inner, "recipe/lr": 0.01, "recipe/optimizer": "adamw"})) != plain


def test_compress_labels_are_refused_with_a_pointer_to_the_compressed_evaluator(
    digits: Any,
) -> None:
    ev = _evaluator(digits)
    arch = Arch({**dict(ev.space.sample(np.random.default_rng(0))), "compress/bits": 8})
    with pytest.raises(Exception, match="evaluator.kind: compressed"):
        ev.evaluate(arch)


# -- end to end ----------------------------------------------------------------------------------
@pytest.mark.slow  # spawned processes importing torch: 20-40 s on a busy host
def test_process_executor_two_workers_trains_each_rung_with_its_budget(
    tmp_path: Path, one_thread: None
) -> None:
    cfg = _cfg(
        tmp_path,
        {"name": "toy_halving", "options": {"n_configs": 4, "max_epochs": 2}},
        search={"trials": 20, "executor": "process", "workers": 2},
        train={"epochs": 1, "lr": 0.1},
    )
    summary = _run(cfg, tmp_path / "p")
    rows = _rows(tmp_path / "p" / "trials.db")
    assert len(rows) == 6 and all(t.state == "complete" for t in rows)
    assert [int(t.metrics[RUNG]) for t in rows] == [0, 0, 0, 0, 1, 1]
    assert {t.metrics[BUDGET_EPOCHS] for t in rows} == {1.0, 2.0}
    assert all(0.0 <= t.metrics["val_acc"] <= 1.0 for t in rows)
    assert summary.best["metrics"][RUNG] == 1.0
    log = (tmp_path / "p" / "progress.log").read_text()
    assert "rung 1 (bracket 0, config" in log and "2 epochs" in log


def test_data_fraction_resource_trains_on_part_of_the_split(
    tmp_path: Path, one_thread: None
) -> None:
    cfg = _cfg(
        tmp_path,
        {
            "name": "toy_halving",
            "options": {"n_configs": 2, "max_epochs": 1, "resource": "data_fraction"},
        },
        train={"epochs": 1, "lr": 0.1},
        search={"trials": 20, "executor": "inline"},
    )
    _run(cfg, tmp_path / "f")
    rows = _rows(tmp_path / "f" / "trials.db")
    assert [t.metrics[BUDGET_FRACTION] for t in rows] == [0.5, 0.5, 1.0]
    assert {t.metrics[BUDGET_EPOCHS] for t in rows} == {1.0}
    # half of the data is a different evaluation: the promoted config's two rows differ
    top = rows[2].metrics["config_id"]
    assert len({t.metrics["val_acc"] for t in rows if t.metrics["config_id"] == top}) == 2


KILLED = [
    # (search, strategy, finished rows when done): the toy's one ladder inline; ASHA with
    # two process workers (trials running in both when the kill comes)
    pytest.param(
        "{trials: 30, executor: inline}",
        "{name: toy_halving, options: {n_configs: 6, max_epochs: 2}}",
        9,
        id="toy-inline",
    ),
    pytest.param(
        "{trials: 10, executor: process, workers: 2}",
        "{name: asha, options: {min_epochs: 1, max_epochs: 3, eta: 3}}",
        10,
        marks=pytest.mark.skipif("asha" not in STRATEGIES, reason="asha not registered"),
        id="asha-process",
    ),
]


@pytest.mark.slow  # spawned processes importing torch: 20-40 s on a busy host
@pytest.mark.parametrize(("search", "strategy", "total"), KILLED)
def test_kill_9_mid_run_then_resume_pays_no_finished_budget_twice(
    tmp_path: Path, search: str, strategy: str, total: int
) -> None:
    import subprocess
    import sys
    import time

    from runproc import finished_count, kill_group, wait_for

    cfg = tmp_path / "k.yaml"
    cfg.write_text(
        f"name: k\nruns_dir: {tmp_path / 'runs'}\nplugins: [test_fidelity_run]\n"
        "data: {name: digits}\n"
        "space: {name: mobile, options: {stages: [[8, 1, 1]], kernels: [3, 5], "
        "expands: [1, 3], se: [false]}}\n"
        f"search: {search}\ntrain: {{epochs: 1, lr: 0.1}}\nstrategy: {strategy}\n"
        "objective: {kind: accuracy}\nlatency: {mode: flops}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    cmd = [sys.executable, "-m", "nasforge.cli", "search", str(cfg), "--quiet", "--no-final"]
    db = tmp_path / "runs" / "k" / "trials.db"
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: finished_count(db) >= 3, what="3 finished trials")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        kill_group(proc)
    before = {t.id: t for t in _rows(db) if t.state == "complete"}
    assert 3 <= len(before) < total, "the run finished before it could be killed"
    t0 = time.time()
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = _rows(db)
    done = [t for t in rows if t.state == "complete"]
    for t in before.values():  # finished rows untouched
        assert next(r for r in done if r.id == t.id).metrics == t.metrics
    assert all(t.created > t0 for t in done if t.id not in before)
    keys = [request_of(t).key for t in done]  # type: ignore[union-attr]
    assert len(keys) == len(set(keys)) == total  # no finished (arch, budget) paid twice
    assert all(t.state in ("complete", "interrupted") for t in rows)
    if "toy" in strategy:  # synchronous: a rung starts when the one below has finished
        by_time = sorted(done, key=lambda t: t.finished)
        assert [t.metrics[RUNG] for t in by_time] == sorted(t.metrics[RUNG] for t in done)


@pytest.mark.slow
def test_ray_executor_runs_a_fidelity_strategy(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed")
    cfg = _cfg(
        tmp_path,
        {"name": "toy_halving", "options": {"n_configs": 4, "max_epochs": 2}},
        search={"trials": 20, "executor": "ray", "workers": 2},
        train={"epochs": 1, "lr": 0.1},
    )
    try:
        _run(cfg, tmp_path / "r")
    finally:
        ray.shutdown()
    rows = _rows(tmp_path / "r" / "trials.db")
    assert [int(t.metrics[RUNG]) for t in rows] == [0, 0, 0, 0, 1, 1]
    assert all(t.state == "complete" for t in rows)
