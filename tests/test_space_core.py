"""Properties of Arch and SearchSpace on the `mobile` space (Hypothesis)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nasforge.errors import SpaceError
from nasforge.space import Arch, Categorical, Condition, Float, Int, SearchSpace
from nasforge.spaces import create_space, list_spaces

SPACE = create_space("mobile", (1, 8, 8), 10)
SPACE_1D = create_space("mobile", (1, 40), 7)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=12, deadline=None)
@given(seeds)
def test_sampled_arch_validates_builds_and_has_output_shape(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for space, shape, classes in ((SPACE, (1, 8, 8), 10), (SPACE_1D, (1, 40), 7)):
        arch = space.sample(rng)
        space.validate(arch)
        model = space.build(arch).eval()
        with torch.no_grad():
            assert model(torch.randn(3, *shape)).shape == (3, classes)


@settings(max_examples=50, deadline=None)
@given(seeds)
def test_arch_json_round_trip_keeps_key(seed: int) -> None:
    arch = SPACE.sample(np.random.default_rng(seed))
    back = Arch.from_json(arch.to_json())
    assert back == arch and back.key == arch.key
    assert json.loads(json.dumps(dict(arch))) == dict(arch)


@settings(max_examples=50, deadline=None)
@given(seeds)
def test_mutation_crossover_neighbors_stay_in_space(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    child = SPACE.mutate(a, rng)
    SPACE.validate(child)
    assert child.key != a.key
    SPACE.validate(SPACE.crossover(a, b, rng))
    nbrs = SPACE.neighbors(a)
    assert nbrs and all(n.key != a.key for n in nbrs)
    for n in nbrs[:10]:
        SPACE.validate(n)
    assert SPACE.encode(a).shape == (SPACE.encoding_size,)


def test_key_is_stable_and_order_independent() -> None:
    a = Arch({"x": 1, "y": "relu"})
    b = Arch({"y": "relu", "x": 1})
    assert a.key == b.key and a == b and hash(a) == hash(b)
    assert Arch({"x": 2, "y": "relu"}).key != a.key


def test_validate_names_label_and_allowed_values() -> None:
    arch = dict(SPACE.sample(np.random.default_rng(0)))
    arch["stage0/block0/kernel"] = 4
    with pytest.raises(SpaceError, match=r"stage0/block0/kernel = 4 .*one of 3, 5, 7"):
        SPACE.validate(arch)
    with pytest.raises(SpaceError, match="unknown label 'stage9/depth'"):
        SPACE.validate({**arch, "stage9/depth": 1})


def test_conditional_dimensions_follow_depth() -> None:
    rng = np.random.default_rng(1)
    arch = dict(SPACE.sample(rng))
    arch["stage1/depth"] = 1
    fixed = SPACE.repair(arch, rng)
    assert "stage1/block1/kernel" not in fixed
    with pytest.raises(SpaceError, match="only exists when stage1/depth >= 2"):
        SPACE.validate({**dict(fixed), "stage1/block1/kernel": 3})
    deeper = SPACE.repair({**dict(fixed), "stage1/depth": 3}, rng)
    assert {"stage1/block1/kernel", "stage1/block2/act"} <= set(deeper)


def test_generic_dimensions() -> None:
    space = SearchSpace(
        [
            Int("depth", low=1, high=4),
            Float("lr", low=1e-4, high=1e-1, log=True),
            Categorical("op", choices=("a", "b"), when=(Condition("depth", ">=", 2),)),
        ]
    )
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = space.sample(rng)
        space.validate(a)
        assert 1e-4 <= a["lr"] <= 1e-1
        assert ("op" in a) == (a["depth"] >= 2)
    with pytest.raises(ValueError, match="not listed before"):
        SearchSpace([Categorical("op", choices=("a",), when=(Condition("depth", ">=", 2),))])


def test_registry_lists_mobile() -> None:
    assert "mobile" in {e.name for e in list_spaces()}
