"""The Once-for-All elastic supernet: extraction equals the supernet, elastic kernel / depth /
width give stand-alone shapes, kernel transforms, importance sort, ONNX export."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from nasforge.errors import ConfigError
from nasforge.hardware.onnx import export_onnx, ort_session
from nasforge.nn.blocks import Resized
from nasforge.oneshot.bn import recalibrate_bn
from nasforge.oneshot.ofa.elastic import (
    ELASTIC_DIMS,
    ElasticDepthwise,
    ElasticMobileSupernet,
    elastic_dim,
    elastic_values,
)
from nasforge.space import Arch, Categorical, SearchSpace
from nasforge.spaces.mobile import MobileSpace

SHAPES = [(1, 40), (1, 28, 28)]
IDS = ["1d", "2d"]


def mobile(shape: tuple[int, ...], **options: Any) -> MobileSpace:
    kw: dict[str, Any] = dict(
        stages=((8, 1, 2), (16, 2, 2)),
        kernels=(3, 5, 7),
        expands=(1, 3, 6),
        widths=(0.5, 1.0),
        stem_channels=8,
        head_features=16,
    )
    kw.update(options)
    return MobileSpace(shape, 10, **kw)


def perturbed(space: MobileSpace, seed: int = 0) -> ElasticMobileSupernet:
    """A supernet whose BN statistics / affines and kernel transforms are not the init, so
    every sliced or transformed tensor matters to the outputs."""
    torch.manual_seed(seed)
    net = ElasticMobileSupernet(space)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, _BatchNorm):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
        for name, p in net.named_parameters():
            if "kernel_transforms" in name:
                p.add_(0.2 * torch.randn_like(p))
    return net.eval()


def archs(space: MobileSpace, n: int, seed: int) -> list[Arch]:
    rng = np.random.default_rng(seed)
    net_largest = ElasticMobileSupernet(space).largest_arch()
    smallest: dict[str, Any] = {}
    for dim in space.dimensions():
        if dim.active(smallest):
            smallest[dim.label] = (
                min(dim.choices) if isinstance(dim, Categorical) else dim.low  # type: ignore[attr-defined]
            )
    return [net_largest, space.make(smallest)] + [space.sample(rng) for _ in range(n)]


# -- dims -------------------------------------------------------------------------------------
def test_elastic_values_and_largest_arch() -> None:
    space = mobile((1, 40), activations=("silu", "relu"))
    values = elastic_values(space)
    assert tuple(values) == ELASTIC_DIMS
    assert values["kernel"] == (3, 5, 7)
    assert values["depth"] == (1, 2)
    assert values["expand"] == (1, 3, 6)
    assert values["width"] == (0.5, 1.0)
    assert values["act"] == ("silu", "relu")
    assert values["se"] == (False, True)
    assert values["resolution"] == (1.0,)
    largest = ElasticMobileSupernet(space).largest_arch()
    space.validate(largest)
    assert largest["stage1/depth"] == 2 and largest["stage0/width"] == 1.0
    assert largest["stage1/block1/kernel"] == 7 and largest["stage1/block1/expand"] == 6
    assert largest["stage0/block0/act"] == "silu" and largest["stage0/block1/se"] is True
    assert elastic_dim("stage1/block0/kernel") == "kernel"
    with pytest.raises(ConfigError, match="stage0/foo"):
        elastic_dim("stage0/foo")


def test_non_mobile_space_is_a_config_error() -> None:
    space = SearchSpace([Categorical("x", choices=(1, 2))], name="toy")
    with pytest.raises(ConfigError, match="toy"):
        ElasticMobileSupernet(space)
    with pytest.raises(ConfigError, match="mobile"):
        elastic_values(space)


def test_kernels_without_common_centre_are_refused() -> None:
    with pytest.raises(ConfigError, match="space.kernels"):
        ElasticMobileSupernet(mobile((1, 40), kernels=(3, 4)))


# -- shapes and equality ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_extract_has_the_standalone_shapes(shape: tuple[int, ...]) -> None:
    space = mobile(shape)
    net = ElasticMobileSupernet(space)
    for arch in archs(space, 12, seed=3):
        sub = net.extract(arch)
        ref = space.build(arch)
        assert type(sub) is type(ref)
        got = {k: tuple(v.shape) for k, v in sub.state_dict().items()}
        want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        assert got == want
        assert not sub.training


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_extracted_subnet_equals_supernet_under_its_arch(shape: tuple[int, ...]) -> None:
    space = mobile(shape)
    net = perturbed(space, seed=1)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    outs = []
    with torch.no_grad():
        for arch in archs(space, 12, seed=5):
            want = net(x, arch)
            got = net.extract(arch)(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            outs.append(want)
    # the archs compute different functions (the check above is not vacuous)
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_bn_recalibrated_in_the_supernet_equals_recalibrated_standalone(
    shape: tuple[int, ...],
) -> None:
    space = mobile(shape)
    net = perturbed(space, seed=3)
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randn(6, *shape, generator=gen) for _ in range(2)]
    x = torch.randn(3, *shape, generator=gen)
    for arch in archs(space, 3, seed=7):
        sub = net.extract(arch)
        recalibrate_bn(net, lambda b, a=arch: net(b, a), batches)  # type: ignore[misc]
        recalibrate_bn(sub, sub, batches)
        with torch.no_grad():
            torch.testing.assert_close(net.extract(arch)(x), net(x, arch), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(sub(x), net(x, arch), rtol=1e-4, atol=1e-5)


def test_train_mode_forward_backward_reaches_shared_weights() -> None:
    space = mobile((1, 40))
    net = ElasticMobileSupernet(space).train()
    arch = archs(space, 0, seed=0)[1]  # the smallest
    net(torch.randn(4, 1, 40), arch).logsumexp(1).mean().backward()
    block: Any = net.stages[0][0]  # type: ignore[index]
    grad = block.dw.conv.weight.grad
    assert grad is not None
    used = space.stem_channels  # the smallest: block 0 runs expand 1 on the stem's channels
    assert grad[:used].abs().sum() > 0
    assert grad[used:].abs().sum() == 0  # channels the arch does not use get no gradient


# -- elastic kernel ---------------------------------------------------------------------------
@pytest.mark.parametrize("nd", [1, 2])
def test_smaller_kernel_is_the_transformed_centre(nd: int) -> None:
    torch.manual_seed(0)
    dw = ElasticDepthwise(6, (3, 5, 7), 1, nd)
    w = dw.conv.weight.detach()
    centre = (slice(None), slice(None))
    # identity transforms at init: a plain centre crop
    torch.testing.assert_close(dw.kernel_weight(5, 6), w[(*centre, *[slice(1, 6)] * nd)])
    torch.testing.assert_close(dw.kernel_weight(3, 6), w[(*centre, *[slice(2, 5)] * nd)])
    torch.testing.assert_close(dw.kernel_weight(7, 6), w)
    with torch.no_grad():
        for p in dw.kernel_transforms.values():
            p.copy_(torch.randn_like(p))
    m75, m53 = dw.kernel_transforms["7to5"], dw.kernel_transforms["5to3"]
    w5 = (w[(*centre, *[slice(1, 6)] * nd)].reshape(6, 5**nd) @ m75.T).reshape(6, 1, *[5] * nd)
    w3 = (w5[(*centre, *[slice(1, 4)] * nd)].reshape(6, 3**nd) @ m53.T).reshape(6, 1, *[3] * nd)
    torch.testing.assert_close(dw.kernel_weight(5, 6), w5)
    torch.testing.assert_close(dw.kernel_weight(3, 6), w3)
    torch.testing.assert_close(dw.kernel_weight(3, 4), w3[:4])
    assert not torch.allclose(w3, w[(*centre, *[slice(2, 5)] * nd)])


def test_gradients_reach_the_transforms_of_a_small_kernel() -> None:
    space = mobile((1, 40))
    net = ElasticMobileSupernet(space).train()
    values = dict(net.largest_arch())
    values.update({k: 5 for k in values if k.endswith("/kernel")})
    values["stage0/block0/kernel"] = 3
    net(torch.randn(4, 1, 40), space.make(values)).logsumexp(1).mean().backward()
    first: Any = net.stages[0][0]  # type: ignore[index]
    other: Any = net.stages[1][0]  # type: ignore[index]
    for name in ("7to5", "5to3"):
        grad = first.dw.kernel_transforms[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert other.dw.kernel_transforms["7to5"].grad.abs().sum() > 0
    assert other.dw.kernel_transforms["5to3"].grad is None  # kernel 5 does not use 5 -> 3


# -- importance sort --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_reorganize_keeps_the_largest_and_sorts_by_importance(shape: tuple[int, ...]) -> None:
    space = mobile(shape)
    net = perturbed(space, seed=2)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    largest = net.largest_arch()
    values = dict(largest)
    values.update({k: 3 for k in values if k.endswith("/expand")})
    other = space.make(values)  # half the hidden channels: the sort changes which
    with torch.no_grad():
        before, before_other = net(x, largest), net(x, other)
        net.reorganize_channels()
        torch.testing.assert_close(net(x, largest), before, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(net(x, other), before_other, rtol=1e-3, atol=1e-5)
    for stage in net.stages:
        for block in stage:  # type: ignore[attr-defined]
            w = block.project[0].weight
            importance = w.abs().sum(dim=tuple(d for d in range(w.dim()) if d != 1))
            assert torch.all(importance[:-1] >= importance[1:])
            se_w = block.se.expand.weight
            mid = se_w.abs().sum(dim=tuple(d for d in range(se_w.dim()) if d != 1))
            assert torch.all(mid[:-1] >= mid[1:])
    # the extracted largest still equals the supernet after the sort
    with torch.no_grad():
        torch.testing.assert_close(net.extract(largest)(x), before, rtol=1e-5, atol=1e-5)


# -- stand-alone use --------------------------------------------------------------------------
def test_extracted_net_shares_no_storage() -> None:
    space = mobile((1, 40))
    net = ElasticMobileSupernet(space)
    arch = net.largest_arch()  # the largest: full-size slices, the riskiest for aliasing
    sub = net.extract(arch)
    ptrs = {t.untyped_storage().data_ptr() for t in net.state_dict().values()}
    assert all(t.untyped_storage().data_ptr() not in ptrs for t in sub.state_dict().values())
    before = [p.clone() for p in net.parameters()]
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_extracted_subnet_exports_to_onnx(shape: tuple[int, ...]) -> None:
    space = mobile(shape)
    net = perturbed(space, seed=4)
    arch = archs(space, 1, seed=11)[2]
    sub = net.extract(arch)
    session = ort_session(export_onnx(sub, space.input_shape, batch_size=2))
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = sub(x)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    assert F.softmax(want, 1).shape == (2, 10)


# -- elastic resolution -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, resolutions", [((1, 40), (0.5, 1.0)), ((1, 28, 28), (0.5, 1.0))], ids=IDS
)
def test_elastic_resolution_extracts_a_resized_net_equal_to_the_supernet(
    shape: tuple[int, ...], resolutions: tuple[float, ...]
) -> None:
    space = mobile(shape, resolutions=resolutions)
    assert elastic_values(space)["resolution"] == resolutions
    net = perturbed(space, seed=6)
    assert net.largest_arch()["resolution"] == 1.0
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    rng = np.random.default_rng(8)
    seen = set()
    with torch.no_grad():
        for _ in range(8):
            arch = space.sample(rng)
            seen.add(arch["resolution"])
            sub = net.extract(arch)
            assert isinstance(list(sub.children())[0], Resized) == (arch["resolution"] != 1.0)
            torch.testing.assert_close(sub(x), net(x, arch), rtol=1e-5, atol=1e-5)
        small = dict(net.largest_arch())
        small["resolution"] = 0.5
        arch = space.make(small)
        # the supernet really computes at the smaller size: not the full-size output
        assert not torch.allclose(net(x, arch), net(x, net.largest_arch()), atol=1e-4)
        sub = net.extract(arch)
    assert seen == set(resolutions)
    session = ort_session(export_onnx(sub, space.input_shape, batch_size=2))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, sub(x).detach().numpy(), rtol=1e-4, atol=1e-4)
