"""`JointSpace` (issue 15): any architecture space plus searched recipe and compression
dimensions, seen by every strategy as one space; building, plans and descriptions are the
inner space's on the architecture part."""

from __future__ import annotations

import copy
import pickle
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from nasforge.errors import SpaceError
from nasforge.experiment.setup import pin_labels
from nasforge.space import Arch, Categorical, Float, Int, SearchSpace
from nasforge.space.joint import JointSpace, inner_space, recipe_train_config, split_arch
from nasforge.spaces import create_space
from nasforge.strategies import STRATEGIES, create_strategy, strategy_factory
from nasforge.testing import toy_space
from nasforge.testing.strategies import run_search
from nasforge.train import TrainConfig

RECIPE = [
    Float("recipe/lr", low=0.001, high=0.1, log=True),
    Categorical("recipe/optimizer", choices=("sgd", "adamw")),
    Int("recipe/epochs", low=1, high=3),
]
COMPRESS = [
    Categorical("compress/prune_ratio", choices=(0.0, 0.5)),
    Categorical("compress/bits", choices=(32, 8)),
]


@pytest.fixture(scope="module")
def mobile() -> SearchSpace:
    return create_space("mobile", (1, 8, 8), 10)


@pytest.fixture(scope="module")
def joint(mobile: SearchSpace) -> JointSpace:
    return JointSpace(mobile, RECIPE + COMPRESS)


def test_samples_validate_split_and_build_as_the_inner_arch(
    mobile: SearchSpace, joint: JointSpace
) -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        arch = joint.sample(rng)
        joint.validate(arch)
        inner, recipe, compress = split_arch(joint, arch)
        assert set(recipe) == {"lr", "optimizer", "epochs"}
        assert set(compress) == {"prune_ratio", "bits"}
        assert inner.key == mobile.make(dict(inner)).key  # the architecture's own key
        assert set(inner) | {f"recipe/{k}" for k in recipe} | {
            f"compress/{k}" for k in compress
        } == set(arch)
        torch.manual_seed(0)
        out = joint.build(arch)(torch.zeros(2, 1, 8, 8))
        torch.manual_seed(0)
        assert torch.equal(out, mobile.build(inner)(torch.zeros(2, 1, 8, 8)))
        assert joint.plan(arch) == mobile.plan(inner)
        assert joint.input_size(arch) == mobile.input_size(inner)  # inner's own helper
        text = joint.describe(arch)
        assert text.startswith(mobile.describe(inner)) and "recipe/optimizer = " in text
    assert joint.input_shape == (1, 8, 8) and joint.name == mobile.name
    assert joint.has_plan and joint.all_layers() == mobile.all_layers()
    assert inner_space(joint) is mobile and inner_space(mobile) is mobile


def test_a_value_outside_a_joint_dimension_is_refused(joint: JointSpace) -> None:
    arch = dict(joint.sample(np.random.default_rng(1)))
    with pytest.raises(SpaceError, match=r"recipe/lr = 0\.5 is not allowed"):
        joint.make({**arch, "recipe/lr": 0.5})
    with pytest.raises(SpaceError, match="missing label 'compress/bits'"):
        joint.make({k: v for k, v in arch.items() if k != "compress/bits"})
    with pytest.raises(ValueError, match="recipe/ or compress/"):
        JointSpace(toy_space(), [Float("lr", low=0.1, high=1.0)])


def test_mutate_crossover_neighbors_and_encode_cover_the_joint_dims(joint: JointSpace) -> None:
    rng = np.random.default_rng(2)
    a, b = joint.sample(rng), joint.sample(rng)
    changed: set[str] = set()
    for _ in range(200):
        child = joint.mutate(a, rng)
        joint.validate(child)
        assert child.key != a.key
        changed |= {k for k in child if child.get(k) != a.get(k)}
    assert {d.label for d in RECIPE + COMPRESS} <= changed
    for _ in range(20):
        joint.validate(joint.crossover(a, b, rng))
    near = joint.neighbors(a)
    assert any(n["recipe/optimizer"] != a["recipe/optimizer"] for n in near)
    assert any(n["compress/bits"] != a["compress/bits"] for n in near)
    widths = sum(d.width for d in RECIPE + COMPRESS)
    assert joint.encoding_size == joint.inner.encoding_size + widths
    assert joint.encode(a).shape == (joint.encoding_size,)


def test_equivalent_cells_with_the_same_recipe_share_a_key() -> None:
    nb201 = create_space("nb201", (3, 8, 8), 10)
    space = JointSpace(nb201, RECIPE[1:2])
    rng = np.random.default_rng(0)
    by_key: dict[str, set[Arch]] = defaultdict(set)
    for _ in range(400):
        inner = nb201.sample(rng)
        by_key[inner.key].add(inner)
    twins = next(sorted(group, key=str) for group in by_key.values() if len(group) > 1)
    first, second = twins[0], twins[1]
    assert dict(first) != dict(second)
    same_a = space.make({**first, "recipe/optimizer": "sgd"})
    same_b = space.make({**second, "recipe/optimizer": "sgd"})
    assert same_a.key == same_b.key  # the inner space's canonical form is kept
    other = space.make({**second, "recipe/optimizer": "adamw"})
    assert other.key != same_a.key  # another recipe is another trial


