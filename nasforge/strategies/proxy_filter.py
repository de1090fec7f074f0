"""Proxy warm start and filter for black-box search: rank many candidates by zero-cost
proxies, spend the real evaluations on the proxy-best.

:class:`ProxyFilterStrategy` (``strategy.name: proxy_filter``):

1. On the first ask it draws a pool of candidates (``pool`` uniform samples, or ``"all"``:
   every arch of a space that enumerates them, e.g. ``nb201``), scores each distinct network
   once with :class:`~nasforge.evaluators.proxy.ProxyScorer` and ranks them by the vote of
   ``proxy.proxies`` (mean rank; one proxy: its value). The ``keep`` best form the filter.
2. The first ``warm`` asks are the proxy-best archs, in rank order (the warm start).
3. Later asks come from the inner search, restricted to the kept archs:
   ``strategy: surrogate`` (default) fits an extra-trees regressor on the told scores with
   features ``[log proxies, space.encode(arch)]`` and asks the kept arch with the best
   upper bound (mean + ``kappa`` x spread over trees); any other name is a registered
   strategy (``strategy_options`` its options) whose constraint is "among the kept archs"
   (and the wrapper's own constraint); when its proposals all miss the kept archs (a tight
   filter), the next proxy-best kept arch is asked instead.

Proxy CPU seconds are counted in :attr:`ProxyFilterStrategy.proxy_cpu_seconds` (not part of
the saved state: a restored strategy keeps its ranking and does not re-score).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from nasforge.evaluators.proxies.combiner import ProxyCombiner, rank_vote
from nasforge.evaluators.proxy import ProxyScorer
from nasforge.space import Arch, SearchSpace
from nasforge.strategies import create_strategy
from nasforge.strategies.base import Constraint, Score, Strategy, scalar

SURROGATE = "surrogate"
DEFAULT_PROXY: dict[str, Any] = {
    "proxies": ["synflow", "params"],
    "batch_size": 64,
    "inputs": "random",
    "seed": 0,
}


class ProxyFilterStrategy(Strategy):
    """Args:
    space: the space asks come from (must build ``nn.Module`` s for the proxies).
    seed: seeds the pool draw, the surrogate and the inner strategy.
    strategy: ``"surrogate"`` or a registered strategy name searching inside the kept archs.
    strategy_options: options of that strategy (or ``{"kappa": float}`` for the surrogate).
    proxy: :class:`ProxyScorer` settings: ``proxies``, ``batch_size``, ``inputs``, ``seed``.
    pool: how many uniform samples to score, or ``"all"`` (the space's ``all_archs()``).
    keep: how many proxy-best distinct archs the inner search may ask.
    warm: how many proxy-best archs are asked first (at most ``keep``).
    constraint: asks skip archs failing it (also applied to the pool).
    """

    name = "proxy_filter"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        strategy: str = SURROGATE,
        strategy_options: Mapping[str, Any] | None = None,
        proxy: Mapping[str, Any] | None = None,
        pool: int | str = 1000,
        keep: int = 100,
        warm: int = 10,
        constraint: Constraint | None = None,
    ) -> None:
        super().__init__(space, seed, constraint)
        settings = {**DEFAULT_PROXY, **(proxy or {})}
        unknown = sorted(set(settings) - set(DEFAULT_PROXY))
        if unknown:
            raise ValueError(
                f"proxy_filter.proxy: unknown setting(s) {unknown}; expected "
                f"{', '.join(DEFAULT_PROXY)}"
            )
        if pool != "all" and not (isinstance(pool, int) and pool >= 1):
            raise ValueError(f"proxy_filter.pool: an int >= 1 or 'all', got {pool!r}")
        if pool == "all" and not hasattr(space, "all_archs"):
            raise ValueError(f"proxy_filter.pool: space {space.name!r} cannot list all archs")
        if int(keep) < 1 or not 0 <= int(warm) <= int(keep):
            raise ValueError("proxy_filter: need keep >= 1 and 0 <= warm <= keep")
        self.scorer = ProxyScorer(
            space,
            list(settings["proxies"]),
            int(settings["batch_size"]),
            str(settings["inputs"]),
            int(settings["seed"]),
        )
        self.strategy_name = strategy
        self.strategy_options = dict(strategy_options or {})
        self.kappa = 1.0
        if strategy == SURROGATE:
            extra = sorted(set(self.strategy_options) - {"kappa"})
            if extra:
                raise ValueError(
                    f"proxy_filter.strategy_options: surrogate takes kappa, got {extra}"
                )
            self.kappa = float(self.strategy_options.get("kappa", 1.0))
        self.pool = pool
        self.keep = int(keep)
        self.warm = int(warm)
        self.proxy_cpu_seconds = 0.0
        #: the kept archs, proxy-best first, with their proxy values (set on the first ask)
        self.ranked: list[Arch] | None = None
        self.values: dict[str, dict[str, float]] = {}
        self._kept: set[str] = set()
        self._forward = True
        #: the registered strategy searching inside the kept archs (``None``: surrogate);
        #: built now so that its options are checked before the first ask
        self.inner: Strategy | None = None
        if strategy != SURROGATE:
            self.inner = create_strategy(
                strategy, space, seed=seed, constraint=self._in_kept, **self.strategy_options
            )

    # -- the pool ---------------------------------------------------------------------------------
    def _draw_pool(self) -> list[Arch]:
        if self.pool == "all":
            archs: Iterable[Arch] = self.space.all_archs()  # type: ignore[attr-defined]
        else:
            rng = np.random.default_rng([self.seed, 2021])  # own stream: replay draws it again
            archs = (self.space.sample(rng) for _ in range(int(self.pool)))
        out: dict[str, Arch] = {}
        for a in archs:
            if a.key not in out and (self.constraint is None or self.constraint(a)):
                out[a.key] = a
        return list(out.values())

    def _ensure_pool(self) -> None:
        if self.ranked is not None:
            return
        pool = self._draw_pool()
        values = []
        for a in pool:
            v, cpu = self.scorer.score(a)
            values.append(v)
            self.proxy_cpu_seconds += cpu
        vote = rank_vote(values, self.scorer.proxies)
        order = np.argsort(-vote, kind="stable")[: self.keep]
        self._set_ranking([pool[int(i)] for i in order], [values[int(i)] for i in order])

    def _set_ranking(self, archs: list[Arch], values: list[dict[str, float]]) -> None:
        self.ranked = archs
        self.values = {a.key: v for a, v in zip(archs, values, strict=True)}
        self._kept = {a.key for a in archs}

    def _in_kept(self, arch: Arch) -> bool:
        return arch.key in self._kept and (self.constraint is None or bool(self.constraint(arch)))

    # -- asking -----------------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Arch]:
        """``n`` archs: proxy-best first (``warm``), then the inner search's choice among the
        kept archs; when every kept arch was asked, uniform samples not asked before."""
        self._ensure_pool()
        assert self.ranked is not None
        out: list[Arch] = []
        for _ in range(n):
            arch = self._next()
            self.asked.add(arch.key)
            self.open[arch.key] = arch
            if self.inner is not None:
                self.inner.asked.add(arch.key)
                self.inner.open[arch.key] = arch
            out.append(arch)
        return out

    def _next(self) -> Arch:
        assert self.ranked is not None
        fresh = [a for a in self.ranked if a.key not in self.asked]
        if not fresh:
            return self._fresh(lambda: self.space.sample(self.rng), tries=0)
        if len(self.asked) < self.warm:
            return fresh[0]
        if self.inner is not None:
            arch = self.inner.ask(1)[0]
            if self._in_kept(arch):
                return arch
            # the inner strategy found no kept arch (its proposals and samples all missed
            # the filter): withdraw its ask, take the next proxy-best kept arch instead
            self.inner.asked.discard(arch.key)
            self.inner.open.pop(arch.key, None)
            return fresh[0]
        return self._surrogate_pick(fresh)

    def _surrogate_pick(self, fresh: list[Arch]) -> Arch:
        done = [(a, scalar(s)) for a, s in self.finished() if np.isfinite(scalar(s))]
        done = [(a, s) for a, s in done if a.key in self.values]
        if len(done) < 3:
            return fresh[0]
        from sklearn.ensemble import ExtraTreesRegressor

        comb = ProxyCombiner(self.space, self.scorer.proxies)
        x = comb.features([a for a, _ in done], [self.values[a.key] for a, _ in done])
        y = np.array([s for _, s in done])
        model = ExtraTreesRegressor(
            n_estimators=50, min_samples_leaf=1, random_state=int(self.rng.integers(2**31))
        ).fit(x, (y - y.mean()) / (y.std() + 1e-12))
        xq = comb.features(fresh, [self.values[a.key] for a in fresh])
        per_tree = np.stack([t.predict(xq) for t in model.estimators_])
        ucb = per_tree.mean(0) + self.kappa * per_tree.std(0)
        return fresh[int(np.argmax(ucb))]

    # -- learning and state ------------------------------------------------------------------
    def tell(self, arch: Arch, score: Score) -> None:
        super().tell(arch, score)
        if self.inner is not None and self._forward:
            self.inner.tell(arch, score)

    def replay(self, finished: Iterable[tuple[Arch, Score]], asked: Iterable[Arch] = ()) -> None:
        """Rebuild from a store: finished trials are told to this strategy and its inner one;
        the ranking is recomputed on the next ask (same seed, same pool)."""
        finished, asked = list(finished), list(asked)
        self._forward = False
        try:
            super().replay(finished, asked)
        finally:
            self._forward = True
        if self.inner is not None:
            self.inner.replay(finished, asked)

    def _extra_state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"inner": self.inner.state_dict() if self.inner else None}
        if self.ranked is not None:
            out["ranked"] = [a.to_json() for a in self.ranked]
            out["values"] = [self.values[a.key] for a in self.ranked]
        return out

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        self.ranked, self.values, self._kept = None, {}, set()
        if "ranked" in extra:
            self._set_ranking(
                [Arch.from_json(a) for a in extra["ranked"]],
                [{k: float(v) for k, v in d.items()} for d in extra["values"]],
            )
        if self.inner is not None and extra.get("inner") is not None:
            self.inner.load_state_dict(extra["inner"])


__all__ = ["ProxyFilterStrategy"]
