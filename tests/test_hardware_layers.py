"""Layer plans of the built-in spaces: plans cover the model exactly, every planned layer is
enumerated for tables, plans are cached per genotype, and the layer-factory registry."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nasforge.hardware.layers import BRANCH_OPS, enumerate_layers, layers_of, supports
from nasforge.nn.layers import LayerFactoryError, build_layer, register_layer, registered_layers
from nasforge.space import Categorical, SearchSpace
from nasforge.space.plan import Cell, LayerSpec, NotDecomposable, check_plan, plan_layers
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
def test_every_planned_layer_is_enumerated_and_plans_are_well_formed(
    name: str, shape: tuple[int, ...]
) -> None:
    space = create_space(name, shape, 10)
    known = set(space.all_layers())
    assert known == set(enumerate_layers(space))
    rng = np.random.default_rng(0)
    for _ in range(100):
        plan = check_plan(layers_of(space, space.sample(rng)))
        for layer in plan_layers(plan):
            assert layer in known, layer.key


@pytest.mark.parametrize("name, shape", SPACES)
def test_plan_has_exactly_the_models_parameters(name: str, shape: tuple[int, ...]) -> None:
    space = create_space(name, shape, 10)
    rng = np.random.default_rng(1)
    for _ in range(3):
        arch = space.sample(rng)
        total = 0
        for seg, rep in space.plan(arch):
            layers = list(seg.layers()) if isinstance(seg, Cell) else [seg]
            total += rep * sum(_params(build_layer(lay)) for lay in layers)
        assert total == _params(space.build(arch))


def test_mobile_plan_shapes_chain() -> None:
    space = create_space("mobile", (3, 32, 32), 10)
    arch = space.sample(np.random.default_rng(2))
    plan = [seg for seg, _ in space.plan(arch)]
    assert all(isinstance(seg, LayerSpec) for seg in plan)
    with torch.no_grad():
        for a, b in itertools.pairwise(plan):
            assert isinstance(a, LayerSpec) and isinstance(b, LayerSpec)
            out = build_layer(a)(torch.zeros(1, *a.in_shape))
            assert tuple(out.shape[1:]) == b.in_shape, (a.key, b.key)


@pytest.mark.parametrize("name", ["nb201", "darts"])
def test_plans_are_cached_per_genotype_and_equal_a_fresh_plan(name: str) -> None:
    space = create_space(name, (3, 16, 16), 10)
    arch = space.sample(np.random.default_rng(3))
    first = space.plan(arch)
    assert space.plan(space.make(dict(arch))) is first  # same genotype: the same objects
    fresh = create_space(name, (3, 16, 16), 10).plan(arch)
    assert fresh == first and fresh is not first


def test_keys_are_stable_text() -> None:
    space = create_space("nb201", (3, 32, 32), 10)
    keys = [lay.key for lay in space.all_layers()]
    assert len(keys) == len(set(keys))
    assert "nb201.op(nor_conv_3x3,16,16,1)@16x32x32" in keys


def test_a_space_without_a_plan_is_not_decomposable() -> None:
    class Toy(SearchSpace):
        name = "toy"

    toy = Toy([Categorical("a", choices=(1, 2))])
    assert not supports(toy) and not toy.has_plan
    with pytest.raises(NotDecomposable, match="toy.*plan"):
        layers_of(toy, toy.sample(np.random.default_rng(0)))
    with pytest.raises(NotDecomposable, match="toy"):
        toy.all_layers()


def test_check_plan_names_the_bad_segment() -> None:
    spec = LayerSpec("sum", (2,), (4, 2, 2))
    with pytest.raises(NotDecomposable, match=r"plan\[0\].*1->1"):
        check_plan(((Cell(2, ((1, 1, spec),), (1,)), 1),))
    with pytest.raises(NotDecomposable, match="repeat count 0"):
        check_plan(((spec, 0),))
    with pytest.raises(NotDecomposable, match="neither a LayerSpec nor a Cell"):
        check_plan((("conv", 1),))  # type: ignore[arg-type]


def test_layer_registry_builds_registered_ops_and_names_unknown_ones() -> None:
    assert {"sum", "concat", "zero", "mobile.ir", "nb201.op", "darts.op"} <= set(
        registered_layers()
    )
    assert "nb201.op" in BRANCH_OPS and "conv3x3_bn" not in BRANCH_OPS
    out = build_layer(LayerSpec("concat", (3,), (2, 4, 4)))(torch.ones(1, 2, 4, 4))
    assert out.shape == (1, 6, 4, 4)
    with pytest.raises(LayerFactoryError, match="'no.such.op'.*registered:"):
        build_layer(LayerSpec("no.such.op", (), (1,)))


def test_registering_an_op_twice_is_refused_unless_it_is_the_same_factory() -> None:
    def factory(args: tuple, in_shape: tuple[int, ...]) -> torch.nn.Module:
        return torch.nn.Identity()

    register_layer("test_layers.identity", factory)
    register_layer("test_layers.identity", factory)  # idempotent
    with pytest.raises(LayerFactoryError, match="already registered"):
        register_layer("test_layers.identity", lambda args, shape: torch.nn.Identity())
    with pytest.raises(LayerFactoryError, match="not callable"):
        register_layer("test_layers.other", "nope")  # type: ignore[arg-type]
