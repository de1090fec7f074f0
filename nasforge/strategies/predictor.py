"""Predictor-guided search: a surrogate of the score proposes the next arch (BO-style).

After a warm-up (a balanced random design: every choice of every dimension equally often),
each proposal fits a surrogate on ``space.encode(arch)`` of the finished trials, scores
candidates by an acquisition function (EI or UCB) and asks the best allowed one. Candidates
are all neighbours of the best few archs, random 1- or 2-dimension mutants of the top-k
(local exploitation, as in BANANAS / NPENAS) and uniform random samples (exploration);
optionally the acquisition is then hill-climbed from the best candidates. Candidates are
handled as plain values and only the winners get a canonical key (cell isomorphism checks
can cost more than the surrogate).

Surrogates:
    ``gp`` (default): exact Gaussian process with an ARD RBF kernel (one lengthscale per
        search dimension), optionally plus an additive kernel; hyperparameters by marginal
        likelihood (L-BFGS-B, analytic gradients, warm-started, refitted every few results).
    ``mlp``: an ensemble of small MLPs from different initialisations (BANANAS); the spread
        of the ensemble is the uncertainty.

Targets are rank-transformed to standard-normal quantiles before fitting, so the surrogate
sees the same distribution whether scores are accuracies in percent, 0..1 values or a
constraint objective whose infeasible archs are pushed a thousand points down.
Asked archs whose results are still out enter the fit at their predicted mean ("kriging
believer"), so a batch ``ask(n)`` gives n different, spread-out proposals.

The surrogates and their fitted posteriors live in
:mod:`nasforge.strategies.predictor_surrogates` (and are imported from here too).

Defaults were tuned on NAS-Bench-201 (seeds disjoint from the benchmark's reporting seeds)
and on the toy spaces of :mod:`nasforge.testing`; nothing in the code knows a space.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from typing import Any

import numpy as np
from scipy.special import ndtr  # type: ignore[import-untyped]
from scipy.stats import norm  # type: ignore[import-untyped]

from nasforge.space import Arch, Categorical, Float, Int, SearchSpace
from nasforge.space.arch import Value
from nasforge.strategies.base import Constraint, Strategy, scalar
from nasforge.strategies.predictor_surrogates import (  # also imported from here by callers
    GPSurrogate,
    MLPEnsembleSurrogate,
    Posterior,
    PredictorConfig,
    normal_scores,
)

SURROGATES = ("gp", "mlp")
ACQUISITIONS = ("ei", "ucb")
Memo = tuple[tuple[str, Value], ...]  # an arch's values, sorted by label (hashable)


def _memo(values: Mapping[str, Value]) -> Memo:
    return tuple(sorted(values.items()))


# -- the strategy -----------------------------------------------------------------------------
class PredictorStrategy(Strategy):
    """Surrogate-guided search with EI or UCB over local and random candidates.

    Args:
        space: the search space (``encode`` is the surrogate's input).
        seed: seed of the warm-up samples, candidate generation and MLP initialisation.
        surrogate: ``"gp"`` (default) or ``"mlp"`` (an ensemble of small MLPs).
        acquisition: ``"ei"`` (expected improvement) or ``"ucb"`` (upper confidence bound).
        warmup: archs of a balanced random design (every choice of every dimension equally
            often) asked before the surrogate takes over; at least 2.
        config: a :class:`PredictorConfig`; keyword ``options`` override its fields.

    Multi-objective scores use their first objective; failed trials are left out of the fit.
    """

    name = "predictor"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        surrogate: str = "gp",
        acquisition: str = "ei",
        warmup: int = 10,
        config: PredictorConfig | None = None,
        constraint: Constraint | None = None,
        **options: Any,
    ) -> None:
        super().__init__(space, seed, constraint)
        if surrogate not in SURROGATES:
            raise ValueError(
                f"predictor.surrogate: expected one of {', '.join(SURROGATES)}, got {surrogate!r}"
            )
        if acquisition not in ACQUISITIONS:
            raise ValueError(
                f"predictor.acquisition: expected one of {', '.join(ACQUISITIONS)}, "
                f"got {acquisition!r}"
            )
        if warmup < 2:
            raise ValueError(f"predictor.warmup: expected an integer >= 2, got {warmup!r}")
        allowed = {f.name for f in fields(PredictorConfig)}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise TypeError(
                f"predictor: unknown option(s) {', '.join(unknown)}; expected "
                f"{', '.join(sorted(allowed))}"
            )
        self.surrogate = surrogate
        self.acquisition = acquisition
        self.warmup = int(warmup)
        self.config = replace(config or PredictorConfig(), **options)
        self.gp = GPSurrogate(
            [d.width for d in space.dimensions()],
            ard=self.config.ard,
            additive=self.config.additive,
        )
        self.gp_fitted_at = -1  # number of finished results at the last hyperparameter fit
        self._encoded: dict[Memo, np.ndarray] = {}
        self._neighbors: dict[str, list[Arch]] = {}
        self._archs: dict[Memo, Arch] = {}
        self.dims = space.dimensions()
        self._design = self._balanced_design(self.warmup)

    # -- caches (pure functions of the values; not part of the state) ---------------------------
    def _encode(self, cands: list[Memo]) -> np.ndarray:
        rows = []
        for memo in cands:
            v = self._encoded.get(memo)
            if v is None:
                v = self._encoded[memo] = self.space.encode(dict(memo)).astype(np.float64)
            rows.append(v)
        return np.stack(rows)

    def _arch(self, memo: Memo) -> Arch:
        """``space.make`` of the values, memoised: canonical keys can be costly (isomorphism)."""
        arch = self._archs.get(memo)
        if arch is None:
            if len(self._archs) > 100_000:
                self._archs.clear()
                self._encoded.clear()
            arch = self._archs[memo] = self.space.make(dict(memo))
        return arch

    def _all_neighbors(self, arch: Arch) -> list[Arch]:
        if arch.key not in self._neighbors:
            self._neighbors[arch.key] = self.space.neighbors(arch)
        return self._neighbors[arch.key]

    # -- proposing ------------------------------------------------------------------------------
    def _complete(self, values: dict[str, Value]) -> Memo:
        """Drop inactive labels, sample newly active ones (``SearchSpace.repair`` on values)."""
        out: dict[str, Value] = {}
        for d in self.dims:
            if d.active(out):
                v = values.get(d.label)
                out[d.label] = v if v is not None and d.contains(v) else d.sample(self.rng)
        return _memo(out)

    def _mutant(self, parent: Arch) -> Memo:
        """Change 1..``max_step`` random dimensions of ``parent``."""
        values = dict(parent)
        labels = [lb for lb in values if self.space.dimension(lb).neighbors(values[lb])]
        if not labels:
            return _memo(values)
        k = int(self.rng.integers(1, min(self.config.max_step, len(labels)) + 1))
        for i in self.rng.choice(len(labels), size=k, replace=False):
            lb = labels[int(i)]
            values[lb] = self.space.dimension(lb).mutate(values[lb], self.rng)
        return self._complete(values)

    def _candidates(self, ranked: list[Arch]) -> list[Memo]:
        """Candidate values: neighbours and mutants of the best, plus random samples.

        ``ranked`` lists finished archs best first: all neighbours of the ``n_neighbors``
        best, ``n_mutations`` mutants of the ``top_k`` best and ``n_random`` samples.
        Candidates are deduplicated by values only; keys are computed for the winners.
        """
        cfg, rng = self.config, self.rng
        out: dict[Memo, None] = {}
        top = ranked[: cfg.top_k]
        for arch in top[: cfg.n_neighbors]:
            for n in self._all_neighbors(arch):
                if n.key not in self.asked:
                    memo = _memo(n)
                    self._archs.setdefault(memo, n)
                    out[memo] = None
        for _ in range(cfg.n_mutations):
            out[self._mutant(top[int(rng.integers(len(top)))])] = None
        for _ in range(cfg.n_random):
            out[self._complete({})] = None
        return [m for m in out if not (m in self._archs and self._archs[m].key in self.asked)]

    def _propose(self) -> Arch:
        done = [(a, scalar(s)) for a, s in self.finished() if np.isfinite(scalar(s))]
        if len(self.asked) < self.warmup:
            for memo in self._design[len(self.asked) :]:
                arch = self._arch(memo)
                if self.allowed(arch):
                    return arch
            return self.space.sample(self.rng)
        if len(done) < 2:
            return self.space.sample(self.rng)
        ranked = [a for a, _ in sorted(done, key=lambda e: -e[1])]
        cands = self._candidates(ranked)
        if not cands:
            return self.space.sample(self.rng)
        x = self._encode([_memo(a) for a, _ in done])
        raw = np.array([s for _, s in done])
        if self.config.transform == "rank":
            y = normal_scores(raw)
        else:
            y = (raw - raw.mean()) / (raw.std() + 1e-12)
        believer = [_memo(a) for a in self.open.values()]
        model = self._model(x, y, believer)
        acq = self._acquire(model, cands, float(y.max()))
        cands, acq = self._climb(model, cands, acq, float(y.max()))
        for i in np.argsort(-acq, kind="stable"):
            arch = self._arch(cands[int(i)])
            if self.allowed(arch):
                return arch
        return self.space.sample(self.rng)

    def _balanced_design(self, n: int) -> list[Memo]:
        """``n`` warm-up archs where each dimension's values are spread evenly.

        Every choice of a categorical / integer dimension appears ``n / choices`` times (up
        to rounding) in random order; float dimensions are stratified (Latin hypercube).
        Drawn from its own generator seeded by the strategy's seed, so it is not state.
        """
        rng = np.random.default_rng([self.seed, 201])
        columns: dict[str, list[Value]] = {}
        for d in self.dims:
            if isinstance(d, Float):
                cells = (rng.permutation(n) + rng.random(n)) / n
                columns[d.label] = [d._from_unit(float(u)) for u in cells]
                continue
            if isinstance(d, Categorical):
                options: list[Value] = list(d.choices)
            elif isinstance(d, Int):
                options = list(range(d.low, d.high + 1, d.step))
            else:
                options = [d.sample(rng) for _ in range(n)]
            start = int(rng.integers(len(options)))  # which choices get the extra copies
            tiled = [options[(i + start) % len(options)] for i in range(n)]
            columns[d.label] = [tiled[int(i)] for i in rng.permutation(n)]
        out = []
        for i in range(n):
            values: dict[str, Value] = {}
            for d in self.dims:  # conditions are evaluated on the labels before them
                if d.active(values):
                    values[d.label] = columns[d.label][i]
            out.append(_memo(values))
        return out

    def _value_neighbors(self, memo: Memo) -> list[Memo]:
        values = dict(memo)
        out = []
        for lb, v in values.items():
            for alt in self.space.dimension(lb).neighbors(v):
                out.append(self._complete({**values, lb: alt}))
        return out

    def _climb(
        self, model: Posterior, cands: list[Memo], acq: np.ndarray, best: float
    ) -> tuple[list[Memo], np.ndarray]:
        """Hill-climb the acquisition from the ``acq_starts`` best candidates (values only).

        Each step scores all one-dimension changes of every climber and moves it to the best
        one if that improves; climbers stop at a local optimum or after ``acq_steps`` steps.
        """
        seen = dict(zip(cands, acq))
        climbers = [
            cands[int(i)] for i in np.argsort(-acq, kind="stable")[: self.config.acq_starts]
        ]
        for _ in range(self.config.acq_steps):
            moved = []
            for c in climbers:
                nbrs = [n for n in dict.fromkeys(self._value_neighbors(c)) if n not in seen]
                if not nbrs:
                    continue
                vals = self._acquire(model, nbrs, best)
                seen.update(zip(nbrs, vals))
                j = int(np.argmax(vals))
                if vals[j] > seen[c]:
                    moved.append(nbrs[j])
            if not moved:
                break
            climbers = moved
        keys = [m for m in seen if not (m in self._archs and self._archs[m].key in self.asked)]
        return keys, np.array([seen[m] for m in keys])

    def _acquire(self, model: Posterior, cands: list[Memo], best: float) -> np.ndarray:
        mean, std = model(self._encode(cands))
        if self.acquisition == "ucb":
            return mean + self.config.ucb_beta * std
        z = (mean - best - self.config.ei_xi) / std
        return std * (z * ndtr(z) + norm.pdf(z))

    def _model(self, x: np.ndarray, y: np.ndarray, believer: list[Memo]) -> Posterior:
        """The surrogate fitted to the data, pending archs entered at their predicted mean."""
        if believer:
            xb = self._encode(believer)
            mb, _ = self._fit(x, y)(xb)
            x, y = np.vstack([x, xb]), np.concatenate([y, mb])
        return self._fit(x, y)

    def _fit(self, x: np.ndarray, y: np.ndarray) -> Posterior:
        if self.surrogate == "mlp":
            return MLPEnsembleSurrogate(self.config).posterior(x, y, int(self.rng.integers(2**31)))
        n_done = len(self.finished())
        if self.gp.theta is None or n_done - self.gp_fitted_at >= self.config.refit_every:
            self.gp.select(x, y)
            self.gp_fitted_at = n_done
        return self.gp.posterior(x, y)

    # -- state ----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        theta = None if self.gp.theta is None else [float(v) for v in self.gp.theta]
        return {"config": asdict(self.config), "gp_theta": theta, "gp_fitted_at": self.gp_fitted_at}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        theta = extra.get("gp_theta")
        self.gp.theta = None if theta is None else np.asarray(theta, dtype=np.float64)
        self.gp_fitted_at = int(extra.get("gp_fitted_at", -1))
