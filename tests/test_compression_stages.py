"""Extension points of compression, used from outside the package as a user would:
a toy stage registered with ``register_stage`` and run by name from a config, and toy layer
types made prunable with a leaf (coupling) rule and a cut rule."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from nasforge.compression import (
    CompressConfig,
    PipelineState,
    Stage,
    StageOutput,
    UnsupportedModelError,
    apply_plan,
    list_stages,
    mask_plan,
    register_stage,
    run_pipeline,
)
from nasforge.compression.pruning import (
    ChannelPruner,
    ChannelPruningConfig,
    DependencyGraph,
    GroupBuilder,
    MagnitudeImportance,
    Segment,
    keep_index,
    register_leaf_rule,
)
from nasforge.compression.stages import build_stages
from nasforge.data import load_dataset
from nasforge.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

# --- a toy stage -------------------------------------------------------------------------


@dataclass(frozen=True)
class ZeroSmallestConfig:
    fraction: float = 0.1


@dataclass(frozen=True)
class ZeroSmallestResult(StageOutput):
    zeroed: int = 0
    total: int = 0


class ZeroSmallest(Stage[ZeroSmallestConfig]):
    """Zeroes the smallest ``fraction`` of every conv/linear weight tensor."""

    config_cls = ZeroSmallestConfig

    def run(self, state: PipelineState) -> StageOutput:
        zeroed = total = 0
        with torch.no_grad():
            for m in state.model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    w = m.weight
                    k = int(self.config.fraction * w.numel())
                    idx = torch.argsort(w.abs().flatten(), stable=True)[:k]
                    w.view(-1)[idx] = 0.0
                    zeroed, total = zeroed + k, total + w.numel()
        state.pruned = True
        return ZeroSmallestResult(
            self.name, "zeroed", state.accuracy(state.model), zeroed=zeroed, total=total
        )


register_stage("zero_smallest", ZeroSmallest)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_a_registered_stage_runs_by_name_and_reports_its_typed_result(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert "zero_smallest" in list_stages()
    assert {"prune_channels", "imp", "distill", "quantize_int8", "qat", "int4"} <= set(
        list_stages()
    )
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = Net().eval()
    before = copy.deepcopy(model.state_dict())
    cfg = CompressConfig.model_validate(
        {
            "stages": [
                {"name": "zero_smallest", "fraction": 0.25},
                {"name": "finetune", "epochs": 0},
            ],
            "target": {"batch_sizes": [1], "rounds": 1},
        }
    )
    report = run_pipeline(model, ds, cfg, tmp_path, progress=lambda m: None)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    out = report.output("zero_smallest")
    assert isinstance(out, ZeroSmallestResult) and out.stage == "zero_smallest"
    n = model.conv.weight.numel(), model.fc.weight.numel()
    assert out.zeroed == int(0.25 * n[0]) + int(0.25 * n[1]) and out.total == sum(n)
    assert [s.name for s in report.stages] == ["original", "zeroed", "pruned"]
    assert report.stage("pruned").latency_ms and (tmp_path / "model.pruned.onnx").is_file()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["outputs"][0]["type"] == "ZeroSmallestResult"
    assert saved["outputs"][0]["zeroed"] == out.zeroed


def test_stage_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"compress\.stages\[1\]\.name: unknown stage 'nope'"):
        build_stages(CompressConfig.model_validate({"stages": ["finetune", "nope"]}))
    bad = {"stages": [{"name": "zero_smallest", "fractio": 0.2}]}
    with pytest.raises(ConfigError, match=r"compress\.stages\[0\]\.fractio: not an option"):
        build_stages(CompressConfig.model_validate(bad))
    bad = {"stages": [{"name": "prune_channels", "ratio": 2.0}]}
    with pytest.raises(ConfigError, match=r"compress\.stages\[0\]\.ratio"):
        build_stages(CompressConfig.model_validate(bad))
    with pytest.raises(ConfigError, match=r"compress\.prune\.method"):
        CompressConfig.model_validate({"stages": ["finetune"], "prune": {"method": "channel"}})


def test_register_stage_checks_the_class() -> None:
    with pytest.raises(TypeError, match="not a concrete Stage"):
        register_stage("bad", dict)  # type: ignore[arg-type]

    class NoConfig(Stage[None]):
        def run(self, state: PipelineState) -> StageOutput:
            raise AssertionError

    with pytest.raises(TypeError, match="config_cls"):
        register_stage("bad", NoConfig)


def test_sections_give_defaults_and_options_override() -> None:
    cfg = CompressConfig.model_validate(
        {
            "stages": [{"name": "prune_channels", "round_to": 4}, "distill", "int4"],
            "prune": {"ratio": 0.6, "round_to": 16},
            "finetune": {"epochs": 0},
        }
    )
    prune, distill, int4 = build_stages(cfg)
    assert (prune.config.ratio, prune.config.round_to) == (0.6, 4)
    assert int4.config.int4_group_size == 32
    recipe = cfg.finetune.train_config(cfg.seed)
    assert not distill.trains(recipe)
    assert any("without fine-tuning" in w for w in prune.check([distill, int4], recipe))
    assert not prune.check(
        [distill.__class__(distill.config.model_copy(update={"epochs": 1}))], recipe
    )


def test_legacy_sections_still_choose_the_stages() -> None:
    cfg = CompressConfig.model_validate({"prune": {"method": "imp"}, "distill": {"enabled": False}})
    assert [type(s).name for s in build_stages(cfg)] == ["imp", "finetune", "quantize_int8"]
    assert [s.name for s in CompressConfig().stage_specs()] == ["quantize_int8"]


# --- toy layer types ---------------------------------------------------------------------


class _Scale(nn.Module):
    """A learned per-channel scale; fx would trace it into a bare parameter access."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class ChannelScale(_Scale):
    pass


