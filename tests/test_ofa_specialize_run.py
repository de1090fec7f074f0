"""``nasforge ofa specialize`` end to end on a tiny real OFA run: a ``mobile`` supernet trained
by ``nasforge ofa train`` on 400 mnist1d samples, a latency table measured here with the
hardware package, real extraction, fine-tuning, ONNX export and latency measurement. No
accuracy or timing is asserted; the specialised folder, the card, the limit (by prediction),
the samples cache, the errors and the report are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.errors import NasforgeError
from nasforge.experiment import ofa_cache, ofa_specialize
from nasforge.experiment.config import load_config
from nasforge.experiment.ofa_specialize import specialize_run
from nasforge.experiment.setup import make_dataset, make_space
from nasforge.experiment.store import TrialStore
from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.onnx import ort_session
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import LatencyTable
from nasforge.modelfile import load_model
from nasforge.oneshot.ofa.specialize import SpecializeConfig, extreme_arch

runner = CliRunner()

SPACE_OPTIONS: dict[str, Any] = {
    "stages": [[8, 1, 1], [16, 2, 2]],
    "kernels": [3, 5],
    "expands": [1, 3],
    "widths": [0.5, 1.0],
    "activations": ["relu"],
    "se": [False],
    "stem_channels": 8,
    "head_features": 32,
}


def config(runs: Path, name: str = "ofa-tiny", ofa: bool = True) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "runs_dir": str(runs),
        "data": {"name": "mnist1d", "samples": 400},
        "space": {"name": "mobile", "options": SPACE_OPTIONS},
        "latency": {"threads": 1, "repeats": 10},
    }
    if ofa:
        cfg["ofa"] = {
            "train": {
                "phases": [
                    {"name": "full", "epochs": 1},
                    {"name": "kernel", "elastic": ["kernel"], "epochs": 1},
                    {
                        "name": "shrink",
                        "elastic": ["kernel", "depth", "expand", "width"],
                        "epochs": 1,
                    },
                ],
                "batch_size": 32,
                "bn_batches": 2,
                "bn_batch_size": 32,
            },
            "specialize": {"samples": 12, "evaluations": 40, "predictor": "gp"},
        }
    return cfg


def quiet() -> Console:
    return Console(file=open("/dev/null", "w"), width=200)  # noqa: SIM115


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained tiny OFA run and a small latency table of its space measured here."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ofa")
    cfg_file = root / "ofa.yaml"
    cfg_file.write_text(yaml.safe_dump(config(root / "runs")))
    res = runner.invoke(app, ["ofa", "train", str(cfg_file)])
    assert res.exit_code == 0, res.output
    run = root / "runs" / "ofa-tiny"
    assert (run / "supernet" / "final.pt").is_file()
    cfg = load_config(run / "config.yaml")
    space = make_space(cfg, make_dataset(cfg))
    table = root / "table.json"
    TableBuilder(
        space,
        "torch",
        1,
        BuildConfig(calibration_archs=4, held_out_archs=0),
        space_options=SPACE_OPTIONS,
        progress=False,
    ).build(table)
    return {"root": root, "run": run, "table": table, "space": space, "cfg": cfg}


def predictor(trained: dict[str, Any]) -> LatencyPredictor:
    return LatencyPredictor(LatencyTable.load(trained["table"], warn=False), trained["space"])


def specialise(trained: dict[str, Any], target_ms: float, **kw: Any) -> dict[str, Any]:
    args = {"backend": None, "table": trained["table"], "batch_size": None}
    args.update(finetune_epochs=0, label=None)
    args.update(kw)
    return specialize_run(trained["run"], target_ms, console=quiet(), **args)


def test_specialised_folder_is_like_best(trained: dict[str, Any]) -> None:
    lat = predictor(trained)
    space = trained["space"]
    lo, hi = (lat.predict(extreme_arch(space, big)) for big in (False, True))
    card = specialise(trained, hi * 2, finetune_epochs=1, label="roomy")
    out = trained["run"] / "specialized" / "roomy"
    assert {p.name for p in out.iterdir()} == {"model.pt", "arch.json", "model.onnx", "card.json"}
    assert json.loads((out / "card.json").read_text()) == json.loads(json.dumps(card, default=str))
    # the weights rebuild through the model file (what `nasforge compress` and `export` read)
    model = load_model(out)
    arch = space.make(card["arch"])
    assert json.loads((out / "arch.json").read_text())["arch"] == arch.to_dict()
    x = make_dataset(trained["cfg"]).x_test[:16]
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort_session((out / "model.onnx").read_bytes())
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # the card: predicted (from the table) and measured latency with its verdict, accuracies
    assert card["latency_ms_predicted"] == pytest.approx(lat.predict(arch))
    assert card["latency_ms"] > 0 and card["latency"]["backend"] == "torch"
    assert isinstance(card["latency_stability"]["stable"], bool)
    assert card["feasible"] and lo <= card["latency_ms_predicted"] <= hi * 2
    for key in ("val_acc_inherited", "val_acc_predicted", "val_acc_finetuned", "test_acc"):
        assert isinstance(card[key], float), key
    assert card["finetune_epochs"] == 1 and card["target_ms"] == hi * 2
    assert set(card["seconds"]) >= {"predictor", "search", "measure", "total"}
    assert {"cv_kendall_tau", "cv_mae"} <= set(card["accuracy_predictor"])
    assert card["search_cost_reference"]["cpu_seconds"] > 0
    assert card["onnx_max_abs_diff"] < 1e-3
    assert card["table"]["source"] == "given"


def test_hard_limit_is_respected_by_prediction(trained: dict[str, Any]) -> None:
    lat = predictor(trained)
    space = trained["space"]
    lo, hi = (lat.predict(extreme_arch(space, big)) for big in (False, True))
    assert lo < hi
    target = lo + 0.3 * (hi - lo)
    card = specialise(trained, target, label="tight", refine_rounds=0)  # the table alone
    assert card["feasible"]
    assert lat.predict(space.make(card["arch"])) <= target
    assert card["latency_ms_predicted"] <= target
    assert card["refinement"] == [] and card["limit_ms"] == target


def test_samples_are_made_once_and_reused(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    specialise(trained, 10.0, label="first")
    samples = trained["run"] / "ofa" / "samples.json"
    before = samples.read_text()
    record = json.loads(before)
    assert len(record["samples"]) == 12 and {"arch", "val_acc"} <= set(record["samples"][0])

    def no_sampling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the samples were made again")

    monkeypatch.setattr(ofa_cache, "sample_subnets", no_sampling)
    card = specialise(trained, 10.0, label="second")
    assert card["samples"]["reused"] is True
    assert samples.read_text() == before


@pytest.mark.slow  # ~10 s
def test_same_label_is_replaced_whole(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    specialise(trained, 10.0, label="again")
    card = specialise(trained, 0.01, label="again")  # nothing that fast: the fastest, said
    folder = trained["run"] / "specialized"
    again = json.loads((folder / "again" / "card.json").read_text())
    assert again["target_ms"] == 0.01 and card["target_ms"] == 0.01
    assert not card["feasible"] and card["above_limit"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging left

    def diverges(*args: Any, **kwargs: Any) -> Any:
        raise NasforgeError("loss became nan")

    # a specialisation that fails half-way leaves the label's previous folder as it was
    monkeypatch.setattr(ofa_specialize, "train_model", diverges)
    with pytest.raises(NasforgeError, match="nan"):
        specialise(trained, 10.0, label="again", finetune_epochs=1)
    assert json.loads((folder / "again" / "card.json").read_text()) == again
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # ~20 s on a busy host: a table measured on the target
def test_default_label_and_table_built_once_on_the_target(
    trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ofa_cache, "AUTO_TABLE", BuildConfig(calibration_archs=4, held_out_archs=0))
    card = specialise(trained, 10.0, table=None)
    assert card["label"] == "torch_b1_10ms" and card["table"]["source"] == "built"
    built = Path(card["table"]["path"])
    assert built.parent == trained["run"] / "ofa" / "tables" and built.is_file()
    stamp = built.stat().st_mtime_ns
    card = specialise(trained, 5.0, table=None)
    assert card["table"]["source"] == "cached" and built.stat().st_mtime_ns == stamp


def test_bad_inputs_exit_2_naming_the_thing(trained: dict[str, Any], tmp_path: Path) -> None:
    run = trained["run"]

    def fails(args: list[str], *names: str) -> None:
        res = runner.invoke(app, ["ofa", "specialize", *args])
        assert res.exit_code == 2, res.output
        text = " ".join(res.output.split())
        for name in names:
            assert name in text, (name, text)

    fails([str(tmp_path / "nope"), "--target-ms", "1"], "nope")
    fails([str(run), "--target-ms", "0"], "--target-ms")
    fails([str(run), "--target-ms", "-1"], "--target-ms")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    fails([str(run), "--target-ms", "1", "--table", str(garbage)], "garbage.json")
    # not an OFA run: a run directory whose config has no ofa: section
    other = tmp_path / "runs" / "plain"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text(yaml.safe_dump(config(tmp_path / "runs", "plain", False)))
    TrialStore(other / "trials.db").close()
    fails([str(other), "--target-ms", "1"], "config.yaml", "not an OFA run")
    # an OFA run not trained yet
    untrained = tmp_path / "runs" / "untrained"
    untrained.mkdir(parents=True)
    (untrained / "config.yaml").write_text(yaml.safe_dump(config(tmp_path / "runs", "untrained")))
    TrialStore(untrained / "trials.db").close()
    fails([str(untrained), "--target-ms", "1"], "final.pt")
    # the function itself refuses the same, naming them (whatever calls it)
    for target, name in ((0.0, "--target-ms"), (float("nan"), "--target-ms")):
        with pytest.raises(NasforgeError, match=name):
            specialise(trained, target)
    with pytest.raises(NasforgeError, match="garbage.json"):
        specialise(trained, 1.0, table=garbage)
    with pytest.raises(NasforgeError, match="not an OFA run"):
        specialize_run(other, 1.0, None, None, None, 0, None, quiet())
    # a table of another batch size than asked
    with pytest.raises(NasforgeError, match="batch size 1, not 8"):
        specialise(trained, 1.0, batch_size=8)


def test_report_and_show_list_the_specialisations(trained: dict[str, Any]) -> None:
    specialise(trained, 10.0, label="reported")
    run = trained["run"]
    report = json.loads((run / "report.json").read_text())
    section = report["ofa"]
    assert "oneshot" not in report
    phases = [p["name"] for p in section["training"]["phases"]]
    assert phases == ["full", "kernel", "shrink"]
    assert [e["phase"] for e in section["training"]["epochs"]] == phases
    rows = {r["label"]: r for r in section["specializations"]}
    card = json.loads((run / "specialized" / "reported" / "card.json").read_text())
    row = rows["reported"]
    assert row["target_ms"] == 10.0
    assert row["latency_ms_predicted"] == card["latency_ms_predicted"]
    assert row["latency_ms_measured"] == card["latency_ms"]
    assert row["test_acc"] == card["test_acc"]
    html = (run / "report.html").read_text()
    assert "Once-for-All" in html and "reported" in html
    res = runner.invoke(app, ["show", str(run)])
    assert res.exit_code == 0, res.output
    assert "ofa: supernet 3/3 epochs" in res.output and "reported: target 10 ms" in res.output


@pytest.mark.parametrize(
    ("objective", "measured", "stable", "said"),
    [
        ("limit", 0.95, True, "within +-10% of the 1 ms limit"),
        ("limit", 1.05, True, "ABOVE the 1 ms limit by 5.0%"),
        ("weighted", 1.05, True, "within +-10% of the 1 ms target"),
        ("limit", 1.30, True, "ABOVE the 1 ms limit by 30.0%"),
        ("limit", 0.50, True, "under the 1 ms limit by 50.0%"),
        ("limit", 0.98, False, "WARNING: the measured latency 0.980 ms is unstable"),
    ],
)
def test_summary_line_says_where_the_measurement_lands(
    objective: str, measured: float, stable: bool, said: str
) -> None:
    from io import StringIO

    from nasforge.experiment.ofa_specialize import WITHIN, _summary
    from nasforge.hardware.noise import Stability

    card = {
        "label": "x",
        "target_ms": 1.0,
        "objective": objective,
        "feasible": True,
        "latency_ms": measured,
        "latency_ms_predicted": 0.97,
        "latency": {"statistic": "min", "backend": "torch", "batch_size": 1},
        "latency_stability": Stability(stable, () if stable else ("host busy",)).to_dict(),
        "within_10pct": abs(measured - 1.0) <= WITHIN,
        "above_limit": measured > 1.0,
        "val_acc_inherited": 0.5,
        "val_acc_predicted": 0.5,
        "val_acc_finetuned": None,
        "test_acc": 0.5,
        "finetune_epochs": 0,
        "seconds": {
            "total": 1.0,
            "table": 0,
            "predictor": 0,
            "samples": 0,
            "search": 0,
            "measure": 0,
        },
    }
    buf = StringIO()
    _summary(card, Path("out"), Console(file=buf, width=400))
    assert said in " ".join(buf.getvalue().split())


def test_measured_refinement_rounds_are_on_the_card(trained: dict[str, Any]) -> None:
    """The contract, not the window (a busy host may land anywhere): every round recorded,
    the card's measured latency is the chosen round's, below the target when any was."""
    lat = predictor(trained)
    space = trained["space"]
    lo, hi = (lat.predict(extreme_arch(space, big)) for big in (False, True))
    target = lo + 0.5 * (hi - lo)
    card = specialise(trained, target, label="refined")
    rounds = card["refinement"]
    most = SpecializeConfig().refine_rounds  # the default; a busy host may use them all
    assert 1 <= len(rounds) <= most and card["refine_stop"] in ("inside", "rounds", "repeat")
    assert rounds[0]["limit_ms"] == pytest.approx(0.95 * target)  # the window's middle
    keys = {"limit_ms", "arch_key", "predicted_ms", "measured_ms", "unstable", "stability"}
    for i, r in enumerate(rounds, 1):
        assert keys <= set(r) and r["round"] == i and r["measured_ms"] > 0
        assert space.make(r["arch"]).key == r["arch_key"]
        assert isinstance(r["stability"]["stable"], bool)
        assert r["predicted_ms"] == pytest.approx(lat.predict(space.make(r["arch"])))
    chosen = [r for r in rounds if r["arch_key"] == card["arch_key"]]
    assert chosen and card["latency_from_round"] == chosen[-1]["round"]
    assert card["latency_ms"] == chosen[-1]["measured_ms"]  # the figure the choice was made on
    assert card["latency_stability"] == chosen[-1]["stability"]
    assert card["limit_ms"] == chosen[-1]["limit_ms"]
    if any(r["measured_ms"] <= target for r in rounds):
        assert card["feasible"] and card["latency_ms"] <= target and not card["above_limit"]
    else:
        assert not card["feasible"] and card["latency_ms"] == min(r["measured_ms"] for r in rounds)
    # the summary line counts them; the report lists them
    res = runner.invoke(
        app,
        ["ofa", "specialize", str(trained["run"]), "--target-ms", str(target), "--table",
         str(trained["table"]), "--name", "one-round", "--refine-rounds", "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "1 measured round" in " ".join(res.output.split())
    one = json.loads((trained["run"] / "specialized" / "one-round" / "card.json").read_text())
    assert len(one["refinement"]) == 1
    report = json.loads((trained["run"] / "report.json").read_text())
    rows = {r["label"]: r for r in report["ofa"]["specializations"]}
    assert rows["refined"]["refine_rounds"] == len(rounds)
    assert rows["one-round"]["refine_rounds"] == 1
    res = runner.invoke(
        app, ["ofa", "specialize", str(trained["run"]), "--target-ms", "1", "--refine-rounds", "-1"]
    )
    assert res.exit_code == 2 and "--refine-rounds" in " ".join(res.output.split())


@pytest.mark.slow  # ~1 min: calibration, INT8 export and speed-up intervals at two batch sizes
def test_a_specialised_subnet_is_compressible_like_any_searched_model(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    specialise(trained, 10.0, label="to-compress")
    folder = trained["run"] / "specialized" / "to-compress"
    out = tmp_path / "compressed"
    args = ["compress", str(folder), "--data", "mnist1d", "--prune", "none"]
    res = runner.invoke(app, [*args, "--quantize", "int8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]][-1] == "int8"
    assert (out / "model.int8.onnx").is_file()
