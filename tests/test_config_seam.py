"""One config seam: the pydantic sections are the single source of defaults and checks, the
run's objects are built from them once (``build_run``) and passed on, and names resolved by a
registry (backend, evaluator) are checked against the registry, plugins included."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from nasforge.errors import ConfigError
from nasforge.experiment.config import ExperimentConfig, TrainSection, parse_config
from nasforge.experiment.setup import build_run, make_evaluator, make_strategy, train_config
from nasforge.strategies import create_strategy
from nasforge.testing import builtin_strategies, toy_space
from nasforge.train import TrainConfig


def test_train_config_defaults_are_the_sections_defaults() -> None:
    section = TrainSection()
    recipe = TrainConfig()
    for name in TrainSection.model_fields:
        assert getattr(recipe, name) == getattr(section, name), name
    assert ExperimentConfig().train == section
    built = train_config(ExperimentConfig(seed=7))
    assert built == TrainConfig(seed=7)
    assert built.epochs == TrainSection.model_fields["epochs"].default


def test_train_config_keeps_the_sections_checks() -> None:
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)


def test_a_config_field_reaches_the_built_objects_unchanged() -> None:
    cfg = parse_config(
        {
            "seed": 3,
            "data": {"name": "digits", "limit": 200},
            "train": {"epochs": 4, "lr": 0.2, "augment": "shift"},
            "latency": {"mode": "flops"},
            "search": {"executor": "inline"},
        }
    )
    objects = build_run(cfg)
    assert objects.train == TrainConfig(epochs=4, lr=0.2, augment="shift", seed=3)
    assert objects.latency is None and objects.constraint is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        objects.train = TrainConfig()  # type: ignore[misc]
    evaluator = make_evaluator(cfg, objects=objects)
    assert evaluator.train is objects.train  # type: ignore[attr-defined]  # passed on, not rebuilt
    strategy = make_strategy(objects)
    assert strategy.seed == 3 and strategy.constraint is None


def test_every_strategy_takes_its_constraint_at_construction() -> None:
    def constraint(arch) -> bool:
        return int(arch["d0"]) != 0

    for name in builtin_strategies():  # test modules register toys (imported by every worker)
        if name == "proxy_filter":  # scores built networks; same check in test_proxies.py
            continue
        strategy = create_strategy(name, toy_space(), seed=0, constraint=constraint)
        assert strategy.constraint is constraint, name
        if getattr(strategy, "multi_fidelity", False):  # the loop asks these per budget
            asked = [strategy.ask_trial().arch for _ in range(4)]
        else:
            asked = strategy.ask(4)
        assert all(int(a["d0"]) != 0 for a in asked), name


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"latency": {"mode": "predict"}}, "latency.table: latency.mode 'predict' needs"),
        ({"latency": {"backend": "tpu"}}, "latency.backend: unknown backend 'tpu'"),
        ({"latency": {"backend": "onnxruntim"}}, "did you mean 'onnxruntime'"),
        ({"evaluator": {"kind": "zero_cost"}}, "evaluator.kind: unknown evaluator 'zero_cost'"),
        ({"objective": {"kind": "constraint"}}, "objective.target: constraint needs a positive"),
        ({"objective": {"kind": "paretto"}}, "objective.kind: expected one of accuracy"),
        (
            {"latency": {"mode": "flops"}, "objective": {"kind": "weighted_product", "target": 1}},
            "objective.cost_metric: latency.mode 'flops' measures no latency_ms",
        ),
    ],
)
def test_checks_live_in_the_config(section: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(section, "c.yaml")
    assert expected in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_flops_mode_with_mflops_as_the_cost_is_accepted() -> None:
    cfg = parse_config(
        {
            "latency": {"mode": "flops"},
            "objective": {"kind": "weighted_product", "target": 5.0, "cost_metric": "mflops"},
        }
    )
    assert cfg.objective.cost_metric == "mflops"


def test_a_backend_a_plugin_registers_is_accepted_by_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "seam_backend_plugin.py").write_text(
        textwrap.dedent(
            """
            from nasforge.hardware.backends import TorchBackend, register_backend

            class SeamBackend(TorchBackend):
                '''The torch backend under another name: a user's target.'''

            register_backend("seamtoy", SeamBackend, replace=True)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="unknown backend 'seamtoy'"):
        parse_config({"latency": {"backend": "seamtoy"}})
    cfg = parse_config({"plugins": ["seam_backend_plugin"], "latency": {"backend": "seamtoy"}})
    assert cfg.latency.backend == "seamtoy"
    from nasforge.plugins import registrations

    assert registrations("backend")[("backend", "seamtoy")] == "seam_backend_plugin"
