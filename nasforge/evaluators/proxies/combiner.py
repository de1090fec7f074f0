"""A learned combiner of zero-cost proxies: a regressor on proxy scores plus the space's arch
encoding (:meth:`SearchSpace.encode`) and how often each categorical choice occurs in the arch
(e.g. the number of 3x3 convs of a cell, which a tree reads badly from a one-hot encoding),
fitted on archs whose real score is known.

Every arch it is fitted on costs one real evaluation (a training, or a table query): callers
count them, and leave them out of any evaluation of the combiner's ranking. scikit-learn does
the regression (random forest, as GreenFactory 2025, or gradient-boosted trees); only the
feature transform is ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata  # type: ignore[import-untyped]

from nasforge.errors import ConfigError
from nasforge.space import Arch, Categorical, SearchSpace

MODELS = ("forest", "boosting")


def log_features(values: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    """Proxy values as features: ``sign(v) * log1p(|v|)`` (scores span decades); a non-finite
    value (a degenerate network) becomes a large negative number."""
    v = np.array([values[n] for n in names], dtype=np.float64)
    v = np.where(np.isfinite(v), v, -1e30)
    return np.asarray(np.sign(v) * np.log1p(np.abs(v)))


class ProxyCombiner:
    """Regressor from ``[log proxies, space.encode(arch)]`` to a real score.

    Args:
        space: encodes archs (``None``: proxies only).
        proxies: the proxy names used as features, in this order.
        model: ``"boosting"`` (histogram gradient boosting) or ``"forest"`` (random forest).
        seed: seeds the regressor.

    Raises:
        ConfigError: unknown model or an empty proxy list.
    """

    def __init__(
        self,
        space: SearchSpace | None,
        proxies: Sequence[str],
        model: str = "boosting",
        seed: int = 0,
    ) -> None:
        if model not in MODELS:
            raise ConfigError(f"combiner.model: unknown {model!r}; expected one of {MODELS}")
        if not proxies and space is None:
            raise ConfigError("combiner.proxies: need proxies or a space to encode")
        self.space = space
        self.proxies = tuple(proxies)
        self.model_name = model
        self.seed = int(seed)
        self._model: Any = None
        self._choices: tuple[str, ...] = ()
        if space is not None:
            found = {
                str(c) for d in space.dimensions() if isinstance(d, Categorical) for c in d.choices
            }
            self._choices = tuple(sorted(found))

    def features(self, archs: Sequence[Arch], values: Sequence[Mapping[str, float]]) -> np.ndarray:
        """The feature matrix of ``archs`` with their proxy ``values`` (one row each)."""
        rows = []
        for arch, v in zip(archs, values, strict=True):
            parts = [log_features(v, self.proxies)]
            if self.space is not None:
                parts.append(self.space.encode(arch).astype(np.float64))
                seen = [str(v) for v in arch.values()]
                parts.append(np.array([seen.count(c) for c in self._choices], dtype=np.float64))
            rows.append(np.concatenate(parts))
        return np.vstack(rows) if rows else np.zeros((0, 0))

    def fit(
        self, archs: Sequence[Arch], values: Sequence[Mapping[str, float]], target: Sequence[float]
    ) -> ProxyCombiner:
        """Fit on archs with known ``target`` scores (higher = better); returns ``self``.
        The regressor learns the targets' ranks (in (0, 1]), so predictions rank archs but
        are not on the targets' scale."""
        if len(archs) < 2:
            raise ConfigError("combiner: need at least 2 archs with known scores to fit")
        x = self.features(archs, values)
        # ranks, not raw scores: a ranking is what is asked for, and a few broken archs
        # (10% accuracy) would otherwise dominate the squared error
        y = rankdata(np.asarray(target, dtype=np.float64)) / len(target)
        if self.model_name == "forest":
            from sklearn.ensemble import RandomForestRegressor

            self._model = RandomForestRegressor(
                n_estimators=300, min_samples_leaf=1, max_features=0.5, random_state=self.seed
            )
        else:
            from sklearn.ensemble import HistGradientBoostingRegressor

            self._model = HistGradientBoostingRegressor(
                max_iter=200,
                learning_rate=0.05,
                max_leaf_nodes=8,
                min_samples_leaf=5,
                random_state=self.seed,
            )
        self._model.fit(x, y)
        return self

    def predict(self, archs: Sequence[Arch], values: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Predicted scores of ``archs`` (call :meth:`fit` first)."""
        if self._model is None:
            raise ConfigError("combiner: predict() before fit()")
        return np.asarray(self._model.predict(self.features(archs, values)))


def rank_vote(values: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    """The unsupervised vote: mean over ``names`` of each arch's rank (higher = better), as
    the "vote" of Abdelfattah et al. 2021 (there of synflow, jacob_cov and snip)."""
    if not values:
        return np.zeros(0)
    ranks = []
    for n in names:
        col = np.array([v[n] for v in values], dtype=np.float64)
        col = np.where(np.isfinite(col), col, -np.inf)
        ranks.append(rankdata(col))
    return np.asarray(np.mean(ranks, axis=0))


__all__ = ["MODELS", "ProxyCombiner", "log_features", "rank_vote"]
