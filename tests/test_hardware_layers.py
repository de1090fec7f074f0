"""Layer decomposition: plans cover the model exactly, tables can enumerate every layer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nasforge.hardware.layers import (
    Cell,
    NotDecomposable,
    build_layer,
    enumerate_layers,
    layers_of,
    plan_layers,
    supports,
)
from nasforge.space import Categorical, SearchSpace
from nasforge.spaces import create_space

SPACES = [
    ("mobile", (3, 32, 32)),
    ("mobile", (1, 40)),
    ("nb201", (3, 16, 16)),
    ("darts", (3, 16, 16)),
]


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name, shape", SPACES)
def test_every_planned_layer_is_enumerated(name: str, shape: tuple[int, ...]) -> None:
    space = create_space(name, shape, 10)
    known = set(enumerate_layers(space))
    rng = np.random.default_rng(0)
    for _ in range(100):
        for layer in plan_layers(layers_of(space, space.sample(rng))):
            assert layer in known, layer.key


@pytest.mark.parametrize("name, shape", SPACES)
def test_plan_has_exactly_the_models_parameters(name: str, shape: tuple[int, ...]) -> None:
    space = create_space(name, shape, 10)
    rng = np.random.default_rng(1)
    for _ in range(3):
        arch = space.sample(rng)
        total = 0
        for seg, rep in layers_of(space, arch):
            layers = list(seg.layers()) if isinstance(seg, Cell) else [seg]
            total += rep * sum(_params(build_layer(lay)) for lay in layers)
        assert total == _params(space.build(arch))


def test_mobile_plan_shapes_chain() -> None:
    space = create_space("mobile", (3, 32, 32), 10)
    arch = space.sample(np.random.default_rng(2))
    plan = [seg for seg, _ in layers_of(space, arch)]
    with torch.no_grad():
        for a, b in itertools.pairwise(plan):
            out = build_layer(a)(torch.zeros(1, *a.in_shape))
            assert tuple(out.shape[1:]) == b.in_shape, (a.key, b.key)


def test_keys_are_stable_text() -> None:
    space = create_space("nb201", (3, 32, 32), 10)
    keys = [lay.key for lay in enumerate_layers(space)]
    assert len(keys) == len(set(keys))
    assert "nb201.op(nor_conv_3x3,16,16,1)@16x32x32" in keys


def test_unknown_space_is_not_decomposable() -> None:
    class Toy(SearchSpace):
        name = "toy"

    toy = Toy([Categorical("a", choices=(1, 2))])
    assert not supports(toy)
    with pytest.raises(NotDecomposable, match="toy"):
        layers_of(toy, toy.sample(np.random.default_rng(0)))
