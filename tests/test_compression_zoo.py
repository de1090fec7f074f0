"""The torchvision-style zoo (issue 14): the models build, run, trace with torch.fx on the
code paths torchvision's have, and the data adapter makes MNIST fit a 3-channel model."""

from __future__ import annotations

import pytest
import torch
from torch import fx

from nasforge.compression import zoo
from nasforge.data import adapt_input, load_dataset
from nasforge.errors import DataError

SMALL = {
    "resnet18": lambda: zoo.resnet18(width=8),
    "mobilenet_v2": lambda: zoo.mobilenet_v2_tv(width=0.25),
    "efficientnet_b0": lambda: zoo.efficientnet_b0(width=0.25),
    "vit_tiny": lambda: zoo.vit_tiny(num_layers=2, hidden_dim=48, mlp_dim=96, num_heads=3),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_zoo_model_runs_and_traces(name: str) -> None:
    torch.manual_seed(0)
    m = SMALL[name]().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = m(x)
        assert y.shape == (2, 10)
        gm = fx.symbolic_trace(m)
        assert torch.allclose(gm(x), y, atol=1e-5)


def test_zoo_names_match_constructors() -> None:
    assert set(zoo.MODELS) == set(SMALL)


def test_efficientnet_keeps_torchvision_code_paths() -> None:
    m = zoo.efficientnet_b0(width=0.25)
    gm = fx.symbolic_trace(m)
    called = {getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes}
    assert "stochastic_depth" in called  # fx-wrapped, as torchvision's
    mods = [type(s).__name__ for s in m.modules()]
    assert "SiLU" in mods and "Sigmoid" in mods and "SqueezeExcitationTV" in mods


def test_vit_keeps_asserts_and_shape_arithmetic() -> None:
    gm = fx.symbolic_trace(SMALL["vit_tiny"]())
    called = {getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes}
    assert {"_assert", "eq", "floordiv"} <= called
    with pytest.raises(Exception, match="Wrong image height"):
        SMALL["vit_tiny"]()(torch.randn(1, 3, 28, 28))


def test_stochastic_depth_is_identity_in_eval_and_random_in_training() -> None:
    x = torch.ones(64, 4)
    assert torch.equal(zoo.stochastic_depth(x, 0.5, "row", training=False), x)
    torch.manual_seed(0)
    y = zoo.stochastic_depth(x, 0.5, "row", training=True)
    rows = set(y[:, 0].tolist())
    assert rows == {0.0, 2.0}  # dropped rows, survivors scaled by 1/(1-p)


def test_adapt_input_grey_to_rgb_and_resize() -> None:
    ds = load_dataset("mnist5k")
    out = adapt_input(ds, (3, 32, 32))
    assert out.input_shape == (3, 32, 32)
    assert len(out.x_train) == len(ds.x_train) and torch.equal(out.y_test, ds.y_test)
    assert torch.equal(out.x_train[:, 0], out.x_train[:, 2])
    assert adapt_input(ds, ds.input_shape) is ds


def test_adapt_input_names_both_shapes_when_impossible() -> None:
    ds = load_dataset("mnist5k")
    rgb = adapt_input(ds, (3, 28, 28))
    with pytest.raises(
        DataError, match=r"\(1, 28, 28\).*\(3, 28, 28\)|\(3, 28, 28\).*\(1, 28, 28\)"
    ):
        adapt_input(rgb, (1, 28, 28))
    with pytest.raises(DataError, match="different rank"):
        adapt_input(ds, (3, 32))
