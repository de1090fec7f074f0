"""Zero-cost proxies: finite, deterministic scores on a tiny nb201 net with digits-sized
inputs; the ``proxy`` evaluator from a config-like call; the ``proxy_filter`` strategy asks
only proxy-best candidates and keeps the ask/tell/state_dict contracts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nasforge.errors import ConfigError
from nasforge.evaluators import EvaluatorContext, create_evaluator, evaluator_entry
from nasforge.evaluators.proxies.combiner import ProxyCombiner, rank_vote
from nasforge.evaluators.proxies.measures import PROXIES
from nasforge.evaluators.proxy import ProxyEvaluator, ProxyScorer
from nasforge.space import Arch
from nasforge.spaces.nb201 import NB201Space
from nasforge.strategies import create_strategy
from nasforge.testing import run_search
from nasforge.train import TrainConfig


def tiny_space() -> NB201Space:
    """NB201 cells at digits size (1x8x8, 10 classes), 4 channels, one cell per stage."""
    return NB201Space(input_shape=(1, 8, 8), num_classes=10, C=4, N=1)


def conv_arch(space: NB201Space) -> Arch:
    return space.from_string(
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
    )


@pytest.fixture(scope="module")
def space() -> NB201Space:
    return tiny_space()


@pytest.mark.parametrize("proxy", PROXIES)
def test_each_proxy_is_finite_and_deterministic(space: NB201Space, proxy: str) -> None:
    arch = conv_arch(space)
    first = ProxyScorer(space, [proxy], batch_size=16, inputs="digits", seed=3)
    again = ProxyScorer(space, [proxy], batch_size=16, inputs="digits", seed=3)
    a, cpu = first.score(arch)
    b, _ = again.score(arch)
    assert set(a) == {proxy}
    assert math.isfinite(a[proxy])
    assert a == b
    assert cpu >= 0.0


def test_proxies_together_equal_proxies_alone(space: NB201Space) -> None:
    """The shared gradient pass and synflow's copy give what each proxy computes alone."""
    arch = conv_arch(space)
    together, _ = ProxyScorer(space, PROXIES, 16, "digits", seed=1).score(arch)
    for proxy in PROXIES:
        alone, _ = ProxyScorer(space, [proxy], 16, "digits", seed=1).score(arch)
        assert alone[proxy] == pytest.approx(together[proxy], rel=1e-6)


def test_proxies_tell_archs_apart(space: NB201Space) -> None:
    """A cell with convs scores above the all-skip cell on params and synflow."""
    scorer = ProxyScorer(space, ["synflow", "params"], 16, "digits", seed=0)
    conv, _ = scorer.score(conv_arch(space))
    skip, _ = scorer.score(space.make({label: "skip_connect" for label in space.labels()}))
    assert conv["params"] > skip["params"]
    assert conv["synflow"] > skip["synflow"]


def test_synflow_is_data_free(space: NB201Space) -> None:
    arch = conv_arch(space)
    values = {
        ProxyScorer(space, ["synflow"], 16, inputs, seed=2).score(arch)[0]["synflow"]
        for inputs in ("random", "digits", "mnist5k")
    }
    assert len(values) == 1
    assert ProxyScorer(space, ["synflow"], inputs="digits").data_free


def test_data_dependent_proxies_depend_on_inputs(space: NB201Space) -> None:
    arch = conv_arch(space)
    a = ProxyScorer(space, ["naswot", "snip"], 16, "random", seed=2).score(arch)[0]
    b = ProxyScorer(space, ["naswot", "snip"], 16, "digits", seed=2).score(arch)[0]
    assert a != b
    scorer = ProxyScorer(space, ["snip"], 16, "digits", seed=2)
    assert "digits" in scorer.input_description and "(1, 8, 8)" in scorer.input_description


def test_scorer_refuses_bad_options(space: NB201Space) -> None:
    with pytest.raises(ConfigError, match="proxies"):
        ProxyScorer(space, ["synflw"])
    with pytest.raises(ConfigError, match="inputs"):
        ProxyScorer(space, ["snip"], inputs="cifar100")
    with pytest.raises(ConfigError, match="batch_size"):
        ProxyScorer(space, ["snip"], batch_size=1)


def test_evaluator_from_config_like_call(space: NB201Space) -> None:
    context = EvaluatorContext(space=space, dataset=None, train=TrainConfig(), latency=None, seed=4)
    options = {"proxies": ["synflow", "naswot", "params"], "batch_size": 16, "score": "naswot"}
    evaluator = create_evaluator("proxy", context, **options)
    assert isinstance(evaluator, ProxyEvaluator)
    assert evaluator_entry("proxy").name == "proxy"
    result = evaluator.evaluate(conv_arch(space))
    assert evaluator.produces() <= set(result.metrics)
    assert result.metrics["proxy_score"] == result.metrics["naswot"]
    assert "random" in result.info["inputs"]  # no dataset in the context: random inputs
    assert result.cost_seconds == result.metrics["proxy_cpu_s"]
    with pytest.raises(ConfigError, match="score"):
        create_evaluator("proxy", context, proxies=["synflow"], score="snip")
    with pytest.raises(ConfigError, match="evaluator.options"):
        create_evaluator("proxy", context, proxy="synflow")


