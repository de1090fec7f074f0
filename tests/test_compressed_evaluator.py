"""`evaluator.kind: compressed`: a candidate scored on its compressed, exported model (the
validation accuracy after compression and the latency measured on onnxruntime)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nasforge.data import load_dataset
from nasforge.errors import ConfigError
from nasforge.evaluators import EvaluatorContext, create_evaluator
from nasforge.evaluators.base import Fidelity
from nasforge.evaluators.compressed import (
    CompressedEvaluator,
    CompressionFailed,
    compress_config,
    compress_final,
    parse_options,
)
from nasforge.hardware.backends import BackendSpec
from nasforge.hardware.timing import TimingConfig
from nasforge.space import Arch
from nasforge.spaces import create_space
from nasforge.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE_OPTIONS = {
    "stages": [[8, 1, 1], [16, 2, 2]],
    "kernels": [3, 5],
    "expands": [1, 3],
    "activations": ["relu"],
    "se": [False],
}
FAST = TimingConfig(warmup=1, repeats=5, rounds=2)
OPTIONS = {"round_to": 4, "min_keep": 4, "calibration": 64}


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    ds = load_dataset("digits")  # a smaller train split: tests stay fast on a busy host
    return dataclasses.replace(ds, x_train=ds.x_train[:600], y_train=ds.y_train[:600])


@pytest.fixture(scope="module")
def space():  # type: ignore[no-untyped-def]
    return create_space("mobile", (1, 8, 8), 10, **SPACE_OPTIONS)


def _evaluator(space, digits, run_dir=None, **options):  # type: ignore[no-untyped-def]
    opts = parse_options({**OPTIONS, **options})
    train = TrainConfig(epochs=2, lr=0.1, seed=0)
    spec = BackendSpec("onnxruntime", threads=1)
    return CompressedEvaluator(space, digits, train, opts, spec, 1, FAST, run_dir)


def _joint(space, **compress: object) -> Arch:  # type: ignore[no-untyped-def]
    arch = space.sample(np.random.default_rng(3))
    return Arch({**arch, **{f"compress/{k}": v for k, v in compress.items()}})


@pytest.fixture(scope="module")
def scored(space, digits, tmp_path_factory):  # type: ignore[no-untyped-def]
    """One architecture scored uncompressed and pruned 50% + INT8 (artifacts kept)."""
    ev = _evaluator(space, digits, tmp_path_factory.mktemp("run"), keep_artifacts=True)
    plain = ev.evaluate(_joint(space, prune_ratio=0.0, bits=32))
    packed = ev.evaluate(_joint(space, prune_ratio=0.5, bits=8))
    return plain, packed


def test_pruned_int8_candidate_is_an_int8_onnx_model_timed_on_onnxruntime(scored) -> None:  # type: ignore[no-untyped-def]
    plain, packed = scored
    m = packed.metrics
    assert m["bits"] == 8 and m["prune_ratio"] == 0.5
    assert m["params"] < plain.metrics["params"] and m["flops"] < plain.metrics["flops"]
    assert m["size_bytes"] < plain.metrics["size_bytes"]
    assert m["latency_ms"] > 0 and m["latency_unstable"] in (0.0, 1.0)
    assert 0.0 <= m["val_acc"] <= 1.0 and math.isfinite(m["val_acc"])
    assert m["val_acc_float"] == pytest.approx(plain.metrics["val_acc_float"])  # same training
    comp = packed.info["compression"]
    assert comp["artifact"] == "model.int8.onnx"
    assert [s["stage"] for s in comp["stages"]] == ["prune_channels", "finetune", "quantize_int8"]
    assert packed.info["latency_backend"] == "onnxruntime"
    stability = packed.info["latency_stability"]
    assert stability["stable"] == (m["latency_unstable"] == 0.0)
    graph = onnx.load(str(Path(comp["dir"]) / "model.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "QuantizeLinear" in ops or "QLinearConv" in ops or "ConvInteger" in ops
    int8 = [t for t in graph.initializer if t.data_type in (onnx.TensorProto.INT8,)]
    assert int8, "the exported model holds no INT8 weights"


def test_float_unpruned_candidate_scores_the_float_model(scored) -> None:  # type: ignore[no-untyped-def]
    res = scored[0]
    assert res.metrics["val_acc"] == res.metrics["val_acc_float"]
    assert res.info["compression"]["artifact"] == "model.fp32.onnx"
    assert res.info["compression"]["stages"] == []


def test_plain_arch_and_fidelity_budget(space, digits) -> None:  # type: ignore[no-untyped-def]
    """An arch without compress labels is scored uncompressed; a Fidelity's epochs and data
    fraction are the training budget."""
    arch = space.sample(np.random.default_rng(1))
    res = _evaluator(space, digits).evaluate(arch, Fidelity(epochs=1, data_fraction=0.3))
    assert res.info["epochs"] == 1 and res.info["data_fraction"] == 0.3
    assert res.info["train_samples"] == round(0.3 * len(digits.y_train))
    assert len(res.info["curve"]) == 1 and res.info["curve"][0] == res.metrics["val_acc_float"]
    assert res.metrics["bits"] == 32 and res.metrics["prune_ratio"] == 0.0


class _Branchy(nn.Module):
    """A user's model with data-dependent control flow: the channel graph cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(x))
        if x.mean() > 0:
            x = torch.relu(self.b(x))
        return self.head(x.mean((2, 3)))


