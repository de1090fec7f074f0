"""Cutting layers: how each layer type loses channels, registered per type.

:func:`~nasforge.compression.pruning.apply_plan` looks up the rule of every member's module
(by type, then its base classes) and calls ``cut``; importance criteria and ``mask_plan``
read ``channel_dim`` to find a member's channels in a parameter. Conv, Linear and BatchNorm
are registered here; a new layer type is one :func:`register_cut_rule` call (or a
``cut=``/``channel_dim=`` on its :func:`~nasforge.compression.pruning.register_leaf_rule`),
as Torch-Pruning's ``register_customized_layer`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nasforge.compression.attention import SelfAttention
from nasforge.compression.errors import PlanMismatchError, UnsupportedModelError
from nasforge.compression.pruning.ops import BN, CONV

CutFn = Callable[[nn.Module, str, Sequence[int]], None]
"""``cut(module, kind, drop)``: remove channels ``drop`` (sorted indices) of ``module``'s
``kind`` dimension in place -- replace the parameters, update the size attributes."""
ChannelDimFn = Callable[[str, str], "int | None"]
"""``channel_dim(kind, attr)``: which dim of parameter/buffer ``attr`` holds the channels of a
``kind`` member, or None when ``attr`` does not carry them."""


def default_channel_dim(kind: str, attr: str) -> int | None:
    """The layout of torch's conv/linear/BN: ``out``/``dw``/``bn`` channels are dim 0 of
    every parameter, ``in`` channels are dim 1 of ``weight``."""
    if kind == "in":
        return 1 if attr == "weight" else None
    return 0


@dataclass(frozen=True)
class CutRule:
    """How to cut one layer type: ``cut`` removes channels, ``channel_dim`` says where a
    member's channels lie in each parameter (importance slicing and masking read it)."""

    cut: CutFn
    channel_dim: ChannelDimFn = default_channel_dim


_CUT_RULES: dict[type[nn.Module], CutRule] = {}


def register_cut_rule(
    cls: type[nn.Module], cut: CutFn | None = None, channel_dim: ChannelDimFn | None = None
) -> None:
    """Teach :func:`~nasforge.compression.pruning.apply_plan` to cut modules of ``cls``
    (and of its subclasses that have no rule of their own).

    Args:
        cls: the layer type.
        cut: ``cut(module, kind, drop)``; default :func:`slice_parameters`, which slices
            every parameter and buffer of the module along ``channel_dim`` (enough for a
            layer without size attributes).
        channel_dim: ``channel_dim(kind, attr) -> dim | None``; default
            :func:`default_channel_dim` (torch's conv/linear/BN layout).
    """
    dims = channel_dim or default_channel_dim
    if cut is None:

        def cut(module: nn.Module, kind: str, drop: Sequence[int]) -> None:
            slice_parameters(module, kind, drop, dims)

    _CUT_RULES[cls] = CutRule(cut, dims)


def find_cut_rule(module: nn.Module) -> CutRule | None:
    """The rule of ``type(module)`` or its nearest registered base class, or None."""
    for klass in type(module).__mro__:
        rule = _CUT_RULES.get(klass)
        if rule is not None:
            return rule
    return None


def cut_rule_for(module: nn.Module, name: str) -> CutRule:
    """Like :func:`find_cut_rule`, but raises :class:`UnsupportedModelError` naming layer
    ``name`` when its type has no rule."""
    rule = find_cut_rule(module)
    if rule is None:
        raise UnsupportedModelError(
            f"layer {name!r} ({type(module).__name__}): no cut rule; register one with "
            "nasforge.compression.pruning.register_cut_rule"
        )
    return rule


def keep_index(dim_size: int, drop: Sequence[int]) -> torch.Tensor:
    """Indices ``0..dim_size-1`` without ``drop``, as a long tensor."""
    dropped = set(drop)
    return torch.tensor([i for i in range(dim_size) if i not in dropped], dtype=torch.long)


