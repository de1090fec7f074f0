"""Any Optuna sampler as a nasforge strategy, through Optuna's in-memory ask/tell interface.

The space's dimensions map to Optuna distributions (categorical -> ``CategoricalDistribution``,
integer -> ``IntDistribution``, float -> ``FloatDistribution`` with its log flag); conditional
dimensions are suggested only when active, in the space's order. Multi-objective scores
(tuples) go to a study with one "maximize" direction per objective (``n_objectives``), e.g.
with NSGA-II. Optuna is imported when the strategy is built, not with nasforge.

Determinism: every ask builds the sampler afresh from a seed drawn from the strategy's random
stream; with the study's trials (saved in :meth:`~Strategy.state_dict`) this fixes what it
proposes, so a restored strategy asks what the original would have. A proposal whose key was
asked before is not asked again: if its result is known, Optuna is told it at once (a free
duplicate), otherwise the trial waits for that key's result.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

from nasforge.space import Arch, Categorical, Dimension, Float, Int, SearchSpace
from nasforge.space.arch import Value
from nasforge.strategies.base import Constraint, Score, Strategy

SAMPLERS = ("tpe", "gp", "cmaes", "nsga2", "random")


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the optuna strategy needs Optuna: pip install 'nasforge[optuna]'"
        ) from None
    return optuna


@contextlib.contextmanager
def _quiet(optuna: Any) -> Iterator[None]:
    """Silence Optuna's per-trial INFO logs and experimental warnings for the block."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


