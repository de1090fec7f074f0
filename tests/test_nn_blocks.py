"""nn blocks and BN folding, checked against the unfolded model."""

from __future__ import annotations

import numpy as np
import torch

from nasforge.nn import InvertedResidual, fuse_bn
from nasforge.spaces import create_space


def _randomize_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def test_bn_folded_equals_unfolded_on_sampled_archs() -> None:
    for shape in ((1, 28, 28), (1, 40)):
        space = create_space("mobile", shape, 10)
        rng = np.random.default_rng(3)
        for _ in range(3):
            model = space.build(space.sample(rng)).eval()
            _randomize_bn(model)
            fused = fuse_bn(model)
            x = torch.randn(4, *shape)
            with torch.no_grad():
                torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
            n_bn = sum(
                isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in fused.modules()
            )
            assert n_bn == 0


def test_inverted_residual_uses_residual_only_when_shapes_match() -> None:
    assert InvertedResidual(16, 16, stride=1).use_res
    assert not InvertedResidual(16, 24, stride=1).use_res
    assert not InvertedResidual(16, 16, stride=2).use_res
    y = InvertedResidual(8, 16, kernel=5, stride=2, expand=3, se=True, act="silu")(
        torch.randn(2, 8, 9, 9)
    )
    assert y.shape == (2, 16, 5, 5)
