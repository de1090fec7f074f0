"""The ``automl:`` section (issue 15): recipe and compression dimensions, checked against the
``train:`` section; its wiring into the run (joint space, multi-fidelity strategy's epochs,
no latency prefilter for compressed candidates); doctor's findings; the final retrain with
the winning recipe, saving the plain architecture."""

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
from nasforge.errors import ConfigError
from nasforge.experiment.automl_config import STANDARD_RECIPE, AutomlSection
from nasforge.experiment.config import parse_config
from nasforge.experiment.doctor import diagnose
from nasforge.experiment.setup import build_run, make_space, make_strategy
from nasforge.modelfile import load_model, read_description
from nasforge.space import Arch, Categorical, Float, Int
from nasforge.space.joint import JointSpace
from nasforge.strategies import STRATEGIES, register_strategy
from nasforge.strategies.fidelity_base import FidelityStrategy
from nasforge.strategies.random import RandomStrategy

runner = CliRunner()

BASE: dict[str, Any] = {
    "data": {"name": "digits", "limit": 200},
    "latency": {"mode": "flops"},
    "search": {"executor": "inline", "trials": 2},
}


def config(**sections: Any) -> Any:
    return parse_config({**BASE, **sections})


def refused(automl: dict[str, Any], *expected: str) -> str:
    with pytest.raises(ConfigError) as info:
        config(automl=automl)
    msg = str(info.value)
    assert "\n" not in msg, msg  # one line per problem: one problem here
    for text in expected:
        assert text in msg, msg
    return msg


def test_recipe_entries_become_typed_dimensions() -> None:
    cfg = config(
        automl={
            "recipe": {
                "lr": {"low": "1e-3", "high": 0.1, "log": True},  # YAML 1.1 reads 1e-3 as text
                "optimizer": ["sgd", "adamw"],
                "epochs": {"low": 1, "high": 3},  # an integer field: an integer range
                "label_smoothing": [0, 0.1],
            },
            "compress": {"prune_ratio": [0, 0.25, 0.5], "bits": [32, 8]},
        }
    )
    assert cfg.automl is not None
    dims = {d.label: d for d in cfg.automl.dimensions()}
    assert list(dims) == [
        "recipe/lr",
        "recipe/optimizer",
        "recipe/epochs",
        "recipe/label_smoothing",
        "compress/prune_ratio",
        "compress/bits",
    ]
    lr = dims["recipe/lr"]
    assert isinstance(lr, Float) and lr.log and lr.low == pytest.approx(1e-3)
    assert isinstance(dims["recipe/epochs"], Int) and dims["recipe/epochs"].high == 3
    assert dims["recipe/label_smoothing"] == Categorical(
        "recipe/label_smoothing", choices=(0.0, 0.1)
    )
    assert isinstance(dims["compress/bits"], Categorical)
    assert dims["compress/bits"].choices == (32, 8)


