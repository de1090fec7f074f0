"""The channel graph on torchvision-style models: EfficientNet (SiLU, SE, stochastic depth as
an fx-wrapped function), ViT (tokens, class token, position embedding, attention heads) and
the layout axis moving through permute/transpose/flatten/indexing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
from torch import nn

from nasforge.compression import PlanMismatchError, PruningPlan, UnsupportedModelError, apply_plan
from nasforge.compression.attention import SelfAttention, decompose_attention
from nasforge.compression.pruning.cuts import cut_rule_for
from nasforge.compression.pruning.graph import (
    DependencyGraph,
    pass_through,
    register_function_rule,
)
from nasforge.compression.pruning.groups import ChannelGroup
from nasforge.compression.pruning.plan import GroupCut
from nasforge.compression.zoo import efficientnet_b0, vit_tiny

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (3, 32, 32)


def _keep(g: ChannelGroup, frac: float = 0.5) -> tuple[int, ...]:
    """Every other channel-ish subset; with blocks, the same count from each block."""
    per = g.size // g.blocks
    n = max(1, int(per * frac))
    return tuple(b * per + i for b in range(g.blocks) for i in range(0, per, max(1, per // n))[:n])


def _plan(graph: DependencyGraph, shape: tuple[int, ...]) -> PruningPlan:
    cuts = tuple(
        GroupCut(g.id, g.size, _keep(g), tuple(m.spec() for m in g.members)) for g in graph.prunable
    )
    return PruningPlan(cuts=cuts, input_shape=shape)


@torch.no_grad()
def _masked(model: nn.Module, graph: DependencyGraph, plan: PruningPlan) -> nn.Module:
    """The reference: dropped channels zeroed where they are consumed (``in`` columns), and
    for attention also where they are produced (q/k dims meet in q @ k^T)."""
    ref = copy.deepcopy(model)
    for cut in plan.cuts:
        g = graph.by_id[cut.group]
        drop = torch.tensor(sorted(set(range(cut.size)) - set(cut.keep)), dtype=torch.long)
        attention = any(m.kind == "heads" for m in g.members)
        for m in g.members:
            mod = ref.get_submodule(m.module)
            if m.kind == "in":
                mod.weight.index_fill_(1, drop + m.offset, 0.0)
            elif m.kind == "out" and attention:
                mod.weight.index_fill_(0, drop + m.offset, 0.0)
                if mod.bias is not None:
                    mod.bias.index_fill_(0, drop + m.offset, 0.0)
    return ref


def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, (nn.Linear, nn.LayerNorm)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def _prune_and_compare(model: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    graph = DependencyGraph.build(model, shape)
    assert graph.prunable
    plan = _plan(graph, shape)
    pruned = apply_plan(copy.deepcopy(model), plan).eval()
    ref = _masked(model, graph, plan).eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, want = pruned(x), ref(x)
    assert out.shape == want.shape
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    after = DependencyGraph.build(pruned, shape)  # the pruned model is a valid model again
    assert after.estimate_macs() < graph.estimate_macs()
    n_params = sum(p.numel() for p in pruned.parameters())
    assert n_params < sum(p.numel() for p in model.parameters())
    return pruned, len(graph.prunable)


def test_efficientnet_graph_prunes_through_stochastic_depth_and_se() -> None:
    model = _randomize(efficientnet_b0(width=0.25, stochastic_depth_prob=0.2))
    graph = DependencyGraph.build(model, SHAPE)
    ids = {g.id for g in graph.prunable}
    # SE squeeze (fc1 out / fc2 in) and expanded channels are groups of their own
    assert any(i.endswith("block.1.fc1") or i.endswith("block.2.fc1") for i in ids)
    se = next(g for g in graph.prunable if g.id == "features.2.0.block.2.fc1")
    assert {m.spec() for m in se.members} == {
        "features.2.0.block.2.fc1:out@0",
        "features.2.0.block.2.fc2:in@0",
    }
    # the expanded channels couple expand conv, BN, depthwise conv, SE fc1 in/fc2 out, project in
    expanded = next(g for g in graph.groups if g.id == "features.2.0.block.0.0")
    kinds = {(m.module.rsplit(".", 1)[-1], m.kind) for m in expanded.members}
    assert {("fc1", "in"), ("fc2", "out"), ("0", "dw")} <= kinds
    _, n = _prune_and_compare(model, SHAPE)
    assert n == len(graph.prunable)


def _small_vit() -> nn.Module:
    torch.manual_seed(0)
    return _randomize(vit_tiny(num_layers=2, hidden_dim=48, mlp_dim=96, num_heads=3))


def test_vit_graph_groups_heads_and_mlp_and_freezes_the_residual_stream() -> None:
    vit = decompose_attention(_small_vit())
    graph = DependencyGraph.build(vit, SHAPE)
    by_id = graph.by_id
    att = by_id["encoder.layers.0.self_attention"]
    assert not att.frozen and att.size == 48 and att.blocks == 3
    assert [m.spec() for m in att.members] == [
        "encoder.layers.0.self_attention:heads@0",
        "encoder.layers.0.self_attention.q:out@0",
        "encoder.layers.0.self_attention.k:out@0",
        "encoder.layers.0.self_attention.v:out@0",
        "encoder.layers.0.self_attention.out_proj:in@0",
    ]
    mlp = by_id["encoder.layers.1.mlp.0"]
    assert not mlp.frozen and mlp.blocks == 1
    assert {m.spec() for m in mlp.members} == {
        "encoder.layers.1.mlp.0:out@0",
        "encoder.layers.1.mlp.3:in@0",
    }
    assert {g.id for g in graph.prunable} == {
        f"encoder.layers.{i}.{part}" for i in (0, 1) for part in ("self_attention", "mlp.0")
    }
    stream = by_id["conv_proj"]  # the embedding dim D: class token and position embedding
    assert stream.frozen and "constant" in stream.reason
    kinds = {m.kind for m in stream.members}
    assert {"ln", "in", "out"} <= kinds  # LayerNorms, q/k/v/mlp inputs, out_proj/mlp outputs


def test_vit_pruned_heads_and_mlp_compute_the_masked_function() -> None:
    vit = decompose_attention(_small_vit())
    pruned, n = _prune_and_compare(vit, SHAPE)
    assert n == 4
    att = pruned.get_submodule("encoder.layers.0.self_attention")
    assert isinstance(att, SelfAttention)
    assert att.head_dim == 8 and att.num_heads == 3 and att.q.out_features == 24
    assert att.scale == pytest.approx(16**-0.5)  # the trained temperature is kept
    assert pruned.get_submodule("encoder.layers.0.mlp.0").out_features == 48
    out = pruned(torch.randn(4, *SHAPE))
    assert out.shape == (4, 10)
    torch.fx.symbolic_trace(pruned)  # still traceable for quantization


def test_unequal_head_cut_is_refused() -> None:
    vit = decompose_attention(_small_vit())
    graph = DependencyGraph.build(vit, SHAPE)
    g = graph.by_id["encoder.layers.0.self_attention"]
    keep = tuple(range(0, 40))  # all of heads 0-1, half of head 2
    plan = PruningPlan(
        cuts=(GroupCut(g.id, g.size, keep, tuple(m.spec() for m in g.members)),),
        input_shape=SHAPE,
    )
    with pytest.raises(PlanMismatchError, match="same number"):
        apply_plan(copy.deepcopy(vit), plan)
    att = vit.get_submodule("encoder.layers.0.self_attention")
    rule = cut_rule_for(att, "att")  # the layer's own guard, whatever the plan checks
    with pytest.raises(PlanMismatchError, match="same number of dims from every head"):
        rule.cut(att, "heads", list(range(40, 48)))
    assert att.head_dim == 16
    rule.cut(att, "heads", [0, 16, 32])
    assert att.head_dim == 15


def test_multihead_attention_is_refused_with_the_way_out() -> None:
    with pytest.raises(UnsupportedModelError, match="decompose_attention") as err:
        DependencyGraph.build(_small_vit(), SHAPE)
    assert "\n" not in str(err.value)
    assert "self_attention" in str(err.value)


def my_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x * factor


torch.fx.wrap("my_scale")


class Tokens(nn.Module):
    """conv -> tokens (flatten, transpose) -> channel MLP with a user's wrapped function ->
    token-mixing Linear on the transposed map -> back to NCHW -> conv -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(16, 8)
        self.mix = nn.Linear(16, 16)  # acts on the 4x4 = 16 tokens
        self.conv = nn.Conv2d(8, 12, 1)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        t = t + my_scale(self.fc2(self.act(self.fc1(t))), 0.5)
        t = self.mix(t.transpose(1, 2))  # (N, C, HW): mixes tokens
        y = t.reshape(n, c, h, w)
        y = self.conv(y)
        y = y[:, :, 1:].mean((2, 3))
        return self.head(y)


