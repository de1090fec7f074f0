"""One-shot defaults that work on a user's (CPU-sized) run, on the bundled digits:

* DARTS' ``alpha_lr: auto`` scales the architecture learning rate to the run's steps (a number
  still wins), the records and the report say the value and why, and a resumed search keeps
  the checkpoint's value;
* a single-path supernet counts the passes over the training split its least-trained op choice
  got (checked against the samplers' real draws) and the report warns, naming the config's
  epochs and the number that would be enough, when they are too few;
* DARTS' architecture-weight panels are named by the edges' nodes ("node 0 -> node 1");
* the ``supernet`` evaluator leaves no lock file beside the checkpoint, and never removes a
  lock another holder has.

Small sizes; no timing or accuracy is asserted."""

from __future__ import annotations

import fcntl
import html
import math
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nasforge.data import Dataset, load_dataset
from nasforge.errors import ConfigError
from nasforge.evaluators.supernet import SupernetEvaluator, remove_lock_file
from nasforge.experiment.oneshot_config import OneshotConfig, darts_config, supernet_findings
from nasforge.experiment.report_oneshot import (
    META,
    darts_section,
    edge_endpoints,
    oneshot_plots,
    oneshot_section,
    render_oneshot,
    show_lines,
)
from nasforge.experiment.store import TrialStore
from nasforge.oneshot import DartsConfig, DartsSearch, layout_for
from nasforge.oneshot.budget import (
    ALPHA_LR_RANGE,
    ENOUGH_CHOICE_PASSES,
    auto_alpha_lr,
    choice_passes_per_epoch,
    resolve_alpha_lr,
)
from nasforge.oneshot.sampling import FairSampler, UniformSampler, choice_values
from nasforge.oneshot.spos import SupernetConfig, SupernetTrainer
from nasforge.spaces import create_space
from nasforge.spaces.nb201 import NB201Space

NB201_NODES = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    torch.set_num_threads(1)
    return load_dataset("digits")


@pytest.fixture(scope="module")
def small(digits: Dataset) -> Dataset:
    return Dataset(
        "digits",
        digits.x_train[:96],
        digits.y_train[:96],
        digits.x_val[:48],
        digits.y_val[:48],
        digits.x_test[:8],
        digits.y_test[:8],
        digits.classes,
    )


def nb201() -> NB201Space:
    return NB201Space((1, 8, 8), 10, C=4, N=1)


def darts_cfg(**kw: Any) -> DartsConfig:
    base: dict[str, Any] = dict(
        epochs=2, steps_per_epoch=2, batch_size=32, channels=4, hessian_every=0, eval_batches=1
    )
    return DartsConfig(**{**base, **kw})


def alpha_lr_of(search: DartsSearch) -> float:
    return float(search.a_opt.param_groups[0]["lr"])


# -- 1. alpha_lr auto ------------------------------------------------------------------------------
def test_auto_alpha_lr_is_the_default_scaled_to_the_steps_and_clamped() -> None:
    assert DartsConfig().alpha_lr == "auto"
    assert auto_alpha_lr(600) == pytest.approx(0.01)
    assert auto_alpha_lr(19_500) == pytest.approx(6 / 19_500)  # DARTS' own ~3e-4
    assert auto_alpha_lr(10) == ALPHA_LR_RANGE[1]
    assert auto_alpha_lr(10**7) == ALPHA_LR_RANGE[0]
    assert resolve_alpha_lr("auto", 600).note().startswith("alpha_lr auto: 0.0100 for 600 steps")
    assert "clamped to [0.0003, 0.05]" in resolve_alpha_lr("auto", 30).note()
    fixed = resolve_alpha_lr(0.002, 600)
    assert fixed.value == 0.002 and not fixed.auto and "set in the config" in fixed.note()


def test_search_takes_auto_alpha_lr_from_its_steps_and_a_number_wins(small: Dataset) -> None:
    space = nb201()
    # steps from the train split: 96 // 32 = 3 per epoch, 80 epochs = 240 steps
    search = DartsSearch.from_dataset(space, darts_cfg(epochs=80, steps_per_epoch=None), small)
    assert search.steps() == 3
    assert alpha_lr_of(search) == pytest.approx(6 / 240) == search.alpha_lr.value
    assert search.alpha_lr.auto and search.alpha_lr.steps == 240
    search = DartsSearch.from_dataset(space, darts_cfg(epochs=6, steps_per_epoch=100), small)
    assert alpha_lr_of(search) == pytest.approx(0.01)
    search = DartsSearch.from_dataset(space, darts_cfg(epochs=6, alpha_lr=0.002), small)
    assert alpha_lr_of(search) == 0.002 and not search.alpha_lr.auto


