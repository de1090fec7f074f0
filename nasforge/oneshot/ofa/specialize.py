"""Specialisation: pick the subnet of a trained elastic supernet for one latency target.

Once-for-All (Cai et al. 2020) trains one network and then, per deployment target, searches
its subnets with two cheap models instead of any training: an **accuracy predictor** fitted
on a few sampled subnets' inherited validation accuracy, and a **latency predictor** built
from a table measured on the target. This module is that search, in three parts:

* :func:`sample_subnets`: the archs whose inherited accuracy trains the predictor (seeded,
  always including the largest and the smallest arch).
* :class:`AccuracyPredictor`: the surrogates of :mod:`nasforge.strategies.predictor` (an MLP
  ensemble or a GP) on ``space.encode(arch)``, with a cross-validated Kendall tau and mean
  absolute error so a user sees how far to trust it.
* :func:`specialize`: a registered ask/tell strategy (:func:`~nasforge.strategies.
  create_strategy`) scoring archs by the two predictors (the search never measures):
  ``"limit"`` asks only archs within the latency limit (the strategy's constraint) and
  maximises predicted accuracy; ``"weighted"`` maximises MnasNet's ``acc * (lat / target)
  ** w`` (:class:`~nasforge.objectives.Objective` ``weighted_product``). Given a ``measure_ms``
  callable it refines the limit by measuring each round's choice, a few rounds at most, so
  a table's host-dependent bias does not put the MEASURED latency outside the target's
  window (:mod:`nasforge.oneshot.ofa.refine`).

Predicted latency comes in as any callable ``latency_ms(arch)`` (in the product a
:class:`~nasforge.hardware.predictor.LatencyPredictor`); it is called once per distinct arch.
Everything is deterministic for a seed given deterministic callables. Nothing here trains,
times or writes files; the product layer (``nasforge ofa specialize``) does, and passes its
timing in as ``measure_ms``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from nasforge.errors import ConfigError, NasforgeError
from nasforge.objectives import Objective
from nasforge.oneshot.ofa.accuracy import (
    PREDICTORS,
    AccuracyPredictor,
    extreme_arch,
    sample_subnets,
)
from nasforge.oneshot.ofa.refine import MAX_REFINE_ROUNDS, Measured, refine_limit
from nasforge.space import Arch, SearchSpace
from nasforge.strategies import STRATEGIES, create_strategy
from nasforge.strategies.base import Strategy

__all__ = [  # the sample and the predictor live in accuracy.py; re-exported as one API
    "PREDICTORS",
    "AccuracyPredictor",
    "SpecializeConfig",
    "Specialized",
    "extreme_arch",
    "sample_subnets",
    "specialize",
]
#: archs asked from the strategy per round: scored by one batched predictor call, then told
ASK_BATCH = 25
#: ``limit``, when even the smallest arch is over the limit: uniform samples probed for archs
#: within it before the strategy starts. Each ask of a constrained strategy tries ~1,100
#: candidates before it gives up on the limit, so an unreachable limit would otherwise cost
#: minutes for nothing; the probe's feasible finds (at most :data:`ASK_BATCH`) are scored and
#: told, which gives the strategy parents inside a tight limit.
PROBE_SAMPLES = 1000


class SpecializeConfig(BaseModel):
    """How a subnet is specialised for one target (the config section ``ofa.specialize``).

    Attributes:
        samples: subnets whose inherited validation accuracy trains the predictor (at least
            10: the predictor is cross-validated on 5 folds).
        predictor: ``mlp`` (an ensemble of small MLPs) or ``gp`` (an ARD Gaussian process).
        strategy: any registered strategy name (``nasforge.strategies.create_strategy``).
        strategy_options: keyword options of that strategy (like ``strategy.options``).
        evaluations: predictor-scored candidates the search may ask.
        objective: ``limit`` (predicted latency <= target is a hard constraint; maximise
            predicted accuracy) or ``weighted`` (maximise ``acc * (lat / target) ** w``).
        w: the weighted product's exponent (MnasNet: -0.07); <= 0.
        seed: seeds the subnet sample, the predictor and the strategy.
        refine_rounds: measured refinement rounds at most when a measurement is given
            (:func:`specialize`'s ``measure_ms``; :mod:`~nasforge.oneshot.ofa.refine`); 0: no
            refinement (the search's choice under the target, never measured here). Default
            5: a round costs one extraction and one measurement (1-3 s for mnist1d-sized nets);
            the table's per-arch error (~5% MAPE on a quiet host) plus the measurement's own
            spread left 3 rounds outside the 10% window at 2 of 3 targets (issue-13
            benchmark, onnxruntime batch 32).
        window: the measured latency is "inside" in ``[(1 - window) * target, target]``.
        margin: refinement's first limit is ``target * (1 - margin)``: the middle of the
            window by default; ``0 <= margin < window``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(150, ge=10)
    predictor: Literal["mlp", "gp"] = "mlp"
    strategy: str = "evolution"
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    evaluations: int = Field(3000, ge=1)
    objective: Literal["limit", "weighted"] = "limit"
    w: float = Field(-0.07, le=0)
    seed: int = 0
    refine_rounds: int = Field(5, ge=0, le=MAX_REFINE_ROUNDS)
    window: float = Field(0.10, gt=0, lt=1)
    margin: float = Field(0.05, ge=0, lt=1)

    @field_validator("margin")
    @classmethod
    def _margin_inside_window(cls, v: float, info: ValidationInfo) -> float:
        window = info.data.get("window")
        if window is not None and v >= window:
            raise ValueError(f"must be below window ({window}): the first limit aims inside it")
        return v

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        # user strategies register from plugins, possibly after the config is read: only the
        # spelling is checked here, the registry when the search starts (specialize)
        if not v.strip():
            raise ValueError("a registered strategy name, e.g. 'evolution'")
        return v

    @classmethod
    def from_options(cls, where: str = "ofa.specialize", **options: Any) -> SpecializeConfig:
        """Build from config options; a bad field is a :class:`ConfigError` naming
        ``<where>.<field>``."""
        try:
            return cls(**options)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"{where}.{loc}: {err['msg']}") from None


# -- the search ----------------------------------------------------------------------------------
@dataclass
class Specialized:
    """The subnet chosen for one target, and how it was found.

    Attributes:
        arch: the chosen arch.
        predicted_acc: its predicted accuracy (the predictor's units).
        predicted_latency_ms: ``latency_ms(arch)``.
        target_ms: the target (a hard limit for ``limit``, the weighted product's reference
            for ``weighted``).
        objective: ``limit`` or ``weighted``.
        score: the arch's objective score (``limit``: its predicted accuracy when feasible).
        strategy: the strategy that searched.
        evaluations: distinct archs scored (summed over the searches of a refinement).
        feasible: ``limit``: whether any scored arch met the limit; when none did, ``arch`` is
            the fastest arch scored. After a measured refinement: whether the chosen arch was
            MEASURED not above the target (when none was, the fastest measured).
            ``weighted`` has no hard limit and is always feasible.
        seconds: wall-clock seconds of the search (after the predictor was fitted), with the
            refinement's measurements.
        history: best-so-far objective score after each evaluation (``None`` while no
            feasible arch had been scored); of the chosen arch's search.
        limit_ms: the predicted-latency limit the chosen arch was searched under (the target
            without refinement).
        measured_ms: the chosen arch's measured latency (``None``: not refined).
        measured_unstable: the timing harness flagged that measurement unstable.
        refinement: every measured round (:meth:`RefineRound.to_dict`), empty when not refined.
        refine_stop: why the refinement stopped (``inside``, ``rounds``, ``repeat``) or ``None``.
    """

    arch: Arch
    predicted_acc: float
    predicted_latency_ms: float
    target_ms: float
    objective: str
    score: float
    strategy: str
    evaluations: int
    feasible: bool
    seconds: float
    history: list[float | None] = field(default_factory=list)
    limit_ms: float | None = None
    measured_ms: float | None = None
    measured_unstable: bool = False
    refinement: list[dict[str, Any]] = field(default_factory=list)
    refine_stop: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the arch as a plain dict, plus its key."""
        out = asdict(self)
        out["arch"] = self.arch.to_dict()
        out["arch_key"] = self.arch.key
        return out


def specialize(
    space: SearchSpace,
    predictor: AccuracyPredictor,
    latency_ms: Callable[[Arch], float],
    target_ms: float,
    config: SpecializeConfig,
    measure_ms: Callable[[Arch], float | Measured] | None = None,
) -> Specialized:
    """Search ``space`` for the best subnet at ``target_ms``, scoring by predictors; with
    ``measure_ms``, refine the limit by measuring the chosen subnets.

    The strategy ``config.strategy`` asks archs in rounds of :data:`ASK_BATCH`; each round's
    accuracies are one :meth:`AccuracyPredictor.predict` call and latencies come from
    ``latency_ms`` (cached per arch key, so the strategy's constraint and the scoring share
    one call per arch, across refinement rounds too). The largest and the smallest arch are
    scored first and told to the strategy, so both ends of the space are always considered.
    Under ``limit``, when even the smallest arch is over it, :data:`PROBE_SAMPLES` uniform
    samples are probed first and the search ends at once (``feasible=False``) if none is
    within the limit. The search stops after ``config.evaluations`` distinct archs or when
    the space is exhausted: a strategy asks a repeat (or, under a constraint, an arch over
    the limit) only after ~1,100 tries found no new arch within it (:meth:`Strategy._fresh`),
    so the first round with one ends the search. The two extreme archs (and the probe's
    finds) count as evaluations; only the probe's may exceed a budget smaller than them.

    Measured refinement (``measure_ms`` given and ``config.refine_rounds`` > 0): under
    ``limit``, the search runs under ``target_ms * (1 - config.margin)``, its choice is
    measured, and the limit is corrected by the measured/predicted ratio until a measurement
    lands in ``[(1 - config.window) * target_ms, target_ms]``, ``config.refine_rounds``
    measured rounds at most (:func:`~nasforge.oneshot.ofa.refine.refine_limit`; the chosen arch
    is the best measured not above the target, predicted accuracies within the predictor's
    cross-validated MAE counting as equal, so one measured inside the window wins among
    those). Under ``weighted`` the table's bias scales
    every arch's product by one factor, which changes no ranking: the choice is measured once
    and not refined. ``refine_rounds == 0`` ignores ``measure_ms``.

    Args:
        space: the space of the subnets (the one the predictor was fitted on).
        predictor: the fitted accuracy predictor.
        latency_ms: an arch's PREDICTED latency in ms on the target; deterministic, never
            measuring (a :class:`~nasforge.hardware.predictor.LatencyPredictor`).
        target_ms: the latency limit / reference, > 0.
        config: strategy, budget, objective, seed and refinement settings.
        measure_ms: an arch's MEASURED latency in ms on the target, in the statistic
            ``latency_ms`` predicts: a number, or a
            :class:`~nasforge.oneshot.ofa.refine.Measured` carrying the timing harness's noise
            verdict (an unstable one is measured once more; the retry is used, flagged).

    Returns:
        The best arch by the objective; under ``limit`` with no feasible arch,
        ``feasible=False`` and the fastest arch scored (refined: the fastest measured).

    Raises:
        ConfigError: bad target, unknown strategy or strategy options, a predictor fitted on
            another space's encoding.
        NasforgeError: ``latency_ms`` returned a value that is not a finite number, or
            ``measure_ms`` one that is not a positive number.
    """
    start = time.perf_counter()
    if not (np.isfinite(target_ms) and target_ms > 0):
        raise ConfigError(f"target_ms: expected a positive number of ms, got {target_ms!r}")
    if predictor.space.encoding_size != space.encoding_size:
        raise ConfigError(
            f"predictor: fitted on an encoding of {predictor.space.encoding_size} values, "
            f"the space {space.name!r} encodes {space.encoding_size}"
        )
    cache: dict[str, float] = {}

    def latency(arch: Arch) -> float:
        v = cache.get(arch.key)
        if v is None:
            v = float(latency_ms(arch))
            if not np.isfinite(v):
                raise NasforgeError(f"latency_ms: arch {arch.key} gave {v!r}")
            cache[arch.key] = v
        return v

    target = float(target_ms)
    if measure_ms is None or config.refine_rounds == 0:
        return _search(space, predictor, latency, target, target, config, start)
    limit = config.objective == "limit"
    out = refine_limit(
        lambda lim: _search(space, predictor, latency, lim if limit else target, target, config),
        measure_ms,
        target,
        config.margin if limit else 0.0,
        config.window,
        config.refine_rounds if limit else 1,
        tolerance=predictor.cv_mae if math.isfinite(predictor.cv_mae) else 0.0,
    )
    chosen = out.chosen
    chosen.evaluations = sum(s.evaluations for s in out.searches)
    chosen.feasible = out.feasible if limit else True
    chosen.seconds = time.perf_counter() - start
    chosen.measured_ms = out.measured.ms
    chosen.measured_unstable = out.measured.unstable
    chosen.refinement = [r.to_dict() for r in out.rounds]
    chosen.refine_stop = out.stop
    return chosen


def _search(
    space: SearchSpace,
    predictor: AccuracyPredictor,
    latency: Callable[[Arch], float],
    limit_ms: float,
    target_ms: float,
    config: SpecializeConfig,
    start: float | None = None,
) -> Specialized:
    """One predictor-scored search under ``limit_ms`` (``weighted``: ``limit_ms`` is the
    product's reference); ``latency`` is the checked, cached callable."""
    start = time.perf_counter() if start is None else start
    limit = config.objective == "limit"
    objective = Objective(
        "constraint" if limit else "weighted_product", target=limit_ms, w=config.w
    )
    strategy = _strategy(space, config, (lambda a: latency(a) <= limit_ms) if limit else None)
    search = _Search(strategy, predictor, latency, objective, limit)
    search.score([extreme_arch(space, True), extreme_arch(space, False)])
    if limit and search.best is None:
        search.score(_probe(space, latency, limit_ms, config.seed))
    exhausted = limit and search.best is None
    while search.evaluations < config.evaluations and not exhausted:
        n = min(ASK_BATCH, config.evaluations - search.evaluations)
        exhausted = not search.score(strategy.ask(n))
    best, feasible = search.best, True
    if best is None:  # limit, nothing within it: the fastest arch scored
        feasible, best = False, min(search.scored.values(), key=lambda e: e[2])  # first on ties
    arch, acc, lat, score = best
    return Specialized(
        arch=arch,
        predicted_acc=acc,
        predicted_latency_ms=lat,
        target_ms=target_ms,
        objective=config.objective,
        score=score,
        strategy=config.strategy,
        evaluations=search.evaluations,
        feasible=feasible,
        seconds=time.perf_counter() - start,
        history=search.history,
        limit_ms=limit_ms,
    )


def _strategy(
    space: SearchSpace, config: SpecializeConfig, constraint: Callable[[Arch], bool] | None
) -> Strategy:
    if config.strategy not in STRATEGIES:
        raise ConfigError(
            f"ofa.specialize.strategy: unknown strategy {config.strategy!r}; expected one of "
            f"{', '.join(sorted(STRATEGIES))}"
        )
    try:
        return create_strategy(
            config.strategy,
            space,
            seed=config.seed,
            constraint=constraint,
            **config.strategy_options,
        )
    except ConfigError as exc:
        msg = str(exc).removeprefix("strategy.options: ")
        raise ConfigError(f"ofa.specialize.strategy_options: {msg}") from None


def _probe(
    space: SearchSpace, latency: Callable[[Arch], float], target_ms: float, seed: int
) -> list[Arch]:
    """Up to :data:`ASK_BATCH` archs within the limit among :data:`PROBE_SAMPLES` seeded
    uniform samples, plus the fastest sample (so an unreachable limit still reports the
    fastest arch seen)."""
    rng = np.random.default_rng([seed, 11])
    found: dict[str, Arch] = {}
    fastest: tuple[float, Arch] | None = None
    for _ in range(PROBE_SAMPLES):
        arch = space.sample(rng)
        lat = latency(arch)
        if lat <= target_ms:
            found.setdefault(arch.key, arch)
            if len(found) >= ASK_BATCH:
                break
        elif fastest is None or lat < fastest[0]:
            fastest = (lat, arch)
    return [*found.values(), *([fastest[1]] if fastest else [])]


Entry = tuple[Arch, float, float, float]  # arch, predicted acc, latency ms, objective score


class _Search:
    """The scored archs of one search, the best so far and the strategy's tells."""

    def __init__(
        self,
        strategy: Strategy,
        predictor: AccuracyPredictor,
        latency: Callable[[Arch], float],
        objective: Objective,
        limit: bool,
    ) -> None:
        self.strategy, self.predictor, self.latency = strategy, predictor, latency
        self.objective, self.limit = objective, limit
        self.scored: dict[str, Entry] = {}
        self.best: Entry | None = None
        self.history: list[float | None] = []

    @property
    def evaluations(self) -> int:
        return len(self.scored)

    def score(self, archs: Sequence[Arch]) -> bool:
        """Score and tell the archs not scored before.

        Returns:
            Whether every arch was new and (``limit``) within the limit: ``False`` means the
            strategy ran out of such archs.
        """
        new = list({a.key: a for a in archs if a.key not in self.scored}.values())
        clean = len(new) == len(archs)
        if not new:
            return clean
        accs = self.predictor.predict(new)
        for arch, acc in zip(new, accs):
            lat = self.latency(arch)
            metrics = {"val_acc": float(acc), "latency_ms": lat}
            score = self.objective.score(metrics)
            assert score is not None and not isinstance(score, tuple)  # finite inputs
            entry = (arch, float(acc), lat, float(score))
            self.scored[arch.key] = entry
            self.strategy.tell(arch, float(score))
            ok = not self.limit or self.objective.feasible(metrics)
            clean = clean and ok
            if ok and (self.best is None or score > self.best[3]):
                self.best = entry
            self.history.append(None if self.best is None else self.best[3])
        return clean
