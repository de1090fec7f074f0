"""Batch-norm recalibration for an inherited subnet (SPOS, Guo et al. 2020, section 3.3).

During supernet training every BN layer tracks running statistics of a mixture of paths, which
are wrong for any single arch. Before an arch is evaluated, :func:`recalibrate_bn` resets the
running statistics and forwards a few training batches through that arch in train mode, with
a cumulative average (``momentum=None``) so the result is the exact mean over those batches and
does not depend on what the supernet ran before. Weights are not touched (no gradients).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nasforge.nn.fuse import reestimate_bn


@torch.no_grad()
def recalibrate_bn(
    module: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: list[torch.Tensor],
) -> None:
    """Reset ``module``'s BN running statistics and re-estimate them on ``batches``.

    Args:
        module: owns the BN layers (a supernet or a stand-alone net).
        forward: runs one batch through the path to calibrate (e.g. ``lambda x: net(x, arch)``).
        batches: input batches (each of at least two samples), e.g. a fixed slice of the
            training split.

    Afterwards ``module`` is in eval mode and every BN layer keeps its original momentum; BN
    layers the path does not use end with reset statistics (they are recalibrated when a path
    uses them).
    """
    reestimate_bn(module, forward, batches)


def calibration_batches(
    x: torch.Tensor, num_batches: int, batch_size: int, seed: int = 0
) -> list[torch.Tensor]:
    """A fixed, seeded selection of ``num_batches`` batches of ``x`` (fewer if ``x`` is short);
    the same for every arch, so their evaluations are comparable."""
    gen = torch.Generator().manual_seed(seed)
    n = min(len(x), num_batches * batch_size)
    idx = torch.randperm(len(x), generator=gen)[:n]
    out = [x[idx[i : i + batch_size]] for i in range(0, n, batch_size)]
    return [b for b in out if len(b) >= 2]