class OptunaStrategy(Strategy):
    """Drives the search with an Optuna sampler.

    Args:
        space: the search space.
        seed: seeds the samplers (one fresh sampler per ask, seeded from this stream).
        sampler: ``"tpe"``, ``"gp"``, ``"cmaes"``, ``"nsga2"`` or ``"random"``.
        n_objectives: how many objectives the scores have (tuples of this length when > 1).
        sampler_options: keyword arguments for the Optuna sampler's constructor (e.g.
            ``{"n_startup_trials": 5, "multivariate": True}`` for TPE).

    CMA-ES models only numeric parameters: with ``sampler="cmaes"`` categorical dimensions
    are suggested as integer indices (CMA-ES with margin keeps them discrete). Failed trials
    (score ``None``) are told to Optuna as failed.

    Raises:
        ValueError: unknown sampler or ``n_objectives < 1`` (the message names the field).
    """

    name = "optuna"
    propose_tries = 20  # each try is an Optuna trial; discrete samplers repeat themselves

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        sampler: str = "tpe",
        n_objectives: int = 1,
        sampler_options: dict[str, Any] | None = None,
        constraint: Constraint | None = None,
    ) -> None:
        super().__init__(space, seed, constraint)
        if sampler not in SAMPLERS:
            raise ValueError(
                f"optuna.sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}"
            )
        if int(n_objectives) < 1:
            raise ValueError(f"optuna.n_objectives: expected an integer >= 1, got {n_objectives!r}")
        self.optuna = _import_optuna()
        self.sampler_name = sampler
        self.n_objectives = int(n_objectives)
        self.sampler_options = dict(sampler_options or {})
        self._check_sampler_options()
        self.dims = space.dimensions()
        self.study = self._new_study()
        self.waiting: dict[str, list[int]] = {}  # arch key -> open Optuna trial numbers

    # -- Optuna plumbing ------------------------------------------------------------------------
    def _sampler(self, seed: int) -> Any:
        s = self.optuna.samplers
        opts = dict(self.sampler_options)
        with _quiet(self.optuna):
            if self.sampler_name == "tpe":
                return s.TPESampler(seed=seed, **opts)
            if self.sampler_name == "gp":
                opts.setdefault("warn_independent_sampling", False)
                return s.GPSampler(seed=seed, **opts)
            if self.sampler_name == "cmaes":
                opts.setdefault("with_margin", False)
                opts.setdefault("warn_independent_sampling", False)
                return s.CmaEsSampler(seed=seed, **opts)
            if self.sampler_name == "nsga2":
                return s.NSGAIISampler(seed=seed, **opts)
            return s.RandomSampler(seed=seed, **opts)

    def _check_sampler_options(self) -> None:
        try:
            self._sampler(0)
        except TypeError as exc:
            raise ValueError(f"optuna.sampler_options: {exc}") from None

    def _new_study(self) -> Any:
        with _quiet(self.optuna):
            return self.optuna.create_study(
                directions=["maximize"] * self.n_objectives, sampler=self._sampler(self.seed)
            )

    def distribution(self, dim: Dimension) -> Any:
        """The Optuna distribution that ``dim`` is suggested from."""
        d = self.optuna.distributions
        if isinstance(dim, Categorical):
            if self.sampler_name == "cmaes":
                return d.IntDistribution(0, len(dim.choices) - 1)
            return d.CategoricalDistribution(dim.choices)
        if isinstance(dim, Int):
            return d.IntDistribution(dim.low, dim.high, step=dim.step)
        if isinstance(dim, Float):
            return d.FloatDistribution(dim.low, dim.high, log=dim.log)
        raise ValueError(
            f"optuna: dimension {dim.label!r} of type {type(dim).__name__} has no "
            f"Optuna distribution"
        )

    def _suggest(self, trial: Any, dim: Dimension) -> Any:
        dist = self.distribution(dim)
        d = self.optuna.distributions
        if isinstance(dist, d.CategoricalDistribution):
            return trial.suggest_categorical(dim.label, dist.choices)
        if isinstance(dist, d.IntDistribution):
            return trial.suggest_int(dim.label, dist.low, dist.high, step=dist.step)
        return trial.suggest_float(dim.label, dist.low, dist.high, log=dist.log)

    def _to_param(self, dim: Dimension, value: Value) -> Any:
        if isinstance(dim, Categorical) and self.sampler_name == "cmaes":
            return next(
                i for i, c in enumerate(dim.choices) if c == value and type(c) is type(value)
            )
        return value

    def _from_param(self, dim: Dimension, param: Any) -> Value:
        if isinstance(dim, Categorical) and self.sampler_name == "cmaes":
            return dim.choices[int(param)]
        return param

    def _values(self, score: Score) -> list[float] | None:
        """Optuna objective values for ``score``, or ``None`` for a failed trial."""
        if score is None:
            return None
        vals = [float(v) for v in score] if isinstance(score, tuple) else [float(score)]
        if self.n_objectives == 1:
            vals = vals[:1]
        elif len(vals) != self.n_objectives:
            raise ValueError(
                f"optuna: expected scores with {self.n_objectives} objectives, got {score!r}"
            )
        return vals if all(math.isfinite(v) for v in vals) else None

    def _tell_trial(self, number: int, score: Score) -> None:
        vals = self._values(score)
        with _quiet(self.optuna):
            if vals is None:
                self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
            else:
                self.study.tell(number, vals)

    # -- the Strategy protocol ------------------------------------------------------------------
    def _propose(self) -> Arch:
        self.study.sampler = self._sampler(int(self.rng.integers(2**31 - 1)))
        with _quiet(self.optuna):
            trial = self.study.ask()
            values: dict[str, Value] = {}
            for dim in self.dims:
                if dim.active(values):
                    values[dim.label] = self._from_param(dim, self._suggest(trial, dim))
        arch = self.space.make(values)
        if arch.key in self.scores:  # known result: tell Optuna now, no evaluation needed
            self._tell_trial(trial.number, self.scores[arch.key])
        elif self.constraint is not None and not self.constraint(arch):
            self._tell_trial(trial.number, None)  # will not be asked: close it as failed
        else:
            self.waiting.setdefault(arch.key, []).append(trial.number)
        return arch

    def _observe(self, arch: Arch, score: Score) -> None:
        numbers = self.waiting.pop(arch.key, [])
        for number in numbers:
            self._tell_trial(number, score)
        if not numbers:  # a result this strategy did not ask for (replay, external trial)
            self._add_finished(arch, score)

    def _add_finished(self, arch: Arch, score: Score) -> None:
        vals = self._values(score)
        dists = {d.label: self.distribution(d) for d in self.dims if d.label in arch}
        params = {
            label: self._to_param(self.space.dimension(label), arch[label]) for label in dists
        }
        state = self.optuna.trial.TrialState
        with _quiet(self.optuna):
            self.study.add_trial(
                self.optuna.trial.create_trial(
                    params=params,
                    distributions=dists,
                    values=vals,
                    state=state.COMPLETE if vals is not None else state.FAIL,
                )
            )

    # -- state ----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        to_json = self.optuna.distributions.distribution_to_json
        trials = []
        for t in self.study.get_trials(deepcopy=False):
            trials.append(
                {
                    "state": t.state.name,
                    "values": t.values,
                    "params": t.params,
                    "distributions": {k: to_json(v) for k, v in t.distributions.items()},
                    "system_attrs": t.system_attrs,
                    "user_attrs": t.user_attrs,
                }
            )
        # Samplers may cache in the study's system attrs (NSGA-II: parent populations by
        # trial id); ids repeat on restore because trials are re-added in the same order.
        study_attrs = self.study._storage.get_study_system_attrs(self.study._study_id)
        return {
            "sampler": self.sampler_name,
            "trials": trials,
            "study_system_attrs": study_attrs,
            "waiting": {k: list(v) for k, v in self.waiting.items()},
        }

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        from_json = self.optuna.distributions.json_to_distribution
        self.study = self._new_study()
        state = self.optuna.trial.TrialState
        frozen = []
        for t in extra.get("trials", []):
            st = state[t["state"]]
            frozen.append(
                self.optuna.trial.create_trial(
                    state=st,
                    values=t["values"] if st == state.COMPLETE else None,
                    params=t["params"],
                    distributions={k: from_json(v) for k, v in t["distributions"].items()},
                    system_attrs=t["system_attrs"],
                    user_attrs=t["user_attrs"],
                )
            )
        with _quiet(self.optuna):
            self.study.add_trials(frozen)
        for key, value in extra.get("study_system_attrs", {}).items():
            self.study._storage.set_study_system_attr(self.study._study_id, key, value)
        self.waiting = {k: [int(n) for n in v] for k, v in extra.get("waiting", {}).items()}
