"""Multi-head attention as plain operators, so compression can see inside it.

``nn.MultiheadAttention`` is a leaf to torch.fx (one opaque call): the quantizer cannot put
its projections or the attention matmuls in INT8 and the channel graph cannot prune its heads.
:class:`SelfAttention` computes the same function with four ``nn.Linear`` layers (``q``, ``k``,
``v``, ``out_proj``), ``reshape``/``transpose``, ``torch.matmul`` and ``torch.softmax``; it is
fx-traceable. :func:`decompose_attention` swaps every ``nn.MultiheadAttention`` of a model (a
deep copy) for an equal :class:`SelfAttention`. The replacement keeps MultiheadAttention's call
signature (``mha(x, x, x, need_weights=False)`` returns ``(out, None)``), so the caller's
forward needs no change.

Not decomposed (left as ``nn.MultiheadAttention``): ``add_bias_kv`` or ``add_zero_attn``
layers (rare; the channel graph refuses them by name).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SelfAttention", "decompose_attention", "has_attention"]


class SelfAttention(nn.Module):
    """Multi-head (self-)attention from plain operators, equal to ``nn.MultiheadAttention``.

    ``forward(query, key=None, value=None, key_padding_mask=None, need_weights=False,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` follows MultiheadAttention:
    ``key``/``value`` default to ``query`` (self-attention), the result is ``(out, weights)``
    with ``weights`` None unless ``need_weights``. Inputs are (N, L, D) when ``batch_first``
    (the default), else (L, N, D).

    Pruning removes whole dimensions of every head alike (``head_dim`` shrinks, ``num_heads``
    stays). ``scale`` (the softmax temperature, ``1/sqrt(head_dim)`` at construction) is kept
    as trained when ``head_dim`` is cut, so the pruned model computes what the kept weights
    computed before.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        dropout: float = 0.0,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        if num_heads <= 0 or embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.dropout = dropout
        self.batch_first = batch_first
        inner = num_heads * self.head_dim
        self.q = nn.Linear(embed_dim, inner, bias=bias)
        self.k = nn.Linear(kdim if kdim is not None else embed_dim, inner, bias=bias)
        self.v = nn.Linear(vdim if vdim is not None else embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    @property
    def embed_dim(self) -> int:
        """The model dim (out_proj's output): follows pruning of the residual stream."""
        return int(self.out_proj.out_features)

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention) -> SelfAttention:
        """An equal SelfAttention holding copies of ``mha``'s weights."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("add_bias_kv / add_zero_attn attention is not supported")
        bias = mha.in_proj_bias is not None
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            bias=bias,
            kdim=mha.kdim,
            vdim=mha.vdim,
            dropout=float(mha.dropout),
            batch_first=bool(mha.batch_first),
        )
        d = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                w = mha.in_proj_weight
                weights = (w[:d], w[d : 2 * d], w[2 * d :])
            else:
                weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
            for lin, wt in zip((new.q, new.k, new.v), weights, strict=True):
                lin.weight.copy_(wt)
            if bias:
                b = mha.in_proj_bias
                new.q.bias.copy_(b[:d])
                new.k.bias.copy_(b[d : 2 * d])
                new.v.bias.copy_(b[2 * d :])
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None and new.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        ref = mha.in_proj_weight if mha.in_proj_weight is not None else mha.q_proj_weight
        new.to(device=ref.device, dtype=ref.dtype)
        new.train(mha.training)
        return new

    def _heads(self, x: torch.Tensor, n: int, length: int) -> torch.Tensor:
        # (N, L, H*hd) -> (N, H, L, hd); -1 so that a cut head_dim needs no graph change
        return x.reshape(n, length, self.num_heads, -1).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key is None:
            key = query
        if value is None:
            value = key
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n = query.shape[0]
        lq = query.shape[1]
        lk = key.shape[1]
        q = self._heads(self.q(query), n, lq) * self.scale
        k = self._heads(self.k(key), n, lk)
        v = self._heads(self.v(value), n, lk)
        scores = torch.matmul(q, k.transpose(-2, -1))  # (N, H, Lq, Lk)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(lq, lk, dtype=torch.bool, device=query.device).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (N*H, Lq, Lk) as MultiheadAttention takes it
                attn_mask = attn_mask.reshape(n, self.num_heads, lq, lk)
            scores = _apply_mask(scores, attn_mask)
        if key_padding_mask is not None:
            scores = _apply_mask(scores, key_padding_mask.reshape(n, 1, 1, lk))
        attn = torch.softmax(scores, dim=-1)
        if self.dropout > 0.0:
            attn = F.dropout(attn, self.dropout, self.training)
        out = torch.matmul(attn, v).transpose(1, 2)  # (N, Lq, H, hd)
        out = self.out_proj(out.reshape(n, lq, -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average_attn_weights else attn

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"batch_first={self.batch_first}"
        )


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MultiheadAttention's mask semantics: a bool mask marks positions NOT attended,
    a float mask is added to the scores."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask


def has_attention(model: nn.Module) -> bool:
    """True when ``model`` holds an ``nn.MultiheadAttention`` or a :class:`SelfAttention`."""
    return any(isinstance(m, nn.MultiheadAttention | SelfAttention) for m in model.modules())


def decompose_attention(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.MultiheadAttention`` replaced by an equal
    :class:`SelfAttention` (same weights, same call signature, outputs equal to float
    rounding). ``add_bias_kv`` / ``add_zero_attn`` layers are left as they are. A model
    without attention comes back as a plain deep copy; ``model`` itself is not changed."""
    new = copy.deepcopy(model)
    if isinstance(new, nn.MultiheadAttention):
        return SelfAttention.from_multihead(new) if _decomposable(new) else new
    swapped: dict[int, SelfAttention] = {}  # one replacement per layer, even if shared
    for parent in list(new.modules()):
        for attr, child in list(parent._modules.items()):
            if isinstance(child, nn.MultiheadAttention) and _decomposable(child):
                if id(child) not in swapped:
                    swapped[id(child)] = SelfAttention.from_multihead(child)
                setattr(parent, attr, swapped[id(child)])
    return new


def _decomposable(mha: nn.MultiheadAttention) -> bool:
    return mha.bias_k is None and not mha.add_zero_attn
