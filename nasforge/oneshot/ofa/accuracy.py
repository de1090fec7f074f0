"""What specialisation learns from: the subnet sample and the accuracy predictor.

:func:`sample_subnets` measures the inherited validation accuracy of a seeded sample of
subnets (the largest and the smallest first); :class:`AccuracyPredictor` is fitted on it (the
MLP ensemble or the GP surrogate of :mod:`nasforge.strategies.predictor` on
``space.encode(arch)``) and says by cross-validation how far to trust it. Used by
:func:`nasforge.oneshot.ofa.specialize.specialize`; nothing here trains a network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nasforge.errors import ConfigError, NasforgeError
from nasforge.oneshot.ofa.elastic import extreme_arch
from nasforge.oneshot.ranking import kendall_tau
from nasforge.space import Arch, SearchSpace
from nasforge.strategies.predictor_surrogates import (
    FittedPosterior,
    GPSurrogate,
    MLPEnsembleSurrogate,
    PredictorConfig,
)

PREDICTORS = ("mlp", "gp")
#: the MLP ensemble as an accuracy predictor: trained longer than the strategy's per-proposal
#: surrogate (it is fitted once; wider members did not rank 150 samples better)
MLP_PREDICTOR = PredictorConfig(ensemble_size=5, mlp_hidden=32, mlp_steps=300)
#: the version of how the predictor is fitted and of what :meth:`AccuracyPredictor.state`
#: holds; bump it when either changes (the fit, ``MLP_PREDICTOR``, the surrogates' state), so
#: that a kept state of the old fit is not loaded (:mod:`nasforge.experiment.ofa_cache`)
STATE_VERSION = 1


def sample_subnets(
    space: SearchSpace,
    accuracy: Callable[[Arch], float],
    n: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[Arch, float]]:
    """``n`` distinct archs of ``space`` with their ``accuracy`` (the predictor's data).

    The first two are the largest and the smallest arch (:func:`extreme_arch`), so the
    predictor sees both ends of the space; the rest are uniform samples drawn from
    ``np.random.default_rng(seed)``, distinct by key. Fewer than ``n`` come back only when
    the space has fewer distinct archs (after 100 * n draws).

    Args:
        space: the space the archs come from.
        accuracy: an arch's accuracy (in the product: inherited validation accuracy after BN
            recalibration); called once per arch, in the returned order.
        n: how many archs (at least 2).
        seed: seeds the uniform samples.
        progress: called as ``progress(done, n)`` after each arch.

    Raises:
        ConfigError: ``n`` below 2.
        NasforgeError: ``accuracy`` returned a value that is not a finite number (names the
            arch).
    """
    if n < 2:
        raise ConfigError(f"ofa.specialize.samples: expected at least 2, got {n}")
    rng = np.random.default_rng(seed)
    archs: dict[str, Arch] = {}
    for arch in (extreme_arch(space, True), extreme_arch(space, False)):
        archs.setdefault(arch.key, arch)
    draws = 0
    while len(archs) < n and draws < 100 * n:
        arch = space.sample(rng)
        archs.setdefault(arch.key, arch)
        draws += 1
    out: list[tuple[Arch, float]] = []
    for arch in archs.values():
        acc = float(accuracy(arch))
        if not np.isfinite(acc):
            raise NasforgeError(f"sample_subnets: accuracy of arch {arch.key} is {acc!r}")
        out.append((arch, acc))
        if progress is not None:
            progress(len(out), len(archs))
    return out


# -- the accuracy predictor ----------------------------------------------------------------------
class AccuracyPredictor:
    """Accuracy of an arch from its encoding, fitted on ``(arch, accuracy)`` samples.

    Build with :meth:`fit`, or rebuild a fitted one without fitting with :meth:`from_state`
    (given what its :meth:`state` gave and the same samples). Targets are standardised for
    the fit and predictions come back in the samples' units. :attr:`cv_kendall_tau` and
    :attr:`cv_mae` are ``folds``-fold cross-validated (every sample predicted by a model that
    did not see it): the rank agreement and the mean absolute error the search can expect on
    unseen archs.

    Attributes:
        space: the space whose ``encode`` the predictor reads.
        kind: ``mlp`` or ``gp``.
        n_samples: samples in the final fit.
        cv_kendall_tau: Kendall's tau-b between held-out predictions and the samples.
        cv_mae: mean absolute error of the held-out predictions (samples' units).
        folds: cross-validation folds.
    """

    def __init__(
        self,
        space: SearchSpace,
        kind: str,
        model: Callable[[np.ndarray], np.ndarray],
        n_samples: int,
        cv: tuple[float, float, int],
    ) -> None:
        """Use :meth:`fit` or :meth:`from_state`; this stores a fitted model (encodings ->
        accuracies; a model of another make has no :meth:`state`)."""
        self.space, self.kind, self._model = space, kind, model
        self.n_samples = n_samples
        self.cv_kendall_tau, self.cv_mae, self.folds = cv

    @classmethod
    def fit(
        cls,
        space: SearchSpace,
        samples: Sequence[tuple[Mapping[str, Any], float]],
        kind: str = "mlp",
        seed: int = 0,
        folds: int = 5,
    ) -> AccuracyPredictor:
        """Fit on all ``samples`` after ``folds``-fold cross-validation.

        Args:
            space: the space the archs belong to (each is validated).
            samples: ``(arch, accuracy)`` pairs (e.g. :func:`sample_subnets`'s), at least
                ``2 * folds``; accuracies finite and in any one unit.
            kind: ``mlp`` (an ensemble of MLPs, :class:`MLPEnsembleSurrogate`) or ``gp``
                (ARD + additive GP, :class:`GPSurrogate`).
            seed: seeds the folds and the MLP initialisations.
            folds: cross-validation folds (at least 2).

        Raises:
            ConfigError: unknown ``kind``, too few samples, bad ``folds``.
            SpaceError: an arch is not in ``space``.
            NasforgeError: an accuracy is not a finite number.
        """
        _check_kind(kind)
        if folds < 2:
            raise ConfigError(f"folds: expected at least 2, got {folds}")
        if len(samples) < 2 * folds:
            raise ConfigError(
                f"ofa.specialize.samples: {len(samples)} samples are too few to fit and "
                f"cross-validate the accuracy predictor; need at least {2 * folds}"
            )
        x, y = encode_samples(space, samples)
        model, theta = _fit(space, kind, x, y, seed)
        rng = np.random.default_rng([seed, 7])
        held_out = np.empty_like(y)
        for i, test in enumerate(np.array_split(rng.permutation(len(y)), folds)):
            train = np.setdiff1d(np.arange(len(y)), test)
            fold, _ = _fit(space, kind, x[train], y[train], seed + 1 + i, theta)
            held_out[test] = fold(x[test])
        cv = (kendall_tau(list(held_out), list(y)), float(np.abs(held_out - y).mean()), folds)
        return cls(space, kind, model, len(y), cv)

    @classmethod
    def from_state(
        cls,
        space: SearchSpace,
        samples: Sequence[tuple[Mapping[str, Any], float]],
        kind: str,
        state: Mapping[str, np.ndarray],
        cv: tuple[float, float, int],
    ) -> AccuracyPredictor:
        """The predictor :meth:`fit` returned, rebuilt from its :meth:`state` without fitting.

        It predicts exactly what the fitted one does, given the same ``space``, ``samples``
        and ``kind`` as the fit (the GP's posterior is conditioned on the samples again; the
        targets are standardised the same way).

        Args:
            space, samples, kind: as given to :meth:`fit`.
            state: what the fitted predictor's :meth:`state` gave (plain arrays).
            cv: its ``(cv_kendall_tau, cv_mae, folds)`` (see :meth:`summary`).

        Raises:
            ConfigError: unknown ``kind``.
            SpaceError: an arch is not in ``space``.
            NasforgeError: an accuracy is not a finite number.
            ValueError: ``state`` is not a state of this kind of predictor for this space
                (names what does not fit).
        """
        _check_kind(kind)
        x, y = encode_samples(space, samples)
        y_mean, y_scale, z = _standardise(y)
        post = _surrogate(space, kind).posterior_from_state(x, z, state)
        return cls(space, kind, _Standardised(post, y_mean, y_scale), len(y), cv)

    def state(self) -> dict[str, np.ndarray] | None:
        """The fitted surrogate's state as plain arrays (the GP's hyperparameters ``theta``,
        or the MLP ensemble's weights), for :meth:`from_state`; ``None`` for a predictor not
        made by :meth:`fit` or :meth:`from_state` (a model without a state)."""
        if isinstance(self._model, _Standardised):
            return self._model.posterior.state()
        return None

    def predict(self, archs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Predicted accuracy of each arch (one batched call; the samples' units)."""
        if not archs:
            return np.zeros(0)
        x = np.stack([self.space.encode(a) for a in archs]).astype(np.float64)
        return self._model(x)

    def summary(self) -> dict[str, Any]:
        """What a report shows: kind, samples, cross-validated tau and MAE, folds."""
        return {
            "kind": self.kind,
            "samples": self.n_samples,
            "cv_kendall_tau": self.cv_kendall_tau,
            "cv_mae": self.cv_mae,
            "folds": self.folds,
        }


def encode_samples(
    space: SearchSpace, samples: Sequence[tuple[Mapping[str, Any], float]]
) -> tuple[np.ndarray, np.ndarray]:
    """The predictor's data: the archs' encodings ``(n, width)`` and their accuracies ``(n,)``
    (float64), exactly as :meth:`AccuracyPredictor.fit` sees them.

    Raises:
        SpaceError: an arch is not in ``space``.
        NasforgeError: an accuracy is not a finite number.
    """
    for arch, _ in samples:
        space.validate(arch)
    y = np.array([float(acc) for _, acc in samples])
    if not np.all(np.isfinite(y)):
        bad = int(np.flatnonzero(~np.isfinite(y))[0])
        raise NasforgeError(f"AccuracyPredictor: sample {bad} has accuracy {y[bad]!r}")
    x = np.stack([space.encode(a) for a, _ in samples]).astype(np.float64)
    return x, y


def _check_kind(kind: str) -> None:
    if kind not in PREDICTORS:
        raise ConfigError(
            f"ofa.specialize.predictor: {kind!r} is not one of {', '.join(PREDICTORS)}"
        )


def _surrogate(space: SearchSpace, kind: str) -> GPSurrogate | MLPEnsembleSurrogate:
    if kind == "gp":
        return GPSurrogate([d.width for d in space.dimensions()], ard=True, additive=True)
    return MLPEnsembleSurrogate(MLP_PREDICTOR)


def _standardise(y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``(mean, scale, (y - mean) / scale)``; a constant ``y`` gets scale 1."""
    mean, scale = float(y.mean()), float(y.std())
    scale = scale if scale > 0 else 1.0
    return mean, scale, (y - mean) / scale


class _Standardised:
    """A posterior fitted to standardised targets, predicting its mean in the targets' units."""

    def __init__(self, posterior: FittedPosterior, mean: float, scale: float) -> None:
        self.posterior, self.mean, self.scale = posterior, mean, scale

    def __call__(self, xq: np.ndarray) -> np.ndarray:
        return self.mean + self.scale * np.asarray(self.posterior(xq)[0], dtype=np.float64)


def _fit(
    space: SearchSpace,
    kind: str,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    gp_start: np.ndarray | None = None,
) -> tuple[_Standardised, np.ndarray | None]:
    """A surrogate fitted to standardised ``y``: (``x -> mean prediction`` in y's units, the
    GP's hyperparameters or ``None``).

    The GP's marginal-likelihood fit starts from ``gp_start`` when given: the folds of the
    cross-validation start from the full fit's optimum, which makes them a few times cheaper
    (each fold still maximises the likelihood of its own training part only).
    """
    mean, scale, z = _standardise(y)
    surrogate = _surrogate(space, kind)
    post: FittedPosterior
    if isinstance(surrogate, GPSurrogate):
        surrogate.theta = None if gp_start is None else gp_start.copy()
        theta = surrogate.select(x, z)
        post = surrogate.posterior(x, z)
        return _Standardised(post, mean, scale), theta
    post = surrogate.posterior(x, z, seed)
    return _Standardised(post, mean, scale), None