def set_tensor(mod: nn.Module, attr: str, value: torch.Tensor) -> None:
    """Replace ``mod.attr`` by a copy of ``value``, as a parameter if it was one."""
    old = getattr(mod, attr)
    if isinstance(old, nn.Parameter):
        setattr(mod, attr, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
    else:
        setattr(mod, attr, value.clone())


@torch.no_grad()
def slice_parameters(
    module: nn.Module, kind: str, drop: Sequence[int], channel_dim: ChannelDimFn
) -> None:
    """Remove ``drop`` along ``channel_dim(kind, attr)`` of every direct parameter and buffer."""
    named = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    for attr, t in named:
        dim = channel_dim(kind, attr)
        if dim is not None and t is not None and t.dim() > dim:
            set_tensor(module, attr, t.index_select(dim, keep_index(t.shape[dim], drop)))


@torch.no_grad()
def _cut_bn(module: nn.Module, kind: str, drop: Sequence[int]) -> None:
    mod: Any = module  # torch's BN attributes are untyped on nn.Module
    idx = keep_index(mod.num_features, drop)
    for a in ("weight", "bias", "running_mean", "running_var"):
        if getattr(mod, a, None) is not None:
            set_tensor(mod, a, getattr(mod, a)[idx])
    mod.num_features = len(idx)


@torch.no_grad()
def _cut_weighted(module: nn.Module, kind: str, drop: Sequence[int]) -> None:
    """Conv (``out``/``in``/``dw``) and Linear (``out``/``in``)."""
    mod: Any = module
    linear = isinstance(mod, nn.Linear)
    if kind in ("out", "dw"):
        n = mod.out_features if linear else mod.out_channels
        idx = keep_index(n, drop)
        set_tensor(mod, "weight", mod.weight[idx])
        if mod.bias is not None:
            set_tensor(mod, "bias", mod.bias[idx])
        if linear:
            mod.out_features = len(idx)
        else:
            mod.out_channels = len(idx)
            if kind == "dw":
                mod.in_channels = mod.groups = len(idx)
    elif kind == "in":
        n = mod.in_features if linear else mod.in_channels
        idx = keep_index(n, drop)
        set_tensor(mod, "weight", mod.weight[:, idx])
        if linear:
            mod.in_features = len(idx)
        else:
            mod.in_channels = len(idx)


@torch.no_grad()
def _cut_layer_norm(module: nn.Module, kind: str, drop: Sequence[int]) -> None:
    """A LayerNorm over the channels (one normalised dim): slice weight/bias, shrink
    ``normalized_shape``. Its statistics then run over the kept channels only."""
    mod: Any = module
    idx = keep_index(int(mod.normalized_shape[-1]), drop)
    for a in ("weight", "bias"):
        if getattr(mod, a, None) is not None:
            set_tensor(mod, a, getattr(mod, a)[idx])
    mod.normalized_shape = (len(idx),)


def _cut_heads(module: nn.Module, kind: str, drop: Sequence[int]) -> None:
    """SelfAttention: its q/k/v/out_proj Linear layers are cut as members of their own;
    here every head must lose the same number of dims, and ``head_dim`` follows. ``scale``
    (the softmax temperature) stays as trained."""
    mod: Any = module
    hd, heads = int(mod.head_dim), int(mod.num_heads)
    per_head = [0] * heads
    for i in drop:
        if not 0 <= i < hd * heads:
            raise PlanMismatchError(f"attention {mod.extra_repr()}: dim {i} out of range")
        per_head[i // hd] += 1
    if len(set(per_head)) != 1 or per_head[0] >= hd:
        raise PlanMismatchError(
            f"attention ({heads} heads of {hd}): a cut must remove the same number of dims "
            f"from every head and keep at least one (removes {per_head})"
        )
    mod.head_dim = hd - per_head[0]


def _no_parameters(kind: str, attr: str) -> int | None:
    return None


register_cut_rule(nn.LayerNorm, _cut_layer_norm)
register_cut_rule(SelfAttention, _cut_heads, _no_parameters)
for _bn in BN:
    register_cut_rule(_bn, _cut_bn)
for _weighted in (*CONV, nn.Linear):
    register_cut_rule(_weighted, _cut_weighted)