def test_pinning_a_joint_label_keeps_the_inner_space(joint: JointSpace) -> None:
    pinned = pin_labels(joint, {"recipe/optimizer": "adamw", "compress/bits": 8})
    assert isinstance(pinned, JointSpace) and pinned.inner is joint.inner
    rng = np.random.default_rng(3)
    archs = [pinned.sample(rng) for _ in range(10)]
    assert {a["recipe/optimizer"] for a in archs} == {"adamw"}
    assert {a["compress/bits"] for a in archs} == {8}
    assert joint.dimension("recipe/optimizer").choices == ("sgd", "adamw")  # type: ignore[attr-defined]


def test_copies_and_pickles_work_alike(joint: JointSpace) -> None:
    arch = joint.sample(np.random.default_rng(4))
    for clone in (copy.copy(joint), pickle.loads(pickle.dumps(joint))):
        assert clone.make(dict(arch)).key == arch.key
        assert clone.sample(np.random.default_rng(4)) == arch


class _EvenDepthSpace(SearchSpace):
    """A plugin-style space with a check beyond its dimensions and its own sampler."""

    def __init__(self) -> None:
        super().__init__([Int("depth", low=1, high=6), Categorical("act", choices=("a", "b"))])

    def validate(self, arch: Any) -> None:
        super().validate(arch)
        if arch["depth"] % 2:
            raise SpaceError(f"depth must be even, got {arch['depth']}")

    def sample(self, rng: np.random.Generator) -> Arch:
        return self.make({"depth": 2 * int(rng.integers(1, 4)), "act": "a"})

    def mutate(self, arch: Arch, rng: np.random.Generator, max_tries: int = 20) -> Arch:
        return self.make({**arch, "depth": 2 + (int(arch["depth"]) % 6)})  # 2 -> 4 -> 6 -> 2


def test_a_plugin_spaces_own_checks_and_sampler_are_kept() -> None:
    space = JointSpace(_EvenDepthSpace(), RECIPE[:1])
    rng = np.random.default_rng(5)
    archs = [space.sample(rng) for _ in range(20)]
    assert all(a["depth"] % 2 == 0 and a["act"] == "a" for a in archs)
    assert len({a["recipe/lr"] for a in archs}) == 20
    with pytest.raises(SpaceError, match="depth must be even"):
        space.make({"depth": 3, "act": "a", "recipe/lr": 0.01})
    arch = archs[0]
    children = [space.mutate(arch, rng) for _ in range(40)]
    for child in children:
        space.validate(child)  # the space's own mutation keeps depth even
    assert {c["depth"] for c in children} == {arch["depth"], 2 + int(arch["depth"]) % 6}
    assert any(c["recipe/lr"] != arch["recipe/lr"] for c in children)


def test_recipe_train_config_overrides_and_revalidates() -> None:
    base = TrainConfig(epochs=3, lr=0.05, seed=7)
    assert recipe_train_config(base, {}) is base
    out = recipe_train_config(base, {"lr": 0.01, "optimizer": "adamw"})
    assert isinstance(out, TrainConfig)
    assert (out.lr, out.optimizer, out.epochs, out.seed) == (0.01, "adamw", 3, 7)
    with pytest.raises(ValidationError, match="optimizer"):
        recipe_train_config(base, {"optimizer": "adam"})
    # the older switch cannot contradict a searched schedule
    legacy = TrainConfig(cosine=False)
    assert legacy.schedule == "constant"
    assert recipe_train_config(legacy, {"schedule": "step"}).schedule == "step"
    assert recipe_train_config(legacy, {"lr": 0.1}).schedule == "constant"


def _joint_objective(arch: Arch) -> float:
    # the optimum needs the architecture AND the recipe: d0 == 3, adamw, lr near 0.01
    return (
        float(arch["d0"] == 3)
        + float(arch["recipe/optimizer"] == "adamw")
        - abs(np.log10(float(arch["recipe/lr"])) + 2.0)
    )


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in sorted(STRATEGIES)
        if n != "proxy_filter"  # scores built networks
        and not getattr(strategy_factory(n), "multi_fidelity", False)  # asked by the loop
    ],
)
def test_every_strategy_searches_the_joint_space(name: str) -> None:
    space = JointSpace(toy_space(3, 4), RECIPE[:2])
    records = run_search(create_strategy(name, space, seed=0), _joint_objective, budget=16)
    assert len(records) == 16
    for arch, _ in records:
        space.validate(arch)
    assert len({a.key for a, _ in records}) == 16
    again = run_search(create_strategy(name, space, seed=0), _joint_objective, budget=16)
    assert [a.key for a, _ in again] == [a.key for a, _ in records]  # seeded
