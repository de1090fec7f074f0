"""The surrogates of predictor-guided search and their fitted posteriors.

:class:`GPSurrogate` (an exact GP with an ARD RBF kernel, optionally plus an additive kernel)
and :class:`MLPEnsembleSurrogate` (BANANAS' ensemble of small MLPs) fit a score on
``space.encode(arch)``. A fit returns a posterior, a callable ``xq -> (mean, std)`` that also
gives its fitted state as plain arrays (:meth:`GPPosterior.state`, :meth:`MLPPosterior.state`)
and is rebuilt from them without fitting by the surrogate's ``posterior_from_state``:
what the OFA accuracy predictor keeps on disk (:mod:`nasforge.experiment.ofa_cache`).
Used by :mod:`nasforge.strategies.predictor` (per proposal) and
:mod:`nasforge.oneshot.ofa.accuracy`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
from scipy.linalg import cho_solve, solve_triangular  # type: ignore[import-untyped]
from scipy.stats import norm, rankdata  # type: ignore[import-untyped]

from nasforge.strategies.base import torch_single_thread

Posterior = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # xq -> (mean, std)
TRANSFORMS = ("rank", "standard")


class FittedPosterior(Protocol):
    """A fitted surrogate: ``xq -> (mean, std)`` plus its fitted state as plain arrays."""

    def __call__(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def state(self) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class PredictorConfig:
    """Candidate generation, acquisition and surrogate settings.

    Attributes:
        top_k: how many of the best finished archs seed the local candidates.
        n_neighbors: how many of the best archs contribute *all* their neighbours.
        n_mutations: random mutants (1..max_step dimensions changed) of the top-k archs.
        max_step: most dimensions a mutant changes.
        n_random: uniform random candidates per proposal.
        ei_xi: EI's improvement margin (in standardised target units).
        ucb_beta: UCB's exploration weight (mean + beta * std).
        acq_starts: candidates from which the acquisition is hill-climbed.
        acq_steps: most hill-climbing steps on the acquisition per proposal.
        refit_every: re-fit GP hyperparameters after this many new results.
        transform: ``"rank"`` (scores -> standard-normal quantiles of their ranks) or
            ``"standard"`` (zero mean, unit variance).
        ard: one GP lengthscale per search dimension (else one shared lengthscale).
        additive: add an additive kernel over dimensions to the GP's product kernel.
        ensemble_size: MLPs in the ensemble (``surrogate="mlp"``).
        mlp_hidden: hidden width of each MLP.
        mlp_steps: full-batch Adam steps per fit.
    """

    top_k: int = 10
    n_neighbors: int = 3
    n_mutations: int = 100
    max_step: int = 2
    n_random: int = 100
    ei_xi: float = 0.0
    ucb_beta: float = 2.0
    acq_starts: int = 5
    acq_steps: int = 0
    refit_every: int = 5
    transform: str = "rank"
    ard: bool = True
    additive: bool = False
    ensemble_size: int = 5
    mlp_hidden: int = 32
    mlp_steps: int = 150

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "transform" and v not in TRANSFORMS:
                raise ValueError(
                    f"predictor.transform: expected one of {', '.join(TRANSFORMS)}, got {v!r}"
                )
            if isinstance(v, (bool, str)):
                continue
            lowest = (
                0
                if f.name
                in (
                    "n_neighbors",
                    "n_mutations",
                    "n_random",
                    "ei_xi",
                    "ucb_beta",
                    "acq_starts",
                    "acq_steps",
                )
                else 1
            )
            if not v >= lowest:
                raise ValueError(f"predictor.{f.name}: expected a number >= {lowest}, got {v!r}")


# -- surrogates -------------------------------------------------------------------------------
def normal_scores(y: np.ndarray) -> np.ndarray:
    """Rank-based Gaussian copula: ``ppf((rank - 0.5) / n)``; ties share their mean rank."""
    n = len(y)
    return norm.ppf((rankdata(y) - 0.5) / n)


class GPSurrogate:
    """Exact GP on the encoding with an ARD RBF kernel, optionally plus an additive kernel.

    ``k(x, x') = s_p * prod_j k_j(x, x') [+ s_a * mean_j k_j(x, x')]`` where ``k_j`` is an RBF
    on dimension j's slice of the encoding. The product term models interactions; the
    additive term (Duvenaud et al., "Additive Gaussian Processes") lets what was learnt about
    one dimension's choices carry over to unexplored regions. Hyperparameters (log
    lengthscales, log variances, log noise) maximise the marginal likelihood (L-BFGS-B with
    analytic gradients, warm-started from the previous fit; a weak log-normal prior on the
    lengthscales keeps them away from degenerate values).

    Args:
        widths: the width of each dimension's slice of the encoding (``Dimension.width``).
        ard: one lengthscale per dimension (``True``) or one dimension spanning the encoding.
        additive: add the additive term.
    """

    BOUNDS_LOG_LS = (float(np.log(0.2)), float(np.log(50.0)))
    BOUNDS_LOG_S2 = (float(np.log(1e-3)), float(np.log(20.0)))
    BOUNDS_LOG_NOISE = (float(np.log(1e-6)), float(np.log(1.0)))
    PRIOR_LOG_LS = float(np.log(2.0))

    def __init__(self, widths: list[int], ard: bool = True, additive: bool = True) -> None:
        edges = [int(e) for e in np.cumsum([0, *widths])]
        self.slices = (
            [slice(a, b) for a, b in itertools.pairwise(edges)] if ard else [slice(0, edges[-1])]
        )
        self.additive = additive and len(self.slices) > 1
        self.theta: np.ndarray | None = None

    @property
    def n_params(self) -> int:
        return len(self.slices) + (3 if self.additive else 2)

    def initial(self) -> np.ndarray:
        var = [np.log(0.5), np.log(0.5)] if self.additive else [0.0]
        return np.array([self.PRIOR_LOG_LS] * len(self.slices) + var + [np.log(1e-2)])

    def _dists(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty((len(self.slices), len(a), len(b)))
        for j, sl in enumerate(self.slices):
            xa, xb = a[:, sl], b[:, sl]
            d = (xa * xa).sum(1)[:, None] + (xb * xb).sum(1)[None, :] - 2.0 * xa @ xb.T
            out[j] = np.maximum(d, 0.0)
        return out

    def _kernel(
        self, dists: np.ndarray, theta: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(k, per-dimension kernels, product kernel) without noise."""
        m = len(self.slices)
        per = np.exp(-0.5 * np.exp(-2.0 * theta[:m])[:, None, None] * dists)
        prod = per.prod(0)
        k = np.exp(theta[m]) * prod
        if self.additive:
            k = k + np.exp(theta[m + 1]) * per.mean(0)
        return k, per, prod

    def _nlml(
        self, theta: np.ndarray, dists: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        m, n = len(self.slices), len(y)
        kf, per, prod = self._kernel(dists, theta)
        noise = float(np.exp(theta[-1]))
        try:
            chol = np.linalg.cholesky(kf + (noise + 1e-8) * np.eye(n))
        except np.linalg.LinAlgError:
            return 1e10, np.zeros_like(theta)
        alpha = cho_solve((chol, True), y, check_finite=False)
        dlog = theta[:m] - self.PRIOR_LOG_LS
        value = (
            0.5 * float(y @ alpha)
            + float(np.log(np.diag(chol)).sum())
            + 0.5 * float(dlog @ dlog) / 4.0
        )
        w = np.outer(alpha, alpha) - cho_solve((chol, True), np.eye(n), check_finite=False)
        inv_ls2 = np.exp(-2.0 * theta[:m])
        s_p = float(np.exp(theta[m]))
        wd = np.tensordot(dists, w * prod, axes=([1, 2], [0, 1])) * s_p
        grad = np.empty_like(theta)
        grad[m] = -0.5 * s_p * float((w * prod).sum())
        if self.additive:
            s_a = float(np.exp(theta[m + 1]))
            wd = wd + (s_a / m) * np.einsum("jab,jab->j", dists * per, w[None])
            grad[m + 1] = -0.5 * (s_a / m) * float(np.einsum("jab,ab->", per, w))
        grad[:m] = -0.5 * wd * inv_ls2 + dlog / 4.0
        grad[-1] = -0.5 * noise * float(np.trace(w))
        return value, grad

    def select(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fit the hyperparameters to ``(x, y)`` (warm start from the previous fit)."""
        from scipy.optimize import minimize  # type: ignore[import-untyped]

        dists = self._dists(x, x)
        start = self.theta if self.theta is not None else self.initial()
        var = [self.BOUNDS_LOG_S2] * (2 if self.additive else 1)
        bounds = [self.BOUNDS_LOG_LS] * len(self.slices) + var + [self.BOUNDS_LOG_NOISE]
        res = minimize(
            self._nlml,
            start,
            args=(dists, y),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 50},
        )
        theta = res.x if np.all(np.isfinite(res.x)) and res.fun < 1e9 else self.initial()
        self.theta = np.asarray(theta, dtype=np.float64)
        return self.theta

    def posterior(self, x: np.ndarray, y: np.ndarray) -> GPPosterior:
        """The posterior given ``(x, y)`` at the fitted hyperparameters (fitted now if none)."""
        theta = self.theta if self.theta is not None else self.select(x, y)
        return GPPosterior(self, x, y, theta)

    def posterior_from_state(
        self, x: np.ndarray, y: np.ndarray, state: Mapping[str, np.ndarray]
    ) -> GPPosterior:
        """The posterior given ``(x, y)`` at the hyperparameters of a
        :meth:`GPPosterior.state` (``theta``), without fitting; ``self.theta`` is untouched.

        Raises:
            ValueError: ``state`` is not this GP's (names what does not fit).
        """
        if set(state) != {"theta"}:
            raise ValueError(f"GP state: expected the array 'theta', got {sorted(state)}")
        theta = np.asarray(state["theta"], dtype=np.float64)
        if theta.shape != (self.n_params,) or not np.all(np.isfinite(theta)):
            raise ValueError(
                f"GP state: theta must be {self.n_params} finite numbers, got shape {theta.shape}"
            )
        return GPPosterior(self, x, y, theta)


class GPPosterior:
    """A :class:`GPSurrogate`'s posterior given ``(x, y)`` at hyperparameters ``theta``.

    Calling it with encodings ``xq`` gives ``(mean, std)``; :meth:`state` gives ``theta``,
    from which :meth:`GPSurrogate.posterior_from_state` rebuilds it given the same data.

    Raises:
        numpy.linalg.LinAlgError: the kernel matrix is not positive definite at ``theta``.
    """

    def __init__(self, gp: GPSurrogate, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> None:
        m = len(gp.slices)
        kf = gp._kernel(gp._dists(x, x), theta)[0]
        noise = float(np.exp(theta[-1]))
        self.gp, self.x, self.theta = gp, x, theta
        self.chol = np.linalg.cholesky(kf + (noise + 1e-8) * np.eye(len(y)))
        self.alpha = cho_solve((self.chol, True), y, check_finite=False)
        prior = float(np.exp(theta[m]))
        self.prior = prior + (float(np.exp(theta[m + 1])) if gp.additive else 0.0)

    def __call__(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kq = self.gp._kernel(self.gp._dists(xq, self.x), self.theta)[0]
        v = solve_triangular(self.chol, kq.T, lower=True, check_finite=False)
        return kq @ self.alpha, np.sqrt(np.maximum(self.prior - (v * v).sum(0), 1e-12))

    def state(self) -> dict[str, np.ndarray]:
        """``{"theta": the hyperparameters}`` (a copy)."""
        return {"theta": np.array(self.theta, dtype=np.float64)}


#: the MLP ensemble's parameters in :meth:`MLPPosterior.state`, in order (weights ``(e, in,
#: out)`` and biases ``(e, 1, out)`` of the two hidden layers and the output layer)
MLP_PARAMS = ("w1", "b1", "w2", "b2", "w3", "b3")


def _mlp_forward(params: list[Any], inp: Any) -> Any:
    """The ensemble's outputs ``(e, n)`` for inputs ``(n, d)`` (torch tensors)."""
    import torch

    z = inp.expand(params[0].shape[0], *inp.shape)
    z = torch.relu(torch.bmm(z, params[0]) + params[1])
    z = torch.relu(torch.bmm(z, params[2]) + params[3])
    return (torch.bmm(z, params[4]) + params[5])[..., 0]


class MLPEnsembleSurrogate:
    """``ensemble_size`` MLPs trained together as one batched network (one matmul per layer)."""

    def __init__(self, cfg: PredictorConfig) -> None:
        self.cfg = cfg

    def shapes(self, d: int) -> dict[str, tuple[int, ...]]:
        """The parameters' shapes for ``d`` input features (:data:`MLP_PARAMS` order)."""
        e, h = self.cfg.ensemble_size, self.cfg.mlp_hidden
        shapes = [(e, d, h), (e, 1, h), (e, h, h), (e, 1, h), (e, h, 1), (e, 1, 1)]
        return dict(zip(MLP_PARAMS, shapes))

    def posterior(self, x: np.ndarray, y: np.ndarray, seed: int) -> MLPPosterior:
        """Train the ensemble on ``(x, y)``; returns ``xq -> (mean, std)`` over the members."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        fan_in = [x.shape[1]] * 2 + [self.cfg.mlp_hidden] * 4
        params = [
            ((torch.rand(*shape, generator=gen) * 2 - 1) / np.sqrt(f)).requires_grad_()
            for shape, f in zip(self.shapes(x.shape[1]).values(), fan_in)
        ]
        with torch_single_thread():
            xt = torch.as_tensor(x, dtype=torch.float32)
            yt = torch.as_tensor(y, dtype=torch.float32)
            opt = torch.optim.Adam(params, lr=1e-2, weight_decay=1e-4)
            for _ in range(self.cfg.mlp_steps):
                opt.zero_grad()
                loss = ((_mlp_forward(params, xt) - yt) ** 2).mean()
                loss.backward()
                opt.step()
        return MLPPosterior([p.detach() for p in params])

    def posterior_from_state(
        self, x: np.ndarray, y: np.ndarray, state: Mapping[str, np.ndarray]
    ) -> MLPPosterior:
        """The ensemble of a :meth:`MLPPosterior.state`, without training (``x`` gives the
        input width the weights must have; ``y`` is not needed: the weights are the fit).

        Raises:
            ValueError: ``state`` is not this ensemble's (names what does not fit).
        """
        import torch

        want = self.shapes(x.shape[1])
        if set(state) != set(want):
            raise ValueError(f"MLP state: expected the arrays {list(want)}, got {sorted(state)}")
        params = []
        for name, shape in want.items():
            arr = np.asarray(state[name])
            if arr.shape != shape or arr.dtype != np.float32 or not np.all(np.isfinite(arr)):
                raise ValueError(
                    f"MLP state: {name} must be finite float32 of shape {shape}, got "
                    f"{arr.dtype} {arr.shape}"
                )
            params.append(torch.from_numpy(arr.copy()))
        return MLPPosterior(params)


class MLPPosterior:
    """A trained :class:`MLPEnsembleSurrogate`: ``xq -> (mean, std)`` over the members;
    :meth:`state` gives the weights (:data:`MLP_PARAMS`)."""

    def __init__(self, params: list[Any]) -> None:
        self.params = params  # torch tensors, no gradients

    def __call__(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch_single_thread(), torch.no_grad():
            inp = torch.as_tensor(xq, dtype=torch.float32)
            pred = _mlp_forward(self.params, inp).double().numpy()
        return pred.mean(0), pred.std(0) + 1e-6

    def state(self) -> dict[str, np.ndarray]:
        """The weights as float32 arrays (copies), keyed by :data:`MLP_PARAMS`."""
        return {n: p.cpu().numpy().copy() for n, p in zip(MLP_PARAMS, self.params)}