def test_auto_moves_alpha_in_a_short_run_where_darts_rate_barely_does(small: Dataset) -> None:
    def movement(alpha_lr: float | str) -> float:
        search = DartsSearch.from_dataset(nb201(), darts_cfg(epochs=1, alpha_lr=alpha_lr), small)
        before = search.alpha["cell"].detach().clone()
        search.step_epoch()
        return float((search.alpha["cell"].detach() - before).abs().max())

    auto, darts = movement("auto"), movement(3e-4)
    assert auto > 50 * darts  # 0.05 vs 3e-4 a step: Adam moves alpha ~lr per step
    assert darts < 2e-3  # DARTS' rate: 2 steps move alpha by ~6e-4 (Adam: about lr a step)


@pytest.mark.parametrize(
    ("given", "expected"), [("auto", "auto"), (0.01, 0.01), ("3e-4", 3e-4), (1, 1.0)]
)
def test_alpha_lr_in_the_config(given: Any, expected: Any) -> None:
    assert darts_config({"alpha_lr": given}).alpha_lr == expected


@pytest.mark.parametrize("bad", ["fast", 0, -0.1, None, "inf"])
def test_a_bad_alpha_lr_names_the_field(bad: Any) -> None:
    with pytest.raises(ConfigError) as err:
        darts_config({"alpha_lr": bad})
    assert str(err.value).startswith("oneshot.options.alpha_lr: ")


def test_records_say_the_alpha_lr_and_a_resume_keeps_the_checkpoints(
    tmp_path: Path, small: Dataset
) -> None:
    space = nb201()
    first = DartsSearch.from_dataset(space, darts_cfg(epochs=100, steps_per_epoch=2), small)
    assert first.alpha_lr.value == pytest.approx(6 / 200)
    rec = first.step_epoch()
    assert rec["alpha_lr"] == pytest.approx(0.03)
    assert rec["alpha_lr_note"].startswith("alpha_lr auto: 0.0300 for 200 steps")
    path = tmp_path / "epoch_0001.pt"
    torch.save(first.state_dict(), path)
    # the resumed search would resolve another value (300 steps): the checkpoint's wins
    resumed = DartsSearch.from_dataset(space, darts_cfg(epochs=100, steps_per_epoch=3), small)
    assert resumed.alpha_lr.value == pytest.approx(0.02)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert resumed.alpha_lr == first.alpha_lr
    assert alpha_lr_of(resumed) == pytest.approx(0.03)
    assert resumed.step_epoch()["alpha_lr"] == pytest.approx(0.03)


# -- 3. edges named by their nodes (records of a real search) --------------------------------------
@pytest.fixture(scope="module")
def darts_records(small: Dataset) -> list[dict[str, Any]]:
    search = DartsSearch.from_dataset(nb201(), darts_cfg(), small)
    while not search.done:
        search.step_epoch()
    return [dict(r) for r in search.history]


def titles_of(section: dict[str, Any]) -> dict[str, list[str]]:
    """The panel titles of each plot ``oneshot_plots`` makes (its ``png`` hook sees the
    figure)."""
    seen: list[list[str]] = []

    def png(fig: Any) -> str:
        seen.append([ax.get_title() for ax in fig.axes])
        return f"data:{len(seen)}"

    plots = oneshot_plots(section, png)
    return {key: seen[int(url.split(":")[1]) - 1] for key, url in plots.items()}