class _BranchySpace:
    name = "branchy"

    def build(self, arch: Arch) -> nn.Module:
        return _Branchy()


def test_failed_compression_is_a_one_line_failed_trial(digits) -> None:  # type: ignore[no-untyped-def]
    ev = _evaluator(_BranchySpace(), digits)
    arch = Arch({"w": 1, "compress/prune_ratio": 0.5, "compress/bits": 8})
    with pytest.raises(CompressionFailed) as info:
        ev.evaluate(arch)
    msg = str(info.value)
    assert "\n" not in msg and "prune_ratio 0.5, bits 8" in msg and "prune_channels" in msg
    assert isinstance(info.value, RuntimeError)  # executors record it without a traceback


def test_bad_settings_and_options_name_the_field(space, digits) -> None:  # type: ignore[no-untyped-def]
    ev = _evaluator(space, digits)
    with pytest.raises(ValueError, match="compress/bits"):
        ev.evaluate(_joint(space, bits=4))
    with pytest.raises(ValueError, match="compress/level"):
        ev.evaluate(_joint(space, level=2))
    with pytest.raises(ConfigError, match="evaluator.options.finetune_epoch"):
        parse_options({"finetune_epoch": 1})
    ctx = EvaluatorContext(space, digits, TrainConfig(), None)
    with pytest.raises(ConfigError, match="evaluator.options.backend"):
        create_evaluator("compressed", ctx, backend="torch")
    ev2 = create_evaluator("compressed", ctx)
    assert isinstance(ev2, CompressedEvaluator) and ev2.backend.label == "onnxruntime"
    assert "latency_ms" in ev2.produces() and "val_acc_float" in ev2.produces()


def test_compress_config_stages_follow_the_settings() -> None:
    opts = parse_options({})
    names = lambda s: [x.name for x in compress_config(s, opts).stage_specs()]  # noqa: E731
    assert names({"prune_ratio": 0.0, "bits": 32}) == []
    assert names({"prune_ratio": 0.3, "bits": 32}) == ["prune_channels", "finetune"]
    assert names({"prune_ratio": 0.0, "bits": 8}) == ["quantize_int8"]
    from nasforge.compression.config import CompressConfig

    base = CompressConfig.model_validate(
        {"prune": {"method": "channel"}, "target": {"batch_sizes": [1], "rounds": 2}}
    )
    cc = compress_config({"prune_ratio": 0.25, "bits": 8}, opts, base, seed=5)
    assert cc.target.batch_sizes == (1,) and cc.seed == 5
    assert cc.stage_specs()[0].options["ratio"] == 0.25


def test_compress_final_runs_the_pipeline_with_the_trial_settings(
    space, digits, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from nasforge.experiment.config import parse_config

    cfg = parse_config(
        {
            "data": {"name": "digits"},
            "evaluator": {"kind": "compressed", "options": OPTIONS},
            "compress": {"target": {"batch_sizes": [1], "rounds": 1}},
        }
    )
    model = space.build(space.sample(np.random.default_rng(0)))
    report = compress_final(cfg, model, digits, {"prune_ratio": 0.5, "bits": 8}, tmp_path)
    assert report["settings"] == {"prune_ratio": 0.5, "bits": 8}
    assert [s["name"] for s in report["stages"]][-1] == "int8"
    assert (tmp_path / "model.int8.onnx").is_file() and (tmp_path / "report.json").is_file()


def test_joint_search_through_the_experiment_with_the_process_executor(tmp_path: Path) -> None:
    from rich.console import Console

    from nasforge.experiment.config import parse_config
    from nasforge.experiment.runner import Experiment
    from nasforge.experiment.store import TrialStore

    cfg = parse_config(
        {
            "name": "joint",
            "runs_dir": str(tmp_path),
            "data": {"name": "digits", "limit": 500},
            "space": {"name": "mobile", "options": SPACE_OPTIONS},
            "search": {"trials": 2, "executor": "process", "workers": 1},
            "strategy": {"name": "random"},
            "train": {"epochs": 1, "lr": 0.1},
            "evaluator": {"kind": "compressed", "options": OPTIONS},
            "automl": {"compress": {"prune_ratio": [0.0, 0.5], "bits": [32, 8]}},
            "latency": {"backend": "onnxruntime", "repeats": 3, "warmup": 1},
            "objective": {"kind": "weighted_product", "target": 1.0},
        }
    )
    summary = Experiment(cfg, console=Console(quiet=True), progress=False).run(final=False)
    assert summary.trials_complete == 2 and summary.trials_failed == 0
    trials = TrialStore(tmp_path / "joint" / "trials.db").trials()
    for t in trials:
        assert {"val_acc", "val_acc_float", "latency_ms", "bits", "prune_ratio"} <= set(t.metrics)
        assert t.metrics["bits"] == t.arch["compress/bits"]
        assert t.metrics["prune_ratio"] == t.arch["compress/prune_ratio"]