def test_layout_axis_follows_tokens_and_function_rules() -> None:
    model = _randomize(Tokens())
    with pytest.raises(UnsupportedModelError, match="my_scale"):
        DependencyGraph.build(model, (3, 4, 4))
    register_function_rule(my_scale, pass_through)
    graph = DependencyGraph.build(model, (3, 4, 4))
    ids = {g.id: g for g in graph.groups}
    assert {m.spec() for m in ids["fc1"].members} == {"fc1:out@0", "fc2:in@0"}
    stem = ids["stem"]  # couples stem out, fc1 in, fc2 out (residual), conv in
    assert {m.spec() for m in stem.members} == {
        "stem:out@0",
        "fc1:in@0",
        "fc2:out@0",
        "conv:in@0",
    }
    assert not stem.frozen and not ids["conv"].frozen
    assert all("mix" not in m.module for g in graph.groups for m in g.members)
    _prune_and_compare(model, (3, 4, 4))


def test_function_rule_by_name_and_non_tensor_values_are_never_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3)
            self.fc = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x.shape[-1]
            torch._assert(h == 8, "size")
            k = (h // 4) * 2 - 3  # int arithmetic
            y = self.conv(x)
            y = torch.cat([y, y[:, :, :k]], dim=2)  # along a spatial dim: unifies
            return self.fc(y.mean((2, 3)))

    graph = DependencyGraph.build(Net(), (3, 8, 8))
    assert [g.id for g in graph.prunable] == ["conv"]


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt LayerNorm2d: a LayerNorm subclass that permutes around
    ``F.layer_norm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.permute(x, self.dims)


class CNBlock(nn.Module):
    """torchvision's ConvNeXt block: depthwise 7x7, channels-last LayerNorm + MLP, layer scale
    (an nn.Parameter), stochastic depth, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 0.5))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        from nasforge.compression.zoo import stochastic_depth

        result = self.layer_scale * self.block(input)
        result = stochastic_depth(result, 0.1, "row", self.training)
        result += input
        return result


def test_convnext_block_prunes_its_mlp_and_layer_norm_2d_is_a_member() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 4, 4),
        LayerNorm2d(8),
        CNBlock(8),
        LayerNorm2d(8),
        nn.Conv2d(8, 16, 2, 2),
        CNBlock(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(16, 5),
    )
    model = _randomize(model)
    graph = DependencyGraph.build(model, (3, 16, 16))
    assert {g.id for g in graph.prunable} == {"2.block.3", "5.block.3"}  # the MLP hidden dims
    stream = graph.by_id["0"]
    assert stream.frozen and "constant" in stream.reason  # layer_scale: the stream is kept
    assert {"1:ln@0", "2.block.0:dw@0", "2.block.2:ln@0", "3:ln@0", "4:in@0"} <= {
        m.spec() for m in stream.members
    }
    _prune_and_compare(model, (3, 16, 16))

    # without a layer scale the channels-first LayerNorm2d is pruned through F.layer_norm
    net = _randomize(nn.Sequential(nn.Conv2d(3, 8, 3), LayerNorm2d(8), nn.Conv2d(8, 4, 1)))
    graph = DependencyGraph.build(net, (3, 8, 8))
    g = graph.by_id["0"]
    assert not g.frozen and {m.spec() for m in g.members} == {"0:out@0", "1:ln@0", "2:in@0"}
    keep = (0, 2, 4, 6)
    plan = PruningPlan(
        cuts=(GroupCut("0", 8, keep, tuple(m.spec() for m in g.members)),), input_shape=(3, 8, 8)
    )
    pruned = apply_plan(copy.deepcopy(net), plan)
    assert pruned[1].weight.shape == (4,) and pruned[1].normalized_shape == (4,)
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4, 6, 6)


class TokenEncoder(nn.Module):
    """A transformer block fed tokens (N, L, D) directly: the input is a constant to the
    graph, so its dim D is frozen, heads and MLP hidden prune."""

    def __init__(self, d: int = 24, heads: int = 4) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.attn(y, y, y, need_weights=False)
        x = x + y
        x = x + self.mlp(self.ln_2(x))
        return self.head(x.mean(1))


def test_token_input_transformer_prunes_heads_and_mlp() -> None:
    torch.manual_seed(0)
    model = _randomize(decompose_attention(TokenEncoder()))
    graph = DependencyGraph.build(model, (7, 24))
    assert {g.id for g in graph.prunable} == {"attn", "mlp.0"}
    assert graph.by_id["attn"].blocks == 4
    pruned, _ = _prune_and_compare(model, (7, 24))
    assert pruned.attn.head_dim == 3


class HandWritten(nn.Module):
    """Ops written out by hand: tanh-GELU (pow, tanh, scalar arithmetic) on a prunable hidden
    dim, an RMSNorm (mean over the channels, rsqrt, a weight parameter) on the stream."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 6)
        self.weight = nn.Parameter(torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        h = self.fc1(x)
        h = 0.5 * h * (1 + torch.tanh(0.7978845608 * (h + 0.044715 * torch.pow(h, 3))))
        return x + self.fc2(h).clone()


def test_hand_written_elementwise_ops_and_rms_norm() -> None:
    model = _randomize(HandWritten())
    graph = DependencyGraph.build(model, (5, 6))
    assert [g.id for g in graph.prunable] == ["fc1"]
    assert graph.by_id["fc2"].frozen  # the stream: model input, output, RMSNorm weight
    _prune_and_compare(model, (5, 6))


def test_parameters_used_outside_modules_are_refused_in_one_line() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(nn.functional.conv2d(x, self.w).mean((2, 3)))

    with pytest.raises(UnsupportedModelError, match="uses parameter 'w' outside a module"):
        DependencyGraph.build(Functional(), (3, 8, 8))
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).eval()
    exported = torch.export.export(small, (torch.zeros(1, 3, 8, 8),)).module()
    with pytest.raises(UnsupportedModelError, match="outside a module") as err:
        DependencyGraph.build(exported, (3, 8, 8))  # aten ops on parameters; train() refused
    assert "\n" not in str(err.value)


class CrossAttention(nn.Module):
    """Queries from the tokens, keys/values from a projection of them (kdim = vdim = 12)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.kv_proj = nn.Linear(6, 12)
        self.attn = nn.MultiheadAttention(16, 2, kdim=12, vdim=12, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.embed(x)
        kv = torch.relu(self.kv_proj(x))
        y, _ = self.attn(q, kv, kv, need_weights=False)
        return self.head((q + y)[:, 0])


def test_cross_attention_couples_keys_and_values_with_their_source() -> None:
    torch.manual_seed(0)
    model = _randomize(decompose_attention(CrossAttention()))
    graph = DependencyGraph.build(model, (5, 6))
    kv = graph.by_id["kv_proj"]
    assert not kv.frozen
    assert {m.spec() for m in kv.members} == {"kv_proj:out@0", "attn.k:in@0", "attn.v:in@0"}
    assert {g.id for g in graph.prunable} == {"embed", "kv_proj", "attn"}
    pruned, _ = _prune_and_compare(model, (5, 6))
    assert pruned.attn.k.in_features == 6 and pruned.attn.head_dim == 4
    assert pruned.attn.embed_dim == 8  # the model dim (embed) was cut too