def test_darts_records_and_plots_name_each_edge_by_its_nodes(
    darts_records: list[dict[str, Any]],
) -> None:
    assert darts_records[0]["edges"] == {"cell": [list(e) for e in NB201_NODES]}
    names = [f"node {s} -> node {d}" for s, d in NB201_NODES]
    with TrialStore(":memory:") as store:
        section = darts_section(store, darts_records, {}, 2)
        assert section["trajectories"]["cell"]["edge_names"] == names
        # records from before the endpoints were kept: the nb201 layout by the cell's name
        old = [{k: v for k, v in r.items() if k != "edges"} for r in darts_records]
        assert darts_section(store, old, {}, 2)["trajectories"]["cell"]["edge_names"] == names
    titles = titles_of({"method": "darts", "darts": section})["weights:cell"]
    assert [t for t in titles if t] == names
    assert not any(t.startswith("edge ") for t in titles)
    # the page's text names them too: the last epoch's strongest op per edge
    rows: list[list[Any]] = []
    render_oneshot({"method": "darts", "darts": section}, {}, lambda r, h: rows.extend(r) or "")
    weights = darts_records[-1]["cells"]["cell"]["weights"]
    ops = darts_records[-1]["cells"]["cell"]["ops"]
    strongest = [[n, ops[max(range(len(w)), key=w.__getitem__)]] for n, w in zip(names, weights)]
    assert [r[:2] for r in rows if str(r[0]).startswith("node ")] == strongest


def test_the_darts_fallback_layout_is_the_darts_spaces() -> None:
    space = create_space("darts", (1, 8, 8), 10, steps=3)
    layout = layout_for(space)
    for cell in ("normal", "reduce"):
        edges = layout.edges(cell)
        assert edge_endpoints(cell, len(edges)) == edges
    assert edge_endpoints("normal", 4) is None  # no darts cell has 4 mixed edges
    assert edge_endpoints("cell", len(NB201_NODES)) == layout_for(nb201()).edges("cell")


def test_report_and_show_say_the_alpha_lr(darts_records: list[dict[str, Any]]) -> None:
    with TrialStore(":memory:") as store:
        for r in darts_records:
            store.add_epoch("darts", r["epoch"], r)
        section = oneshot_section(store)
        assert section is not None
        note = section["darts"]["alpha_lr"]["note"]
        assert note == darts_records[0]["alpha_lr_note"]
        assert note.startswith("alpha_lr auto: 0.0500 for 4 steps")
        page = render_oneshot(section, {}, lambda rows, header: "")
        assert f"Architecture learning rate: {html.escape(note)}" in page
        assert note in show_lines(store)


# -- 2. the supernet's training per op choice ------------------------------------------------------
def test_choice_passes_per_epoch_matches_the_samplers_draws() -> None:
    space = nb201()
    k = max(len(v) for v in choice_values(space).values())
    fair = FairSampler(space, seed=0)
    counts: Counter[tuple[str, Any]] = Counter()
    for _ in range(3):
        for arch in fair.paths():
            counts.update(arch.to_dict().items())
    per_step = min(counts.values()) / 3  # fair: every choice m / k times a step, exactly
    assert per_step == choice_passes_per_epoch(space, "fair") == fair.m / k
    uniform = UniformSampler(space, seed=0)
    steps = 3000
    counts.clear()
    for _ in range(steps):
        counts.update(uniform.paths()[0].to_dict().items())
    share = [c / steps for c in counts.values()]
    assert choice_passes_per_epoch(space, "uniform") == pytest.approx(1 / k)
    assert min(share) == pytest.approx(1 / k, abs=0.03)  # uniform: 1 / k in expectation


def test_supernet_records_count_passes_and_warn_naming_the_epochs(small: Dataset) -> None:
    cfg = SupernetConfig(sampling="uniform", epochs=2, batch_size=32, bn_batches=1)
    trainer = SupernetTrainer(nb201(), small, cfg)
    records = trainer.train()
    assert [r.choice_passes for r in records] == pytest.approx([0.2, 0.4])  # 1 / 5 an epoch
    need = math.ceil(ENOUGH_CHOICE_PASSES / 0.2)
    warning = trainer.budget_warning()
    assert warning is not None and f"oneshot.options.epochs: {need}" in warning
    fair = SupernetTrainer(nb201(), small, cfg.model_copy(update={"sampling": "fair"}))
    assert "oneshot.options.epochs: 100" in (fair.budget_warning() or "")
    enough = cfg.model_copy(update={"sampling": "fair", "epochs": 100})
    assert SupernetTrainer(nb201(), small, enough).budget_warning() is None


def test_doctor_finding_names_the_epochs_of_a_short_supernet() -> None:
    space = nb201()
    [(level, field, message)] = supernet_findings(OneshotConfig(method="spos"), space)
    assert (level, field) == ("warning", "oneshot.options.epochs")
    assert "oneshot.options.epochs: 500" in message  # the default 10 uniform epochs: 2 passes
    fair = OneshotConfig(method="spos", options={"sampling": "fair", "epochs": 100})
    assert supernet_findings(fair, space) == []
    assert supernet_findings(OneshotConfig(method="darts"), space) == []
    assert supernet_findings(None, space) == []