@pytest.mark.parametrize(
    ("automl", "expected"),
    [
        ({"recipe": {"optimizer": ["sgd", "adam"]}}, ["automl.recipe.optimizer", "'adam'"]),
        ({"recipe": {"lrr": [0.1]}}, ["automl.recipe.lrr", "did you mean 'lr'"]),
        ({"recipe": {"lr": [0.1, -0.1]}}, ["automl.recipe.lr", "-0.1"]),
        ({"recipe": {"lr": {"low": 0.1, "high": 0.01}}}, ["automl.recipe.lr", "below high"]),
        ({"recipe": {"lr": {"low": 0.1, "hi": 0.3}}}, ["automl.recipe.lr", "did you mean 'high'"]),
        ({"recipe": {"batch_size": {"low": 16, "high": 128, "log": True}}}, ["list the choices"]),
        ({"recipe": {"epochs": {"low": 1, "high": 3, "int": False}}}, ["automl.recipe.epochs.int"]),
        ({"recipe": {"optimizer": {"low": 0, "high": 1}}}, ["not a number"]),
        ({"recipe": {"lr": 0.1}}, ["automl.recipe.lr", "belongs in train.lr"]),
        ({"recipe": {"lr": []}}, ["automl.recipe.lr", "empty"]),
        ({"recipe": {"optimizer": ["sgd", "sgd"]}}, ["repeated choice"]),
        ({"recipe": {"step_every_epochs": [None, 1.0]}}, ["null is no choice"]),
        ({"recipe": {"cosine": [True, False]}}, ["automl.recipe.cosine", "train.schedule"]),
        ({"recipe": "standart"}, ["automl.recipe", "did you mean 'standard'"]),
        ({"compress": {"bits": [16]}}, ["automl.compress.bits", "32, 8"]),
        ({"compress": {"prune_ratio": [0.5, 1.0]}}, ["automl.compress.prune_ratio", "[0, 1)"]),
        ({"compress": {"prune": [0.5]}}, ["automl.compress.prune", "did you mean 'prune_ratio'"]),
        ({"compress": {"bits": 8}}, ["automl.compress.bits", "list"]),
        ({"search": [1]}, ["automl.search", "unknown field"]),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_field(
    automl: dict[str, Any], expected: list[str]
) -> None:
    refused(automl, *expected)


def test_the_cli_refuses_a_bad_automl_section_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "automl": {"recipe": {"optimizer": ["sgd", "adam"]}}}))
    for command in ("search", "doctor"):
        res = runner.invoke(app, [command, str(cfg), "--runs-dir", str(tmp_path)][:2])
        assert res.exit_code == 2, res.output
        assert "automl.recipe.optimizer" in res.output and "Traceback" not in res.output


def test_standard_preset_expands_in_the_saved_config() -> None:
    cfg = config(automl={"recipe": "standard"})
    assert cfg.automl is not None
    assert list(cfg.automl.recipe) == list(STANDARD_RECIPE)
    # the saved config holds the expanded ranges, and reads back to the same section
    again = parse_config(yaml.safe_load(cfg.to_yaml()))
    assert again.automl == cfg.automl
    labels = [d.label for d in cfg.automl.dimensions()]
    assert "recipe/lr" in labels and "recipe/schedule" in labels


def test_a_value_is_checked_against_the_runs_own_train_section() -> None:
    section = AutomlSection(recipe={"batch_size": [16, 32]})
    # valid alone; the run's train section is valid too; nothing contradicts
    section.check_train(config().train)
    with pytest.raises(ValueError, match=r"automl\.recipe\.batch_size"):
        AutomlSection(recipe={"batch_size": [1, 32]})


def test_make_space_wraps_in_a_joint_space_and_pins_joint_labels() -> None:
    plain = config()
    assert not isinstance(make_space(plain, None), JointSpace)
    cfg = config(
        automl={"recipe": {"optimizer": ["sgd", "adamw"], "lr": {"low": 0.01, "high": 0.1}}},
        space={"name": "mobile", "fixed": {"recipe/optimizer": "adamw", "stage0/depth": 1}},
    )
    objects = build_run(cfg)
    space = objects.space
    assert isinstance(space, JointSpace)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(20)]
    assert {a["recipe/optimizer"] for a in archs} == {"adamw"}
    assert {a["stage0/depth"] for a in archs} == {1}
    assert len({a["recipe/lr"] for a in archs}) == 20
    # a joint label without an automl: section is an unknown label
    with pytest.raises(ConfigError, match=r"space\.fixed: recipe/optimizer: no automl"):
        build_run(config(space={"name": "mobile", "fixed": {"recipe/optimizer": "adamw"}}))


class _LadderStrategy(FidelityStrategy, RandomStrategy):
    """A registered multi-fidelity strategy, to see what setup passes it."""

    def __init__(self, space: Any, seed: int = 0, constraint: Any = None, **options: Any):
        super().__init__(space, seed=seed, constraint=constraint)
        self.options = options


@pytest.fixture
def ladder() -> Any:
    register_strategy("test_ladder", _LadderStrategy)
    yield "test_ladder"
    STRATEGIES.pop("test_ladder")


