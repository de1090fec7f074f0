"""The bilevel machinery of DARTS: DARTS' second-order (unrolled) architecture gradient and
the small helpers a search step needs (batch orders, split checks, kept BN buffers).

Second order (Liu et al. 2019, eq. 7-8): alpha's gradient of the validation loss at the
weights after one virtual SGD step ``w' = w - lr * (grad_w L_train + wd * w)``, minus
``lr`` times the mixed second derivative applied to ``grad_w' L_val``, which is approximated
by central finite differences of ``grad_alpha L_train`` at ``w +- eps * grad_w' L_val`` with
``eps = 0.01 / |grad_w' L_val|`` (DARTS' ``architect.py``). The virtual step leaves out
momentum. The network's weights and buffers are exactly as before when it returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.errors import ConfigError
from nasforge.oneshot.mixed import ArchWeights

Split = tuple[torch.Tensor, torch.Tensor]


def unrolled_arch_grads(
    net: nn.Module,
    arch: Sequence[torch.Tensor],
    weights: ArchWeights,
    train: Split,
    val: Split,
    lr: float,
    weight_decay: float,
) -> list[torch.Tensor]:
    """DARTS' second-order gradient of the validation loss for each tensor of ``arch``.

    Args:
        net: the supernet, ``net(x, weights)`` gives logits.
        arch: the architecture parameters ``weights`` was computed from.
        weights: the op/edge weights of this step (its graph to ``arch`` is reused).
        train, val: one batch of each split.
        lr, weight_decay: the network weights' SGD settings of the virtual step.
    """
    params: list[torch.Tensor] = [p for p in net.parameters() if p.requires_grad]
    arch = list(arch)
    (xb, yb), (xv, yv) = train, val
    with kept_buffers(net):
        w0 = [p.detach().clone() for p in params]
        g = torch.autograd.grad(
            F.cross_entropy(net(xb, detached(weights)), yb), params, allow_unused=True
        )
        with torch.no_grad():
            for p, gi in zip(params, g):
                if gi is not None:
                    p.sub_(lr * (gi + weight_decay * p))
        val_loss = F.cross_entropy(net(xv, weights), yv)
        grads = torch.autograd.grad(val_loss, arch + params, retain_graph=True, allow_unused=True)
        d_arch, d_w = grads[: len(arch)], grads[len(arch) :]
        norm = math.sqrt(sum(float((d * d).sum()) for d in d_w if d is not None))
        eps = 0.01 / max(norm, 1e-12)
        hess = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, p0, d in zip(params, w0, d_w):
                    p.copy_(p0 if d is None else p0 + sign * eps * d)
            loss = F.cross_entropy(net(xb, weights), yb)
            hess.append(torch.autograd.grad(loss, arch, retain_graph=True, allow_unused=True))
        with torch.no_grad():
            for p, p0 in zip(params, w0):
                p.copy_(p0)
    out = []
    for a, da, hp, hn in zip(arch, d_arch, hess[0], hess[1]):
        total = torch.zeros_like(a) if da is None else da
        if hp is not None and hn is not None:
            total = total - lr * (hp - hn) / (2 * eps)
        out.append(total)
    return out


def check_split(name: str, split: Sequence[torch.Tensor]) -> Split:
    """``split`` as ``(x, y)`` if it is two tensors of one non-zero length, else
    :class:`ConfigError` naming ``darts.<name>``."""
    if len(split) != 2:
        raise ConfigError(f"darts.{name}: expected (x, y) tensors")
    x, y = split
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y):
        raise ConfigError(f"darts.{name}: x and y must be tensors of the same length")
    if len(y) == 0:
        raise ConfigError(f"darts.{name}: the split is empty")
    return x, y


def batch_order(n: int, needed: int, gen: torch.Generator) -> torch.Tensor:
    """``needed`` indices into ``n`` examples: shuffled passes, concatenated."""
    reps = math.ceil(needed / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:needed]


def detached(w: ArchWeights) -> ArchWeights:
    """``w`` cut from the architecture parameters' graph."""
    edges = {c: t.detach() for c, t in w.edges.items()} if w.edges is not None else None
    return ArchWeights({c: t.detach() for c, t in w.ops.items()}, edges, w.aux_skip)


@contextmanager
def kept_buffers(net: nn.Module) -> Iterator[None]:
    """Run, then put every buffer of ``net`` (BN running statistics) back as it was."""
    saved = {k: v.clone() for k, v in net.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in net.named_buffers():
                v.copy_(saved[k])


__all__ = [
    "Split",
    "batch_order",
    "check_split",
    "detached",
    "kept_buffers",
    "unrolled_arch_grads",
]