@pytest.fixture(scope="module")
def supernet_records(small: Dataset) -> list[dict[str, Any]]:
    cfg = SupernetConfig(sampling="uniform", epochs=2, batch_size=32, bn_batches=1)
    trainer = SupernetTrainer(nb201(), small, cfg)
    return [{**asdict(r), "sampling": "uniform"} for r in trainer.train()]


def supernet_store(records: list[dict[str, Any]], planned: int) -> TrialStore:
    store = TrialStore(":memory:")
    for r in records:
        store.add_epoch("supernet", r["epoch"], r)
    store.set_meta(META, {"method": "spos", "phase": "supernet", "epochs": planned})
    return store


def test_report_warns_before_the_leaderboard_when_the_supernet_is_short(
    supernet_records: list[dict[str, Any]],
) -> None:
    with supernet_store(supernet_records, 2) as store:
        section = oneshot_section(store)
        assert section is not None
        sn = section["supernet"]
        assert sn["choice_passes"] == pytest.approx(0.4)
        assert "oneshot.options.epochs: 500" in sn["budget_warning"]
        page = render_oneshot(section, {}, lambda rows, header: "")
        assert "<p class='warn'>Ranking on this supernet: " in page
        assert "oneshot.options.epochs: 500" in page and "leaderboard below" in page
        assert any(
            line.startswith("warning: ") and "oneshot.options.epochs: 500" in line
            for line in show_lines(store)
        )
    # the same records of a run planned for 600 epochs (0.2 an epoch: 120 passes): no warning
    with supernet_store(supernet_records, 600) as store:
        section = oneshot_section(store)
        assert section is not None
        assert section["supernet"]["choice_passes_planned"] == pytest.approx(120)
        assert section["supernet"]["budget_warning"] is None
        assert "class='warn'" not in render_oneshot(section, {}, lambda rows, header: "")
    # records from before the passes were kept: no figure, no warning
    old = [{k: v for k, v in r.items() if k != "choice_passes"} for r in supernet_records]
    with supernet_store(old, 2) as store:
        section = oneshot_section(store)
        assert section is not None and "budget_warning" not in section["supernet"]


# -- 4. the supernet evaluator's lock file ---------------------------------------------------------
def test_supernet_evaluator_leaves_no_lock_beside_the_checkpoint(
    tmp_path: Path, small: Dataset
) -> None:
    space, cfg = nb201(), SupernetConfig(epochs=1, batch_size=32, bn_batches=1)
    arch = space.sample(np.random.default_rng(0))
    # as a `oneshot: {method: spos}` run: the phase trained supernet/epoch_0001.pt, trials load
    final = tmp_path / "supernet" / "epoch_0001.pt"
    trainer = SupernetTrainer(space, small, cfg)
    trainer.train()
    trainer.save(final)
    result = SupernetEvaluator(space, small, cfg, checkpoint=final).evaluate(arch)
    assert 0.0 <= result.metrics["val_acc"] <= 1.0
    assert sorted(p.name for p in final.parent.iterdir()) == ["epoch_0001.pt"]
    # as `evaluator.kind: supernet`: the evaluator trains and saves it itself
    own = tmp_path / "own" / "supernet.pt"
    result = SupernetEvaluator(space, small, cfg, checkpoint=own).evaluate(arch)
    assert sorted(p.name for p in own.parent.iterdir()) == ["supernet.pt"]
    assert result.info["choice_passes"] == pytest.approx(0.2)
    assert "evaluator.options.epochs: 500" in result.info["supernet_warning"]


def test_a_held_lock_file_is_never_removed(tmp_path: Path) -> None:
    lock = tmp_path / "supernet.pt.lock"
    lock.touch()
    with open(lock, "rb") as holder:  # another open file: flock sees another holder
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert remove_lock_file(lock) is False
        assert lock.exists()
        fcntl.flock(holder, fcntl.LOCK_UN)
    assert remove_lock_file(lock) is True
    assert not lock.exists()
    assert remove_lock_file(lock) is False  # gone: nothing to do, nothing created


def test_darts_config_replace_keeps_auto() -> None:
    cfg = replace(DartsConfig(), epochs=3)
    assert cfg.alpha_lr == "auto" and cfg.to_dict()["alpha_lr"] == "auto"