def _scale_rule(b: GroupBuilder, name: str, m: nn.Module, lay: list[Segment]) -> list[Segment]:
    b.add_member(lay, name, "scale")  # same channels in and out
    return lay


# One registration: coupling + where the channels are (the default cut slices along it).
register_leaf_rule(ChannelScale, _scale_rule, channel_dim=lambda kind, attr: 0)


class InOutLinear(nn.Module):
    """A linear layer storing its weight as (in, out), the opposite of nn.Linear."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def _inout_rule(b: GroupBuilder, name: str, m: nn.Module, lay: list[Segment]) -> list[Segment]:
    b.add_member(lay, name, "in")
    out = [Segment(b.new_space(m.n_out, name), m.n_out)]  # type: ignore[arg-type]
    b.add_member(out, name, "out")
    return out


def _inout_dim(kind: str, attr: str) -> int | None:
    if attr == "weight":
        return 0 if kind == "in" else 1
    return 0 if kind == "out" else None


def _inout_cut(m: nn.Module, kind: str, drop: list[int]) -> None:
    dim = _inout_dim(kind, "weight")
    assert dim is not None
    idx = keep_index(m.weight.shape[dim], drop)  # type: ignore[union-attr]
    with torch.no_grad():
        m.weight = nn.Parameter(m.weight.index_select(dim, idx).clone())  # type: ignore[union-attr]
        if kind == "out":
            m.bias = nn.Parameter(m.bias[idx].clone())  # type: ignore[index]
            m.n_out = len(idx)
        else:
            m.n_in = len(idx)


register_leaf_rule(InOutLinear, _inout_rule, cut=_inout_cut, channel_dim=_inout_dim)


class UncutScale(_Scale):  # not a ChannelScale: it does not inherit its cut rule
    pass


register_leaf_rule(UncutScale, _scale_rule)  # coupling only: no way to cut it


class ToyNet(nn.Module):
    def __init__(self, scale: type[_Scale] = ChannelScale) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.scale = scale(16)
        self.conv2 = nn.Conv2d(16, 24, 3, padding=1)
        self.lin = InOutLinear(24, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.scale(self.bn(self.conv1(x))))
        y = torch.relu(self.conv2(y)).mean((2, 3))
        return self.head(torch.relu(self.lin(y)))


def test_a_registered_layer_type_is_pruned_consistently() -> None:
    torch.manual_seed(0)
    model = ToyNet().eval()
    shape = (1, 8, 8)
    graph = DependencyGraph.build(model, shape)
    members = {m.spec() for g in graph.prunable for m in g.members}
    assert {"scale:scale@0", "lin:in@0", "lin:out@0", "head:in@0"} <= members
    cfg = ChannelPruningConfig(ratio=0.5, target="channels", scope="layer", round_to=1, min_keep=1)
    plan = ChannelPruner(MagnitudeImportance(1), cfg).plan(model, shape)
    pruned = apply_plan(copy.deepcopy(model), plan)
    assert pruned.scale.scale.shape == (8,) and pruned.conv2.in_channels == 8
    assert tuple(pruned.lin.weight.shape) == (12, 6) and pruned.head.in_features == 6
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (pruned(x) - mask_plan(model, plan)(x)).abs().max().item() < 1e-4


def test_a_layer_without_a_cut_rule_is_named_and_left_untouched() -> None:
    torch.manual_seed(0)
    model = ToyNet(UncutScale).eval()
    cfg = ChannelPruningConfig(ratio=0.5, target="channels", scope="layer", round_to=1, min_keep=1)
    plan = ChannelPruner(MagnitudeImportance(1), cfg).plan(model, (1, 8, 8))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedModelError, match=r"layer 'scale' \(UncutScale\): no cut rule"):
        apply_plan(model, plan)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
