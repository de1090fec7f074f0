"""PredictorStrategy: GP gradients and posterior, MLP ensemble, design, acquisition, options."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import check_grad
from scipy.stats import spearmanr

from nasforge.errors import ConfigError
from nasforge.strategies import create_strategy
from nasforge.strategies.predictor import (
    GPSurrogate,
    MLPEnsembleSurrogate,
    PredictorConfig,
    PredictorStrategy,
    normal_scores,
)
from nasforge.testing import run_search, toy_objective, toy_space


def _one_hot(rng: np.random.Generator, n: int, dims: int = 3, k: int = 4) -> np.ndarray:
    x = np.zeros((n, dims * k))
    for j in range(dims):
        x[np.arange(n), j * k + rng.integers(k, size=n)] = 1.0
    return x


@pytest.mark.parametrize("ard, additive", [(True, False), (True, True), (False, False)])
def test_gp_likelihood_gradient_matches_finite_differences(ard: bool, additive: bool) -> None:
    rng = np.random.default_rng(0)
    x, y = _one_hot(rng, 30), rng.normal(size=30)
    gp = GPSurrogate([4, 4, 4], ard=ard, additive=additive)
    dists = gp._dists(x, x)
    theta = gp.initial() + 0.3 * rng.normal(size=gp.n_params)
    grad = gp._nlml(theta, dists, y)[1]
    err = check_grad(lambda t: gp._nlml(t, dists, y)[0], lambda t: gp._nlml(t, dists, y)[1], theta)
    assert err < 1e-4 * max(1.0, float(np.linalg.norm(grad)))


def test_gp_posterior_interpolates_and_is_unsure_far_away() -> None:
    rng = np.random.default_rng(1)
    x = _one_hot(rng, 40)
    w = rng.normal(size=x.shape[1])
    y = normal_scores(x @ w)
    gp = GPSurrogate([4, 4, 4])
    gp.select(x, y)
    mean, std = gp.posterior(x, y)(x)
    assert np.corrcoef(mean, y)[0, 1] > 0.95
    far = np.zeros((1, x.shape[1]))  # no choice set at all: far from every training point
    assert gp.posterior(x, y)(far)[1][0] > 3 * std.mean()


def test_normal_scores_are_monotone_centred_and_tie_aware() -> None:
    y = np.array([3.0, -1000.0, 3.0, 7.0, 1.0])
    z = normal_scores(y)
    assert z[0] == z[2] and z[1] < z[4] < z[0] < z[3]
    assert abs(normal_scores(np.arange(7.0)).mean()) < 1e-12  # symmetric without ties


def test_mlp_ensemble_fits_a_linear_function() -> None:
    rng = np.random.default_rng(2)
    x = _one_hot(rng, 60)
    y = normal_scores(x @ rng.normal(size=x.shape[1]))
    cfg = PredictorConfig(ensemble_size=3, mlp_steps=100)
    mean, std = MLPEnsembleSurrogate(cfg).posterior(x, y, seed=0)(x)
    assert spearmanr(mean, y).statistic > 0.9
    assert std.shape == mean.shape and np.all(std > 0)


def test_warmup_design_balances_every_choice() -> None:
    space = toy_space()
    strategy = PredictorStrategy(space, seed=4, warmup=8)
    warm = strategy.ask(8)
    for d in space.dimensions():
        counts = [sum(a[d.label] == c for a in warm) for c in d.choices]
        assert counts == [2, 2, 2, 2]


def test_batch_asks_are_spread_by_the_believer() -> None:
    space = toy_space()
    evaluate, _ = toy_objective(space, 0)
    strategy = PredictorStrategy(space, seed=0, warmup=6)
    run_search(strategy, evaluate, budget=12)
    batch = strategy.ask(4)
    assert len({a.key for a in batch}) == 4
    assert len(strategy.pending()) == 4


def test_rank_transform_copes_with_constraint_penalties() -> None:
    space = toy_space()
    evaluate, optimum = toy_objective(space, 3)

    def constrained(arch):  # the optimum is feasible; infeasible archs are pushed far down
        s = evaluate(arch)
        return s if int(arch["d5"]) != (int(arch["d4"]) + 1) % 4 else s - 1000.0

    hits = 0
    for seed in range(3):
        records = run_search(PredictorStrategy(space, seed=seed), constrained, 120, stop_at=optimum)
        hits += max(s for _, s in records) == optimum
    assert hits == 3


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="predictor.surrogate"):
        create_strategy("predictor", toy_space(), surrogate="forest")
    with pytest.raises(ConfigError, match="predictor.acquisition"):
        create_strategy("predictor", toy_space(), acquisition="pi")
    with pytest.raises(ConfigError, match="predictor.top_k"):
        create_strategy("predictor", toy_space(), top_k=0)
    with pytest.raises(ConfigError, match="predictor.transform"):
        create_strategy("predictor", toy_space(), transform="log")
    with pytest.raises(ConfigError, match="unknown option"):
        create_strategy("predictor", toy_space(), n_candidates=5)