def test_combiner_and_vote(space: NB201Space) -> None:
    rng = np.random.default_rng(0)
    archs = list({a.key: a for a in (space.sample(rng) for _ in range(30))}.values())
    scorer = ProxyScorer(space, ["synflow", "params"], inputs="random")
    values = scorer.score_many(archs)
    target = [v["params"] for v in values]  # a learnable target: the fit must rank it
    comb = ProxyCombiner(space, ["synflow", "params"]).fit(archs, values, target)
    pred = comb.predict(archs, values)
    assert np.corrcoef(pred, target)[0, 1] > 0.9
    vote = rank_vote(values, ["params"])
    assert int(np.argmax(vote)) == int(np.argmax(target))


# -- the proxy_filter strategy ---------------------------------------------------------------------
FILTER = {"proxy": {"proxies": ["params", "synflow"]}, "pool": 60, "keep": 12, "warm": 4}


def _score(arch: Arch) -> float:
    """A deterministic score: the number of 3x3 convs (a stand-in for a measured accuracy)."""
    return float(sum(v == "nor_conv_3x3" for v in arch.values()))


def _vote_top(space: NB201Space, seed: int, keep: int) -> set[str]:
    """The ``keep`` best distinct archs of the pool by the vote, computed here from scratch."""
    rng = np.random.default_rng([seed, 2021])
    pool = list({a.key: a for a in (space.sample(rng) for _ in range(FILTER["pool"]))}.values())
    scorer = ProxyScorer(space, ["params", "synflow"], inputs="random")
    vote = rank_vote(scorer.score_many(pool), ["params", "synflow"])
    return {pool[int(i)].key for i in np.argsort(-vote, kind="stable")[:keep]}


@pytest.mark.parametrize("inner", ["surrogate", "evolution", "random"])
def test_filter_asks_only_proxy_best(space: NB201Space, inner: str) -> None:
    options = {**FILTER, "strategy": inner}
    if inner == "evolution":
        options["strategy_options"] = {"population": 4, "tournament": 2}
    strategy = create_strategy("proxy_filter", space, seed=1, **options)
    records = run_search(strategy, _score, budget=12, batch=2)
    ranked = strategy.ranked  # type: ignore[attr-defined]
    kept = {a.key for a in ranked}
    assert kept == _vote_top(space, 1, 12)
    assert {a.key for a, _ in records} == kept  # all 12 asks are distinct kept archs
    assert [a.key for a, _ in records[:4]] == [a.key for a in ranked[:4]]  # warm start order


def test_filter_takes_its_constraint_at_construction(space: NB201Space) -> None:
    # the toy-space loop of test_config_seam cannot build networks; the same contract here
    def constraint(arch: Arch) -> bool:
        return arch[sorted(arch)[0]] != "none"

    strategy = create_strategy("proxy_filter", space, seed=0, constraint=constraint, **FILTER)
    assert strategy.constraint is constraint
    asked = strategy.ask(4)
    assert asked and all(constraint(a) for a in asked)


def test_filter_is_seeded_and_round_trips_state(space: NB201Space) -> None:
    options = {**FILTER, "keep": 20}

    def run(seed: int) -> list[str]:
        s = create_strategy("proxy_filter", space, seed=seed, **options)
        return [a.key for a, _ in run_search(s, _score, budget=10)]

    assert run(5) == run(5)
    original = create_strategy("proxy_filter", space, seed=3, **options)
    run_search(original, _score, budget=7)
    state = json.loads(json.dumps(original.state_dict()))
    restored = create_strategy("proxy_filter", space, seed=3, **options)
    restored.load_state_dict(state)
    assert [a.key for a in restored.ask(3)] == [a.key for a in original.ask(3)]


def test_filter_replay_does_not_reask(space: NB201Space) -> None:
    options = {
        **FILTER,
        "strategy": "evolution",
        "strategy_options": {"population": 4, "tournament": 2},
    }
    live = create_strategy("proxy_filter", space, seed=2, **options)
    records = run_search(live, _score, budget=6)
    resumed = create_strategy("proxy_filter", space, seed=2, **options)
    resumed.replay(records)
    new = resumed.ask(4)
    assert not {a.key for a in new} & {a.key for a, _ in records}


def test_filter_refuses_bad_options(space: NB201Space) -> None:
    with pytest.raises(ConfigError, match="strategy.options"):
        create_strategy("proxy_filter", space, keep=3, warm=5)
    with pytest.raises(ConfigError, match="pool"):
        create_strategy("proxy_filter", space, pool=0)
    with pytest.raises(ConfigError, match="proxies"):
        create_strategy("proxy_filter", space, proxy={"proxies": ["nope"]})
    with pytest.raises(ConfigError, match="evolution"):
        create_strategy(
            "proxy_filter", space, strategy="evolution", strategy_options={"population": 1}
        )


def test_torch_threads_untouched(space: NB201Space) -> None:
    n = torch.get_num_threads()
    ProxyScorer(space, ["snip"], 16, "digits").score(conv_arch(space))
    assert torch.get_num_threads() == n
