"""Channel dependency graph and structured pruning: differential tests against masking."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from nasforge.compression import (
    ChannelPruner,
    ChannelPruningConfig,
    DependencyGraph,
    PlanMismatchError,
    PruningPlan,
    UnsupportedModelError,
    apply_plan,
    mask_plan,
)
from nasforge.compression.pruning import (
    BNScaleImportance,
    ChannelLatencyTable,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
    build_latency_table,
    latency_aware_plan,
    recalibrate_bn,
)
from nasforge.compression.zoo import mobilenet_v2, resnet
from nasforge.hardware import count_flops
from nasforge.spaces.mobile import MobileSpace

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


class ConcatNet(nn.Module):
    """Two branches concatenated, BN + depthwise over the concatenation, global pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.pw = nn.Conv2d(24, 16, 1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = self.dw(torch.relu(self.bn(y)))
        return self.fc(self.pw(y).mean((2, 3)))


def _check_equal(model: nn.Module, plan: PruningPlan, shape: tuple[int, ...]) -> nn.Module:
    pruned = apply_plan(copy.deepcopy(model), plan)
    masked = mask_plan(model, plan)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (pruned(x) - masked(x)).abs().max().item()
    assert diff < TOL, diff
    return pruned


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_mobile_space_pruned_equals_masked(seed: int, scope: str) -> None:
    space = MobileSpace((1, 28, 28), 10)
    model = _randomize_bn(space.build(space.sample(np.random.default_rng(seed))), seed)
    pruner = ChannelPruner(MagnitudeImportance(1), ChannelPruningConfig(0.5, scope=scope))
    plan = pruner.plan(model, (1, 28, 28))
    pruned = _check_equal(model, plan, (1, 28, 28))
    assert plan.channels_removed > 0
    measured = 1 - count_flops(pruned, (1, 28, 28)) / count_flops(model, (1, 28, 28))
    assert abs(measured - plan.macs_reduction) < 0.02  # the graph's estimate is the real FLOPs
    assert measured >= 0.45


def test_mobile_space_1d_signals() -> None:
    space = MobileSpace((1, 40), 10)
    model = _randomize_bn(space.build(space.sample(np.random.default_rng(3))))
    pruner = ChannelPruner(MagnitudeImportance(2), ChannelPruningConfig(0.4, scope="layer"))
    plan = pruner.plan(model, (1, 40))
    _check_equal(model, plan, (1, 40))


@pytest.mark.parametrize(
    "make",
    [lambda: mobilenet_v2(se=True), lambda: resnet(), ConcatNet],
    ids=["mobilenet_v2_se", "resnet", "concat"],
)
@pytest.mark.parametrize("imp", ["l1", "bn", "random"])
def test_reference_models_pruned_equals_masked(make, imp: str) -> None:  # type: ignore[no-untyped-def]
    model = _randomize_bn(make())
    importance = {
        "l1": MagnitudeImportance(1),
        "bn": BNScaleImportance(),
        "random": RandomImportance(0),
    }[imp]
    cfg = ChannelPruningConfig(0.5, round_to=4, min_keep=2)
    plan = ChannelPruner(importance, cfg).plan(model, (1, 28, 28))
    _check_equal(model, plan, (1, 28, 28))


def test_residual_groups_are_coupled() -> None:
    graph = DependencyGraph.build(resnet(), (1, 28, 28))
    g = graph.by_id["conv1"]  # stem + layer1 residual stream are one group
    modules = {m.module for m in g.members}
    assert {
        "conv1",
        "bn1",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer2.0.conv1",
        "layer2.0.downsample.0",
    } <= modules
    assert graph.by_id["fc"].frozen and graph.by_id["fc"].reason == "model output"


def test_taylor_importance_runs_and_plan_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = mobilenet_v2().eval()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    plan = ChannelPruner(TaylorImportance(model, [(x, y)])).plan(model, (1, 28, 28))
    plan.save(tmp_path / "plan.json")
    again = PruningPlan.load(tmp_path / "plan.json")
    assert again == plan
    _check_equal(model, again, (1, 28, 28))


def test_bn_aware_magnitude_ignores_weights_that_bn_renormalises() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(resnet(width=8))
    graph = DependencyGraph.build(model, (1, 28, 28))
    g = graph.by_id["layer1.0.conv1"]  # conv1 -> bn1 -> relu -> conv2: one hidden group
    before = MagnitudeImportance(1).scores(model, g)
    plain_before = MagnitudeImportance(1, bn_aware=False).scores(model, g)
    with torch.no_grad():
        model.layer1[0].conv1.weight.mul_(torch.rand(8, 1, 1, 1) * 10)  # BN undoes this
    assert torch.allclose(MagnitudeImportance(1).scores(model, g), before)
    assert not torch.allclose(MagnitudeImportance(1, bn_aware=False).scores(model, g), plain_before)
    with torch.no_grad():
        model.layer1[0].bn1.weight[3] = 0.0  # channel 3 now delivers only a constant
    assert int(MagnitudeImportance(1).scores(model, g).argmin()) == 3


def test_recalibrated_bn_holds_the_batch_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )
    x = torch.randn(64, 1, 6, 6) * 3 + 1
    model(x)
    recalibrate_bn(model, [x[:32], x[32:]])
    assert not model.training
    with torch.no_grad():
        h = model[0](x)
    bn = model[1]
    assert torch.allclose(bn.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1  # restored


def test_grouped_conv_is_frozen_not_wrong() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.Conv2d(8, 8, 3, groups=2),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    graph = DependencyGraph.build(model, (1, 12, 12))
    assert graph.by_id["0"].frozen and "grouped convolution" in graph.by_id["0"].reason
    plan = ChannelPruner(MagnitudeImportance()).plan(model, (1, 12, 12))
    assert all(c.group not in ("0", "1") for c in plan.cuts)


class Chunky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = torch.chunk(self.conv(x), 2, dim=1)
        return self.head(a)


class Viewer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 10 * 10 // 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).view(x.shape[0] * 2, -1))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) if x.sum() > 0 else x


@pytest.mark.parametrize(
    "model,layer", [(Chunky(), "chunk"), (Viewer(), "view"), (Branchy(), "Branchy")]
)
def test_unsupported_models_raise_naming_the_layer(model: nn.Module, layer: str) -> None:
    with pytest.raises(UnsupportedModelError, match=layer):
        ChannelPruner(MagnitudeImportance()).plan(model, (1, 12, 12))


def test_plan_for_another_model_is_refused() -> None:
    plan = ChannelPruner(MagnitudeImportance()).plan(mobilenet_v2(), (1, 28, 28))
    with pytest.raises(PlanMismatchError, match="group"):
        apply_plan(resnet(), plan)


def test_latency_aware_plan_meets_a_flops_target() -> None:
    model = resnet(width=8).eval()

    def mflops(m: nn.Module) -> float:  # a deterministic stand-in for measured latency
        return count_flops(m, (1, 28, 28)) / 1e6

    imp = MagnitudeImportance()
    table = build_latency_table(
        model, (1, 28, 28), mflops, imp, fractions=(0.5,), round_to=2, min_keep=2
    )
    table = ChannelLatencyTable.from_json(table.to_json())
    plan = latency_aware_plan(
        model,
        (1, 28, 28),
        imp,
        table,
        0.6 * table.base_ms,
        ChannelPruningConfig(round_to=2, min_keep=2),
    )
    pruned = _check_equal(model, plan, (1, 28, 28))
    predicted = float(plan.notes[0].split()[1])
    assert predicted <= 0.6 * table.base_ms
    # The table is additive; coupled layers (in x out channels) make the truth a bit higher.
    assert mflops(pruned) <= 0.6 * table.base_ms * 1.15
    assert mflops(pruned) >= 0.4 * table.base_ms  # takes only what the target needs
