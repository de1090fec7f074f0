"""Batch norm for inference: folding (conv followed by BN becomes one conv with bias) and
re-estimating running statistics after the network under them changed."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """Return a new conv equal to ``bn(conv(x))`` in eval mode.

    ``conv`` is a ``Conv{1,2,3}d`` and ``bn`` a ``BatchNorm{1,2,3}d`` that tracks running stats.
    """
    if not isinstance(conv, _CONVS) or not isinstance(bn, _BNS) or bn.running_var is None:
        raise TypeError(
            f"fold_conv_bn: needs a conv and a BN with running stats, got "
            f"{type(conv).__name__} and {type(bn).__name__}"
        )
    assert bn.running_mean is not None  # set together with running_var
    fused = copy.deepcopy(conv)
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    fused.weight = nn.Parameter(w * scale.reshape(-1, *([1] * (w.dim() - 1))))
    fused.bias = nn.Parameter((b - bn.running_mean) * scale + beta)
    return fused


def fuse_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv inside an ``nn.Sequential``.

    The model is put in eval mode; BN layers that do not follow a conv are left alone.
    Returns the fused model (a copy unless ``inplace``).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    _fuse_children(model)
    return model


def _fuse_children(module: nn.Module) -> None:
    if isinstance(module, nn.Sequential):
        names = list(module._modules.keys())
        for a, b in itertools.pairwise(names):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, _CONVS) and isinstance(bn, _BNS) and bn.track_running_stats:
                module._modules[a] = fold_conv_bn(conv, bn)
                module._modules[b] = nn.Identity()
    for child in module.children():
        _fuse_children(child)


@torch.no_grad()
def reestimate_bn(
    module: nn.Module, forward: Callable[[torch.Tensor], object], batches: Iterable[torch.Tensor]
) -> None:
    """Reset every running-stats BN of ``module`` and re-estimate it by running ``forward`` on
    ``batches`` in train mode, as a cumulative average (``momentum=None``: the exact mean over
    the batches, independent of what ran before). No gradients, weights untouched; each BN
    keeps its momentum and ``module`` ends in eval mode. Shared by pruning (channels removed
    change what every later BN sees) and weight sharing (a supernet's BN statistics mix paths).
    """
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    try:
        for xb in batches:
            forward(xb)
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        module.eval()
