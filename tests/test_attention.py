"""SelfAttention / decompose_attention: the same function as nn.MultiheadAttention, fx-traceable."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from nasforge.compression import zoo
from nasforge.compression.attention import SelfAttention, decompose_attention, has_attention


def _mha(**kw: object) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(24, 3, batch_first=True, **kw)  # type: ignore[arg-type]
    with torch.no_grad():  # non-zero biases so that a wrong bias split shows
        for p in mha.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return mha.eval()


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"kdim": 16, "vdim": 8}])
def test_self_attention_equals_mha(kw: dict[str, object]) -> None:
    mha = _mha(**kw)
    att = SelfAttention.from_multihead(mha).eval()
    x = torch.randn(2, 7, 24)
    if "kdim" in kw:
        k, v = torch.randn(2, 5, 16), torch.randn(2, 5, 8)
    else:
        k = v = x
    ref, _ = mha(x, k, v, need_weights=False)
    out, w = att(x, k, v, need_weights=False)
    assert w is None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    ref_out, ref_w = mha(x, k, v, need_weights=True)
    out2, w2 = att(x, k, v, need_weights=True)
    torch.testing.assert_close(out2, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w2, ref_w, atol=1e-5, rtol=1e-5)


def test_masks_and_sequence_first_match_mha() -> None:
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(24, 4, batch_first=False).eval()
    att = SelfAttention.from_multihead(mha).eval()
    x = torch.randn(6, 2, 24)  # (L, N, D)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    ref, _ = mha(x, x, x, attn_mask=causal, key_padding_mask=pad, need_weights=False)
    out, _ = att(x, x, x, attn_mask=causal, key_padding_mask=pad, need_weights=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    fmask = torch.randn(6, 6)
    ref, _ = mha(x, x, x, attn_mask=fmask, need_weights=False)
    out, _ = att(x, x, x, attn_mask=fmask, need_weights=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_self_attention_traces_to_plain_ops() -> None:
    att = SelfAttention(24, 3).eval()
    # as a root module the flags must be concrete (inside a model they are constants)
    flags = {
        "key_padding_mask": None,
        "need_weights": False,
        "attn_mask": None,
        "average_attn_weights": True,
        "is_causal": False,
    }
    gm = torch.fx.symbolic_trace(att, concrete_args=flags)
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert torch.matmul in targets and torch.softmax in targets
    calls = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert calls == {"q", "k", "v", "out_proj"}
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(gm(x, x, x)[0], att(x)[0])


def test_decompose_vit_keeps_outputs_and_traces() -> None:
    torch.manual_seed(0)
    vit = zoo.vit_tiny(num_layers=2, hidden_dim=48, mlp_dim=96, num_heads=3).eval()
    with torch.no_grad():
        for m in vit.modules():
            if isinstance(m, nn.MultiheadAttention):
                m.in_proj_bias.normal_(std=0.1)
    dec = decompose_attention(vit).eval()
    assert has_attention(vit) and has_attention(dec)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in dec.modules())
    assert sum(isinstance(m, SelfAttention) for m in dec.modules()) == 2
    assert any(isinstance(m, nn.MultiheadAttention) for m in vit.modules())  # original untouched
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dec(x), vit(x), atol=1e-5, rtol=1e-5)
        gm = torch.fx.symbolic_trace(dec)
        torch.testing.assert_close(gm(x), vit(x), atol=1e-5, rtol=1e-5)
    assert not any(
        n.op == "call_module" and "self_attention" == n.target.rsplit(".", 1)[-1]
        for n in gm.graph.nodes
    )


def test_no_attention_and_unsupported_variants() -> None:
    cnn = zoo.resnet18(width=8)
    assert not has_attention(cnn)
    assert not has_attention(decompose_attention(cnn))
    odd = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True))
    assert isinstance(decompose_attention(odd)[0], nn.MultiheadAttention)
    shared = nn.MultiheadAttention(8, 2, batch_first=True)
    seq = decompose_attention(nn.Sequential(shared, shared))
    assert seq[0] is seq[1] and isinstance(seq[0], SelfAttention)


def test_training_mode_and_dropout_follow_mha() -> None:
    mha = nn.MultiheadAttention(16, 2, dropout=0.5, batch_first=True).train()
    att = SelfAttention.from_multihead(mha)
    assert att.training and att.dropout == 0.5
    x = torch.randn(1, 4, 16)
    att.eval()
    mha.eval()
    torch.testing.assert_close(att(x, x, x)[0], mha(x, x, x)[0], atol=1e-5, rtol=1e-5)