def test_a_multi_fidelity_strategy_gets_the_train_epochs_as_its_max(ladder: str) -> None:
    cfg = config(strategy={"name": ladder}, train={"epochs": 4})
    strategy = make_strategy(build_run(cfg))
    assert strategy.options == {"max_epochs": 4}  # type: ignore[attr-defined]
    cfg = config(strategy={"name": ladder, "options": {"max_epochs": 9}}, train={"epochs": 4})
    assert make_strategy(build_run(cfg)).options == {"max_epochs": 9}  # type: ignore[attr-defined]
    assert "max_epochs" not in make_strategy(build_run(config())).__dict__.get("options", {})


def test_searched_epochs_with_a_multi_fidelity_strategy_are_refused(ladder: str) -> None:
    cfg = config(strategy={"name": ladder}, automl={"recipe": {"epochs": [1, 2]}})
    with pytest.raises(ConfigError, match=r"^automl\.recipe\.epochs: .*test_ladder"):
        build_run(cfg)
    findings = diagnose(cfg)
    errors = [f for f in findings if f.level == "error"]
    assert [f.field for f in errors] == ["automl.recipe.epochs"]  # once, not twice
    # with a plain strategy: allowed, and doctor says the final keeps final.epochs
    plain = config(automl={"recipe": {"epochs": [1, 2]}})
    build_run(plain)
    assert any(f.field == "final.epochs" and f.level == "info" for f in diagnose(plain))


def test_compress_dims_need_a_compressing_evaluator_and_name_the_anti_patterns() -> None:
    cfg = config(automl={"compress": {"prune_ratio": [0.0, 0.6], "bits": [32, 8]}})
    with pytest.raises(ConfigError, match=r"^automl\.compress: .*evaluator\.kind: compressed"):
        build_run(cfg)
    findings = {(f.level, f.field) for f in diagnose(cfg, build=False)}
    assert ("error", "automl.compress") in findings
    assert ("warning", "objective.kind") in findings  # compression only loses accuracy there
    noft = config(
        automl={"compress": {"prune_ratio": [0.0, 0.6]}},
        evaluator={"kind": "table", "options": {"finetune_epochs": 0}},
    )
    warned = {(f.level, f.field) for f in diagnose(noft, build=False)}
    assert ("warning", "evaluator.options.finetune_epochs") in warned
    mild = config(
        automl={"compress": {"prune_ratio": [0.0, 0.3]}},
        evaluator={"kind": "table", "options": {"finetune_epochs": 0}},
    )
    assert ("warning", "evaluator.options.finetune_epochs") not in {
        (f.level, f.field) for f in diagnose(mild, build=False)
    }


def test_one_choice_dimension_is_named() -> None:
    cfg = config(automl={"recipe": {"optimizer": ["adamw"]}})
    assert any(
        f.field == "automl.recipe.optimizer" and f.level == "warning"
        for f in diagnose(cfg, build=False)
    )


def test_no_latency_prefilter_for_compressed_candidates(nb201_csv: Path) -> None:
    table = {"preset": "nb201_cifar10", "device": "pixel3", "path": str(nb201_csv)}
    base = {
        "space": {"name": "nb201"},
        "evaluator": {"kind": "table", "table": table},
        "objective": {"kind": "constraint", "target": 20.0},
    }
    assert build_run(parse_config(base)).constraint is not None
    joint = {**base, "automl": {"compress": {"bits": [32, 8]}}}
    assert build_run(parse_config(joint)).constraint is None  # not predicted: measured
    recipe_only = {**base, "automl": {"recipe": {"lr": [0.01, 0.1]}}}
    assert build_run(parse_config(recipe_only)).constraint is not None


