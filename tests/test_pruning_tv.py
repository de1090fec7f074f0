"""Channel pruning of the torchvision-style zoo: EfficientNet (SE, SiLU, stochastic depth)
and ViT (heads' dims and MLP width through the decomposed attention), blocks kept equal."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from nasforge.compression import zoo
from nasforge.compression.attention import SelfAttention
from nasforge.compression.errors import PlanMismatchError
from nasforge.compression.pruning import (
    ChannelPruner,
    ChannelPruningConfig,
    DependencyGraph,
    GroupMagnitudeImportance,
    MagnitudeImportance,
    apply_plan,
    make_importance,
    mask_plan,
    recalibrate_bn,
)

SHAPE = (3, 32, 32)


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    return zoo.vit_tiny(num_layers=2, hidden_dim=48, mlp_dim=96, num_heads=3).eval()


def small_effnet() -> nn.Module:
    torch.manual_seed(0)
    m = zoo.efficientnet_b0(width=0.25).eval()
    with torch.no_grad():  # BN scales that differ, so that importance has something to rank
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.1, 1.0)
    return m


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_vit_prunes_head_dims_equally_and_mlp_width() -> None:
    model, x = small_vit(), torch.randn(4, *SHAPE)
    before = n_params(model)
    cfg = ChannelPruningConfig(0.5, round_to=4, min_keep=4)
    plan = ChannelPruner(MagnitudeImportance(1), cfg).plan(model, SHAPE)
    # the model handed in keeps its nn.MultiheadAttention until apply_plan
    assert isinstance(model.encoder.layers[0].self_attention, nn.MultiheadAttention)
    kinds = {c.group: c for c in plan.cuts}
    attn = [c for g, c in kinds.items() if g.endswith("self_attention")]
    mlp = [c for g, c in kinds.items() if ".mlp." in g]
    assert len(attn) == 2 and len(mlp) == 2
    for c in attn:
        per_head = [sum(1 for i in c.keep if i // 16 == h) for h in range(3)]
        assert len(set(per_head)) == 1 and per_head[0] % 4 == 0 and per_head[0] < 16
    assert any(len(c.keep) < c.size for c in mlp)
    masked = mask_plan(model, plan)
    apply_plan(model, plan)
    sa = model.encoder.layers[0].self_attention
    assert isinstance(sa, SelfAttention) and sa.num_heads == 3
    assert sa.head_dim * 3 == sa.q.out_features < 48
    assert n_params(model) < before
    with torch.no_grad():
        y, ym = model(x), masked(x)
    assert y.shape == (4, 10)
    torch.testing.assert_close(y, ym, atol=1e-5, rtol=1e-5)


def test_block_rounding_applies_per_head_only_when_it_divides() -> None:
    model = small_vit()
    for round_to, per_head_multiple in ((8, 8), (3, 1)):
        cfg = ChannelPruningConfig(0.6, round_to=round_to, min_keep=1)
        plan = ChannelPruner(MagnitudeImportance(2), cfg).plan(model, SHAPE)
        for c in plan.cuts:
            if c.group.endswith("self_attention"):
                per_head = {sum(1 for i in c.keep if i // 16 == h) for h in range(3)}
                assert len(per_head) == 1
                assert per_head.pop() % per_head_multiple == 0


def test_plan_with_unequal_heads_is_refused_in_one_line() -> None:
    model = small_vit()
    plan = ChannelPruner(MagnitudeImportance(1), ChannelPruningConfig(0.5, round_to=4)).plan(
        model, SHAPE
    )
    cuts = list(plan.cuts)
    i = next(i for i, c in enumerate(cuts) if c.group.endswith("self_attention"))
    cuts[i] = dataclasses.replace(cuts[i], keep=tuple(range(20)))  # 16 of head 0, 4 of head 1
    with pytest.raises(PlanMismatchError, match="same number") as exc:
        apply_plan(model, dataclasses.replace(plan, cuts=tuple(cuts)))
    assert "\n" not in str(exc.value)


def test_efficientnet_prunes_through_se_and_stochastic_depth() -> None:
    model, x = small_effnet(), torch.randn(3, *SHAPE)
    before = n_params(model)
    plan = ChannelPruner(MagnitudeImportance(1), ChannelPruningConfig(0.5)).plan(model, SHAPE)
    assert 0.4 < plan.macs_reduction < 0.6
    masked = mask_plan(model, plan)
    apply_plan(model, plan)
    assert n_params(model) < before
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), atol=1e-4, rtol=1e-4)
    recalibrate_bn(model, [torch.randn(8, *SHAPE)])
    assert model(x).shape == (3, 10)
    after = DependencyGraph.build(model, SHAPE).estimate_macs()
    assert after == pytest.approx(plan.macs_after, rel=0.02)


def test_group_magnitude_is_the_mean_of_raw_member_norms() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, 0.1, 2.0, 0.5]))
    graph = DependencyGraph.build(model, (3, 4, 4))
    (group,) = [g for g in graph.prunable if g.size == 4]
    got = GroupMagnitudeImportance(2).scores(model, group)
    w0, w3 = model[0].weight.detach(), model[3].weight.detach()
    want = (
        w0.pow(2).flatten(1).sum(1) + model[1].weight.detach().pow(2) + w3.pow(2).sum((0, 2, 3))
    ) / 3
    torch.testing.assert_close(got, want)


def test_taylor_scores_the_decomposed_attention() -> None:
    model = small_vit()
    batches = [(torch.randn(8, *SHAPE), torch.randint(0, 10, (8,)))]
    imp = make_importance("taylor", model, batches)
    plan = ChannelPruner(imp, ChannelPruningConfig(0.4, round_to=4, min_keep=4)).plan(model, SHAPE)
    attn = [c for c in plan.cuts if c.group.endswith("self_attention")]
    assert attn and any(len(c.keep) < c.size for c in attn)
    assert "SelfAttention" in " ".join(plan.notes)
    assert any(k.startswith("encoder.layers.0.self_attention.q.") for k in imp.grads)


def test_prune_stage_prunes_a_vit_from_a_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from nasforge.compression import CompressConfig, run_pipeline
    from nasforge.compression.stages.prune import ChannelPruneResult
    from nasforge.data import adapt_input, load_dataset

    ds = adapt_input(load_dataset("digits"), SHAPE)
    model = small_vit()
    cfg = CompressConfig.model_validate(
        {
            "stages": [
                {"name": "prune_channels", "ratio": 0.3, "round_to": 4, "min_keep": 4},
                {"name": "finetune", "epochs": 0},
            ],
            "target": {"batch_sizes": [1], "rounds": 1},
        }
    )
    report = run_pipeline(model, ds, cfg, tmp_path, progress=lambda m: None)
    out = report.output("prune_channels")
    assert isinstance(out, ChannelPruneResult)
    assert out.macs_after < out.macs_before and out.channels_removed > 0
    assert any("SelfAttention" in n for n in out.plan_notes)
    assert (tmp_path / "model.pruned.onnx").is_file()
