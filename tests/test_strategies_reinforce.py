"""ReinforceStrategy: tokens, learning signal, PPO, JSON state of the controller, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nasforge.errors import ConfigError
from nasforge.strategies import create_strategy
from nasforge.strategies.reinforce import ReinforceConfig, ReinforceStrategy, dimension_choices
from nasforge.testing import (
    conditional_objective,
    conditional_toy_space,
    run_search,
    toy_objective,
    toy_space,
)


def test_tokens_follow_the_space_and_skip_inactive_dims() -> None:
    space = conditional_toy_space()
    strategy = ReinforceStrategy(space, seed=0)
    labels = [d.label for d in space.dimensions()]
    for arch in strategy.sample(20):
        toks = strategy.tokens(arch)
        for label, tok, choices in zip(labels, toks, strategy.choices):
            if label in arch:
                assert 0 <= tok < len(choices)
                if label != "lr":  # floats are binned
                    assert choices[tok] == arch[label]
            else:
                assert tok == -1
    lr = dimension_choices(space.dimension("lr"), 10)
    assert len(lr) == 10 and all(space.dimension("lr").contains(v) for v in lr)


def test_policy_learns_the_toy_target() -> None:
    space = toy_space()
    evaluate, _ = toy_objective(space, 0)
    strategy = ReinforceStrategy(space, seed=0)
    before = strategy.probabilities()
    run_search(strategy, evaluate, budget=100)
    after = strategy.probabilities()
    rng = np.random.default_rng(10_000)  # toy_objective's target draw for seed 0
    target = {d.label: d.sample(rng) for d in space.dimensions()}
    gained = [after[lb][int(target[lb])] - before[lb][int(target[lb])] for lb in target]
    assert strategy.updates == 100 // strategy.config.batch_size
    assert sum(g > 0.1 for g in gained) >= 5, gained


@pytest.mark.parametrize("algorithm", ["reinforce", "ppo"])
def test_updates_change_weights_and_state_round_trips_exactly(algorithm: str) -> None:
    space = conditional_toy_space()
    strategy = ReinforceStrategy(space, seed=1, algorithm=algorithm)
    w0 = {k: v.clone() for k, v in strategy.controller.state_dict().items()}
    run_search(strategy, conditional_objective, budget=12)
    assert any(not torch.equal(w0[k], v) for k, v in strategy.controller.state_dict().items())
    state = json.loads(json.dumps(strategy.state_dict()))
    assert all(isinstance(v, list) for v in state["extra"]["controller"].values())
    restored = ReinforceStrategy(space, seed=1, algorithm=algorithm)
    restored.load_state_dict(state)
    for k, v in strategy.controller.state_dict().items():
        assert torch.equal(v, restored.controller.state_dict()[k])
    # the optimizer's moments came back too: the next update is identical
    a = run_search(strategy, conditional_objective, budget=10)
    b = run_search(restored, conditional_objective, budget=10)
    assert [x.key for x, _ in a] == [x.key for x, _ in b]
    for k, v in strategy.controller.state_dict().items():
        assert torch.equal(v, restored.controller.state_dict()[k])


def test_global_torch_state_is_left_alone() -> None:
    rng_state = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    strategy = ReinforceStrategy(toy_space(), seed=3)
    run_search(strategy, lambda a: float(a["d0"]), budget=10)
    assert torch.equal(rng_state, torch.random.get_rng_state())
    assert torch.get_num_threads() == threads


def test_options_are_validated_with_field_names() -> None:
    with pytest.raises(ConfigError, match="reinforce.algorithm"):
        create_strategy("reinforce", toy_space(), algorithm="a2c")
    with pytest.raises(ConfigError, match="reinforce.lr"):
        create_strategy("reinforce", toy_space(), lr=0.0)
    with pytest.raises(ConfigError, match="unknown option"):
        create_strategy("reinforce", toy_space(), learning_rate=0.1)
    assert ReinforceStrategy(
        toy_space(), config=ReinforceConfig(batch_size=2), lr=0.5
    ).config == ReinforceConfig(batch_size=2, lr=0.5)
