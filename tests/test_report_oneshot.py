"""The report and ``nasforge show`` of weight-sharing runs, from real per-epoch records: a short
DARTS search and a short single-path supernet training on the bundled digits, stored with
``TrialStore.add_epoch``; the collapse rule on hand-written trajectories. No accuracy or timing
is asserted."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.data import Dataset, load_dataset
from nasforge.errors import NasforgeError
from nasforge.experiment.collapse import (
    CLEAR,
    COLLAPSED,
    SIGNAL,
    collapse_verdict,
    eigen_growth,
    op_count,
    skip_cell_edges,
)
from nasforge.experiment.config import ExperimentConfig, parse_config
from nasforge.experiment.report import build_report, render_html, write_report
from nasforge.experiment.report_oneshot import (
    DARTS_FIELDS,
    META,
    REGULARIZER_WORDS,
    oneshot_section,
    show_lines,
)
from nasforge.experiment.store import TrialStore
from nasforge.oneshot import REGULARIZERS, DartsConfig, DartsSearch, layout_for
from nasforge.oneshot.spos import SupernetConfig, SupernetTrainer
from nasforge.spaces import create_space
from nasforge.spaces.nb201 import NB201Space

runner = CliRunner()
DARTS_SMALL = {"steps": 2, "ops": ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")}


def small_darts(epochs: int) -> DartsConfig:
    return DartsConfig(
        epochs=epochs,
        steps_per_epoch=2,
        batch_size=32,
        channels=4,
        hessian_iters=3,
        eval_batches=1,
        alpha_lr=0.05,
    )


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def darts_search(digits: Dataset) -> DartsSearch:
    """Three real epochs of the default (regularised) DARTS on the nb201 space."""
    torch.set_num_threads(1)
    space = create_space("nb201", digits.input_shape, digits.num_classes, C=4, N=1)
    search = DartsSearch.from_dataset(space, small_darts(3), digits)
    for _ in range(3):
        search.step_epoch()
    return search


@pytest.fixture(scope="module")
def darts_records(darts_search: DartsSearch) -> list[dict[str, Any]]:
    return [dict(r) for r in darts_search.history]


def record_derived(store: TrialStore, search: DartsSearch, planned: int) -> dict[str, Any]:
    """What the run's DARTS phase writes after the search: the derived arch as a finished
    trial and the ``oneshot`` meta naming it. Returns the derived arch."""
    arch = search.derive("argmax")
    tid = store.add_trial(arch)
    store.finish_trial(tid, "complete", {"val_acc": 0.5}, 0.5, 1.0)
    store.set_meta(
        META,
        {
            "method": "darts",
            "phase": "darts",
            "config": {"epochs": planned},
            "epochs": search.epoch,
            "derived": search.space.describe(arch),
            "derived_trial": tid,
            "derivation": "argmax",
            "stopped": None,
        },
    )
    return {"arch": arch.to_dict(), "string": search.space.describe(arch), "trial": tid}


@pytest.fixture(scope="module")
def supernet_records(digits: Dataset) -> list[dict[str, Any]]:
    """Two real epochs of uniform single-path training, as the runner stores them."""
    data = Dataset(
        "digits",
        digits.x_train[:96],
        digits.y_train[:96],
        digits.x_val[:48],
        digits.y_val[:48],
        digits.x_test[:8],
        digits.y_test[:8],
        digits.classes,
    )
    cfg = SupernetConfig(sampling="uniform", epochs=2, batch_size=32, bn_batches=1)
    trainer = SupernetTrainer(NB201Space((1, 8, 8), 10, C=4, N=1), data, cfg)
    return [{**asdict(r), "sampling": cfg.sampling} for r in trainer.train()]


def config(tmp_path: Path) -> ExperimentConfig:
    return parse_config({"name": "ws", "runs_dir": str(tmp_path), "data": {"name": "digits"}})


def run_with(
    tmp_path: Path,
    phases: dict[str, list[dict[str, Any]]],
    oneshot: dict[str, Any] | None = None,
    setup: Callable[[TrialStore], Any] | None = None,
) -> tuple[Path, ExperimentConfig]:
    """A run directory whose store holds ``phases``' epoch records (and a config.yaml with
    ``oneshot`` when given; ``setup(store)`` may add more), its report written."""
    cfg = config(tmp_path)
    run = cfg.run_dir()
    run.mkdir(parents=True)
    data = cfg.model_dump(mode="json")
    if oneshot is not None:
        data["oneshot"] = oneshot
    (run / "config.yaml").write_text(json.dumps(data))  # JSON is YAML
    with TrialStore(run / "trials.db") as store:
        for phase, records in phases.items():
            for r in records:
                store.add_epoch(phase, r["epoch"], r)
        if setup is not None:
            setup(store)
        space = create_space("nb201", (1, 8, 8), 10, C=4, N=1)
        write_report(run, cfg, store, space, cfg.objective.build())
    return run, cfg


def test_report_json_numbers_are_the_records(
    tmp_path: Path, darts_records: list[dict[str, Any]], supernet_records: list[dict[str, Any]]
) -> None:
    run, _ = run_with(tmp_path, {"darts": darts_records, "supernet": supernet_records})
    section = json.loads((run / "report.json").read_text())["oneshot"]
    assert section["method"] == "darts"
    assert section["phases"] == ["darts", "supernet"]
    darts = section["darts"]
    assert darts["epochs_done"] == 3 and darts["epochs_total"] is None
    assert darts["regularization"] == darts_records[0]["regularization"] == ["beta"]
    assert any("beta-DARTS" in w for w in darts["regularization_words"])
    for got, rec in zip(darts["epochs"], darts_records, strict=True):
        assert got["epoch"] == rec["epoch"]
        for f in DARTS_FIELDS:
            if f in rec:
                assert got[f] == rec[f], f
    assert [c["arch_string"] for c in darts["derived_cells"]] == [
        r["arch_string"] for r in darts_records
    ]
    traj = darts["trajectories"]["cell"]
    assert traj["ops"] == darts_records[0]["cells"]["cell"]["ops"]
    assert traj["weights"] == [r["cells"]["cell"]["weights"] for r in darts_records]
    assert darts["final_derived"]["trial"] is None  # no derived trial: the last epoch's cell
    assert darts["final_derived"]["arch"] == darts_records[-1]["arch"]
    assert darts["final_derived"]["arch_string"] == darts_records[-1]["arch_string"]
    cpu = sum(r["cpu_seconds"] for r in darts_records)
    assert darts["search_cpu_seconds"] == pytest.approx(cpu, abs=1e-3)
    assert darts["collapse"] == collapse_verdict(darts_records).to_dict()
    last = darts_records[-1]
    assert darts["collapse"]["skip_none_last"] == last["skip_count"] + last["none_count"]
    assert darts["collapse"]["edges"] == 6  # the nb201 cell
    sn = section["supernet"]
    assert sn["sampling"] == "uniform" and sn["epochs_done"] == 2
    for got, rec in zip(sn["epochs"], supernet_records, strict=True):
        assert {k: got[k] for k in ("epoch", "loss", "lr", "steps", "paths")} == {
            k: rec[k] for k in ("epoch", "loss", "lr", "steps", "paths")
        }
    assert sn["train_seconds"] == pytest.approx(
        sum(r["seconds"] for r in supernet_records), abs=1e-3
    )


def test_html_has_trajectories_collapse_plot_tables_and_escapes_arch_strings(
    tmp_path: Path, darts_records: list[dict[str, Any]], supernet_records: list[dict[str, Any]]
) -> None:
    hostile = [dict(r) for r in darts_records]
    hostile[-1] = {**hostile[-1], "arch_string": "<script>alert('x')</script>|skip~0|"}
    run, _ = run_with(tmp_path, {"darts": hostile, "supernet": supernet_records})
    page = (run / "report.html").read_text()
    assert "Weight-sharing search: darts" in page
    assert "<h3>Architecture weights (cell)</h3><img src='data:image/png;base64," in page
    assert "<h3>Collapse diagnostics</h3><img src='data:image/png;base64," in page
    assert "Derived cell per epoch" in page
    assert "beta-DARTS (beta-decay regularisation" in page
    assert "Collapse verdict: " in page
    for r in darts_records[:-1]:  # each epoch's derived cell is a row of the table
        assert f"<td>{r['arch_string']}</td>" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;|skip~0|" in page
    assert "<h3>Supernet training</h3>" in page and "uniform sampling" in page
    assert page.count("data:image/png;base64,") >= 3  # weights, collapse, supernet loss


def derived_run(
    tmp_path: Path, search: DartsSearch, records: list[dict[str, Any]], planned: int
) -> tuple[Path, dict[str, Any]]:
    """A run of ``records`` whose derived arch is recorded as its trial (``planned`` epochs)."""
    derived: dict[str, Any] = {}
    run, _ = run_with(
        tmp_path,
        {"darts": records},
        setup=lambda store: derived.update(record_derived(store, search, planned)),
    )
    return run, derived


def test_final_derived_is_the_recorded_trial_and_planned_epochs_the_meta(
    tmp_path: Path, darts_search: DartsSearch, darts_records: list[dict[str, Any]]
) -> None:
    run, derived = derived_run(tmp_path, darts_search, darts_records, 7)
    darts = json.loads((run / "report.json").read_text())["oneshot"]["darts"]
    fin = darts["final_derived"]
    assert darts["epochs_total"] == 7
    assert fin["trial"] == derived["trial"] and fin["arch"] == derived["arch"]
    assert fin["arch_string"] == derived["string"]
    assert fin["skip_count"] == op_count(derived["arch"], "skip_connect")
    assert fin["none_count"] == op_count(derived["arch"], "none")
    assert "argmax derivation" in fin["how"] and f"trial {derived['trial']}" in fin["how"]
    assert darts["collapse"] == collapse_verdict(darts_records, derived["arch"]).to_dict()


def test_show_prints_method_epochs_cell_and_verdict(
    tmp_path: Path, darts_search: DartsSearch, darts_records: list[dict[str, Any]]
) -> None:
    run, derived = derived_run(tmp_path, darts_search, darts_records, 5)
    res = runner.invoke(app, ["show", str(run)], terminal_width=300)
    assert res.exit_code == 0, res.output
    verdict = collapse_verdict(darts_records).verdict
    skips = op_count(derived["arch"], "skip_connect")
    nones = op_count(derived["arch"], "none")
    assert (
        f"darts: 3/5 epochs (regularisers: beta); derived cell (trial {derived['trial']}): "
        f"{derived['string']}\nskip {skips}, none {nones} of 6 edges; collapse: {verdict}"
    ) in res.output


def test_show_of_a_supernet_run_takes_planned_epochs_from_its_config(
    tmp_path: Path, supernet_records: list[dict[str, Any]]
) -> None:
    run, _ = run_with(
        tmp_path,
        {"supernet": supernet_records},
        oneshot={"method": "spos", "options": {"epochs": 4}},
    )
    res = runner.invoke(app, ["show", str(run)], terminal_width=300)
    assert res.exit_code == 0, res.output
    loss = supernet_records[-1]["loss"]
    assert f"spos: supernet (uniform sampling) 2/4 epochs, last loss {loss:.4f}" in res.output
    assert "collapse" not in res.output  # no DARTS records, no collapse verdict


def test_a_run_without_epoch_records_reports_as_before(tmp_path: Path) -> None:
    run, cfg = run_with(tmp_path, {})
    report = json.loads((run / "report.json").read_text())
    assert "oneshot" not in report
    with TrialStore(run / "trials.db", create=False) as store:
        assert oneshot_section(store, cfg) is None
        assert show_lines(store, run) == []
        again = build_report(run, cfg, store, cfg.objective.build())
    space = create_space("nb201", (1, 8, 8), 10, C=4, N=1)
    page = render_html(again, {}, space)
    assert (
        "Weight-sharing" not in page and "Weight-sharing" not in (run / "report.html").read_text()
    )
    res = runner.invoke(app, ["show", str(run)], terminal_width=300)
    assert res.exit_code == 0 and "collapse" not in res.output


def test_unknown_phase_is_passed_through(tmp_path: Path) -> None:
    with TrialStore(tmp_path / "t.db") as store:
        store.add_epoch("my_phase", 0, {"score": 0.5})
        section = oneshot_section(store)
    assert section is not None
    assert section["method"] == "my_phase"
    assert section["my_phase"]["epochs"] == [{"score": 0.5, "phase": "my_phase", "epoch": 0}]


# -- the collapse rule ----------------------------------------------------------------------------
NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
EDGES = ["edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2"]


def hand_record(epoch: int, ops: list[str], eig: float | None, ent: float) -> dict[str, Any]:
    arch = dict(zip(EDGES, ops, strict=True))
    return {
        "epoch": epoch,
        "arch": arch,
        "arch_string": "|".join(ops),
        "skip_count": ops.count("skip_connect"),
        "none_count": ops.count("none"),
        "entropy": ent,
        "hessian_eigenvalue": eig,
        "cells": {"cell": {"ops": NB201_OPS, "weights": [], "entropy": ent}},
        "regularization": ["none"],
        "stopped": None,
    }


def trajectory(n_skip: list[int], eigs: list[float | None]) -> list[dict[str, Any]]:
    out = []
    for e, (k, eig) in enumerate(zip(n_skip, eigs, strict=True)):
        ops = ["skip_connect"] * k + ["nor_conv_3x3"] * (6 - k)
        out.append(hand_record(e + 1, ops, eig, 1.6 - 0.1 * e))
    return out


def test_an_all_skip_trajectory_is_collapsed() -> None:
    recs = trajectory([1, 2, 4, 6], [0.1, 0.2, 0.5, 1.0])
    v = collapse_verdict(recs)
    assert v.verdict == COLLAPSED
    assert v.edges == 6 and v.skip_none_first == 1 and v.skip_none_last == 6
    assert "all skip/none (6 of 6 edges)" in v.reasons[0]
    assert v.entropy_max == pytest.approx(np.log(5))
    # a cell of 'none' and 'skip' edges is as collapsed as an all-skip one
    mixed = hand_record(1, ["none", "skip_connect"] * 3, None, 1.0)
    assert collapse_verdict([mixed]).verdict == COLLAPSED
    # a final derivation (e.g. by perturbation) to an all-skip cell is collapsed too
    clear = trajectory([1, 1], [1.0, 1.0])
    assert collapse_verdict(clear).verdict == CLEAR
    final = collapse_verdict(clear, dict.fromkeys(EDGES, "skip_connect"))
    assert final.verdict == COLLAPSED and "final derived cell is all skip/none" in final.reasons[0]


def test_rising_skips_or_eigenvalue_growth_is_a_signal_and_flat_is_clear() -> None:
    rising = collapse_verdict(trajectory([0, 1, 2, 3], [1.0, 1.0, 1.0, 1.0]))
    assert rising.verdict == SIGNAL and "rose from 0 to 3 of 6" in rising.reasons[0]
    growing = collapse_verdict(trajectory([1, 1, 1, 1, 1, 1], [1.0, 1.0, 1.2, 1.5, 2.0, 2.0]))
    assert growing.verdict == SIGNAL and growing.eigen_ratio == pytest.approx(2.0)
    assert "Hessian eigenvalue grew 2.00x" in growing.reasons[0]
    flat = collapse_verdict(trajectory([1, 2, 1, 1], [1.0, 1.1, 0.9, 1.05]))
    assert flat.verdict == CLEAR and flat.reasons == ()
    stopped = trajectory([1, 2], [1.0, 1.0])
    stopped[-1]["stopped"] = "early stop: 2 skip connections >= 2"
    assert collapse_verdict(stopped).verdict == SIGNAL
    with pytest.raises(NasforgeError, match="no DARTS epoch records"):
        collapse_verdict([])


def test_eigen_growth_uses_late_over_early_windows() -> None:
    assert eigen_growth([None, 2.0]) is None  # one value: no trend
    assert eigen_growth([1.0, 3.0]) == pytest.approx(3.0)
    assert eigen_growth([-1.0, -1.0, -1.0, -2.0, -2.0, -2.0]) == pytest.approx(2.0)  # |lambda|
    assert eigen_growth([0.0, 0.0, 1.0]) is None


def test_skip_cell_edges_match_the_layouts_count(digits: Dataset) -> None:
    """The report counts edges from the recorded arch alone; the DARTS layout agrees."""
    for name, options in (("nb201", {"C": 4, "N": 1}), ("darts", DARTS_SMALL)):
        space = create_space(name, digits.input_shape, digits.num_classes, **options)
        layout = layout_for(space)
        arch = space.sample(np.random.default_rng(0))
        counted = sum(layout.op_counts(arch.to_dict(), op) for op in layout.ops)
        assert skip_cell_edges(arch.to_dict()) == counted, name
        for op in layout.ops:
            assert op_count(arch.to_dict(), op) == layout.op_counts(arch.to_dict(), op), op


def test_every_regularizer_is_named_in_words() -> None:
    assert set(REGULARIZERS) <= set(REGULARIZER_WORDS)


@pytest.mark.skipif(
    "oneshot" not in ExperimentConfig.model_fields, reason="no oneshot: config section yet"
)
def test_a_darts_search_through_the_cli_reports_its_epochs(tmp_path: Path) -> None:
    """The whole path: ``nasforge search`` with a ``oneshot:`` section writes epoch records;
    the report's numbers are the store's and ``show`` prints the run's lines."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: ws\nruns_dir: {tmp_path / 'runs'}\ndata: {{name: digits}}\n"
        "space: {name: nb201, options: {C: 4, N: 1}}\n"
        "oneshot: {method: darts, options: {epochs: 2, steps_per_epoch: 2, batch_size: 32, "
        "channels: 4, hessian_iters: 3, eval_batches: 1}}\n"
        "objective: {kind: accuracy}\nlatency: {repeats: 3, warmup: 1, threads: 1}\n"
    )
    res = runner.invoke(app, ["search", str(cfg), "--quiet", "--no-final"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "ws"
    with TrialStore(run / "trials.db", create=False) as store:
        records = store.epochs("darts")
        (trial,) = store.trials(("complete",))
    darts = json.loads((run / "report.json").read_text())["oneshot"]["darts"]
    assert darts["epochs_done"] == len(records) == 2 and darts["epochs_total"] == 2
    assert [r["val_acc"] for r in darts["epochs"]] == [r["val_acc"] for r in records]
    assert darts["final_derived"]["arch"] == trial.arch.to_dict()
    assert darts["collapse"] == collapse_verdict(records, trial.arch.to_dict()).to_dict()
    assert "Collapse diagnostics" in (run / "report.html").read_text()
    shown = runner.invoke(app, ["show", str(run)], terminal_width=300)
    assert "darts: 2/2 epochs (regularisers: beta); derived cell (trial " in shown.output
    assert f"collapse: {darts['collapse']['verdict']}" in shown.output
