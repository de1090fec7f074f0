"""The surrogates' fitted state: plain arrays that rebuild the same posterior without fitting.

The oracle is the fitted posterior itself: rebuilt from its ``state()`` (after a round trip
through an ``.npz`` read with ``allow_pickle=False``), it gives exactly the same mean and
standard deviation on points it never saw. A state that is not the surrogate's is refused.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from nasforge.strategies.predictor import GPSurrogate, MLPEnsembleSurrogate, PredictorConfig
from nasforge.strategies.predictor_surrogates import MLP_PARAMS

MLP = PredictorConfig(ensemble_size=3, mlp_hidden=8, mlp_steps=30)


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(25, 9)).astype(np.float64)
    y = x @ rng.normal(size=9) + 0.1 * rng.normal(size=25)
    return x, (y - y.mean()) / y.std(), rng.integers(0, 2, size=(40, 9)).astype(np.float64)


def through_npz(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        return {k: np.array(npz[k]) for k in npz.files}


def fitted(kind: str, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
    if kind == "gp":
        gp = GPSurrogate([3, 3, 3], ard=True, additive=True)
        gp.select(x, y)
        return gp, gp.posterior(x, y)
    mlp = MLPEnsembleSurrogate(MLP)
    return mlp, mlp.posterior(x, y, seed=4)


@pytest.mark.parametrize("kind", ["gp", "mlp"])
def test_a_posterior_rebuilt_from_its_state_is_the_fitted_one(kind: str) -> None:
    x, y, xq = data()
    surrogate, post = fitted(kind, x, y)
    state = post.state()
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in state.values())
    assert sorted(state) == (["theta"] if kind == "gp" else sorted(MLP_PARAMS))
    fresh = GPSurrogate([3, 3, 3]) if kind == "gp" else MLPEnsembleSurrogate(MLP)
    again = fresh.posterior_from_state(x, y, through_npz(state))
    for got, want in zip(again(xq), post(xq)):
        np.testing.assert_array_equal(got, want)
    if kind == "gp":
        assert fresh.theta is None  # rebuilding fits nothing and sets nothing
    # the state is a copy: changing it does not change the fitted posterior
    before = post(xq)[0]
    for a in state.values():
        a += 1.0
    np.testing.assert_array_equal(post(xq)[0], before)


def test_the_fitted_state_differs_between_fits() -> None:
    """A state that is the same whatever was fitted would make the round trip above vacuous."""
    x, y, _ = data()
    a = fitted("mlp", x, y)[1].state()
    b = fitted("mlp", x, -y)[1].state()
    assert not np.array_equal(a["w3"], b["w3"])


@pytest.mark.parametrize(
    ("kind", "change", "said"),
    [
        ("gp", "short", "theta must be 6 finite numbers"),
        ("gp", "nan", "theta must be 6 finite numbers"),
        ("gp", "missing", "expected the array 'theta'"),
        ("mlp", "short", "w1 must be finite float32 of shape"),
        ("mlp", "nan", "must be finite float32"),
        ("mlp", "missing", "expected the arrays"),
        ("mlp", "float64", "w1 must be finite float32"),
    ],
)
def test_a_state_that_is_not_the_surrogates_is_refused(kind: str, change: str, said: str) -> None:
    x, y, _ = data()
    surrogate, post = fitted(kind, x, y)
    state = post.state()
    name = "theta" if kind == "gp" else "w1"
    if change == "short":
        state[name] = state[name][..., :-1]
    elif change == "nan":
        state[name if kind == "gp" else "b3"][0] = np.nan
    elif change == "missing":
        del state[name]
    else:
        state[name] = state[name].astype(np.float64)
    with pytest.raises(ValueError, match=said):
        surrogate.posterior_from_state(x, y, state)


def test_mlp_weights_of_another_input_width_are_refused() -> None:
    x, y, _ = data()
    state = fitted("mlp", x, y)[1].state()
    with pytest.raises(ValueError, match="w1 must be finite float32 of shape"):
        MLPEnsembleSurrogate(MLP).posterior_from_state(x[:, :-1], y, state)