def test_joint_search_retrains_the_winner_with_its_recipe(tmp_path: Path) -> None:
    from nasforge.experiment.runner import Experiment

    cfg = config(
        name="joint",
        space={"name": "mobile", "fixed": {f"stage{i}/depth": 1 for i in range(4)}},
        search={"executor": "inline", "trials": 2},
        train={"epochs": 1, "batch_size": 32},
        automl={"recipe": {"optimizer": ["sgd", "adamw"], "lr": {"low": 0.005, "high": 0.05}}},
        final={"epochs": 1, "export_onnx": False},
        strategy={"name": "random"},
    )
    Experiment(cfg, tmp_path / "joint", console=Console(quiet=True), progress=False).run()
    best = tmp_path / "joint" / "best"
    card = json.loads((best / "card.json").read_text())
    chosen = card["joint_arch"]
    assert card["recipe_searched"] == {
        "lr": chosen["recipe/lr"],
        "optimizer": chosen["recipe/optimizer"],
    }
    assert card["recipe"]["optimizer"] == chosen["recipe/optimizer"]
    assert card["recipe"]["lr"] == chosen["recipe/lr"]
    assert card["recipe"]["epochs"] == card["final_epochs"] == 1
    assert not any(k.startswith("recipe/") for k in card["arch"])
    # the saved model is the plain architecture: it loads with the plain space
    assert not any(k.startswith("recipe/") for k in read_description(best / "arch.json")["arch"])
    model = load_model(best)
    assert model(torch.zeros((2, *card["input_shape"]))).shape == (2, 10)


def test_the_automl_example_runs_small(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "automl.yaml"
    res = runner.invoke(app, ["doctor", str(example)])
    assert res.exit_code == 0 and "error" not in res.output and "warning" not in res.output
    cfg = yaml.safe_load(example.read_text())
    cfg["data"]["samples"] = 400
    cfg["search"].update(trials=2, executor="inline")
    cfg["train"]["epochs"] = 1  # ASHA's one rung: 1 epoch
    cfg["latency"].update(repeats=3, warmup=1)
    cfg["final"] = {"epochs": 1, "export_onnx": False}
    small = tmp_path / "automl.yaml"
    small.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["search", str(small), "--runs-dir", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "automl-mnist1d" / "best" / "card.json").read_text())
    assert set(card["recipe_searched"]) == set(STANDARD_RECIPE)
    assert card["search_metrics"]["budget_epochs"] == 1  # the budget is on the winner's row


@pytest.mark.slow  # trains, prunes, fine-tunes, quantizes and times on onnxruntime (~1 min)
def test_a_joint_compression_winner_is_compressed_with_its_settings(tmp_path: Path) -> None:
    from nasforge.experiment.runner import Experiment

    cfg = config(
        name="jointc",
        space={"name": "mobile", "fixed": {f"stage{i}/depth": 1 for i in range(4)}},
        strategy={"name": "random"},
        train={"epochs": 1, "batch_size": 32},
        evaluator={"kind": "compressed", "options": {"calibration": 32}},
        automl={"recipe": {"lr": [0.02, 0.05]}, "compress": {"prune_ratio": [0.5], "bits": [8]}},
        objective={"kind": "weighted_product", "target": 1.0},
        latency={"backend": "onnxruntime", "repeats": 3, "warmup": 1, "mode": "measure"},
        final={"epochs": 1},
    )
    Experiment(cfg, tmp_path / "jointc", console=Console(quiet=True), progress=False).run()
    best = tmp_path / "jointc" / "best"
    card = json.loads((best / "card.json").read_text())
    assert card["compression"]["settings"] == {"prune_ratio": 0.5, "bits": 8}
    assert card["joint_arch"]["compress/bits"] == 8
    assert not any(k.startswith("compress/") for k in card["arch"])
    assert (best / "model.int8.onnx").is_file()
    assert load_model(best)(torch.zeros((2, 1, 8, 8))).shape == (2, 10)


def test_the_final_is_chosen_among_full_fidelity_trials(tmp_path: Path) -> None:
    from nasforge.experiment.final import select_final
    from nasforge.experiment.store import TrialStore
    from nasforge.objectives import Objective

    rows = [  # (budget epochs, score): a cheap rung scored best, by a non-comparable measure
        (1, 0.95),
        (3, 0.70),
        (3, 0.80),
        (1, 0.60),
    ]
    with TrialStore(tmp_path / "trials.db") as store:
        for i, (epochs, score) in enumerate(rows):
            tid = store.add_trial(Arch({"x": i}))
            metrics = {"val_acc": score, "budget_epochs": float(epochs), "rung": epochs // 3}
            store.finish_trial(tid, "complete", metrics, score)
        chosen = select_final(store, Objective("accuracy"), top_k=2)
    assert [t.metrics["val_acc"] for t in chosen] == [0.80, 0.70]
