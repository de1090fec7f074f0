"""Multi-fidelity strategies on Optuna: ``sh``, ``hyperband``, ``asha`` and ``bohb`` (issue 15).

Every configuration is one Optuna trial of an in-memory study: new configurations come from
an Optuna sampler (``random`` by default, TPE for ``bohb``), each rung's score is reported to
the trial (``trial.report(score, step=eta**rung)``) and the trial ends ``PRUNED`` when it is
not promoted, ``COMPLETE`` at the top rung and ``FAIL`` when its evaluation failed. So a
model-based sampler sees the intermediate values of stopped configurations (TPE ranks pruned
trials by the rung they reached, then by their value: Optuna's own handling of budgets).

Budgets form one ladder (:class:`Ladder`): rung ``k`` trains ``epochs[k]`` epochs on
``fractions[k]`` of the training split; ``resource: epochs`` grows the epochs from
``min_epochs`` to ``max_epochs`` by ``eta`` (the top is exactly ``max_epochs``),
``resource: data_fraction`` grows the fraction from ``min_fraction`` to 1 at ``max_epochs``.
A request's ``rung`` is its level on this ladder, so one rung has one budget in every bracket.

Who decides promotions (:mod:`nasforge.strategies.fidelity_sched`):

* ``asha``: Optuna's ``SuccessiveHalvingPruner`` (asynchronous successive halving) through
  ``trial.should_prune()`` as each result arrives; promoted configurations are asked again
  before new ones (highest rung first). Never waits.
* ``hyperband`` / ``bohb`` with ``synchronous: false``: Optuna's ``HyperbandPruner`` the same
  way (brackets chosen by the pruner; every configuration starts at the lowest rung, since the
  pruner's bracket of a trial is not public API).
* ``sh`` and (default) ``hyperband`` / ``bohb``: synchronous successive halving as in the
  papers, written by hand because Optuna's pruners are asynchronous only: a rung promotes its
  top ``1/eta`` when all its members reported (:meth:`ask_trial` returns ``None`` while it
  waits). Hyperband runs the paper's brackets ``s = s_max .. 0`` over and over; while a
  bracket waits for its rung, the next bracket starts, so workers do not idle.

Determinism and resume: the Optuna trial number *is* the configuration id, and the sampler of
trial ``n`` is seeded from ``(seed, n)``. :meth:`replay_trials` rebuilds the study from the
finished rows (trials re-created in id order with their parameters, reports and pruner
decisions replayed in finish order), so the next requests are those of an uninterrupted run.
What was running at the crash is asked again: a promotion as the same configuration at the
same rung, a new configuration as a fresh sample under a new id (the lost id stays a failed
Optuna trial, so numbers keep matching).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from nasforge.errors import ConfigError
from nasforge.space import Arch, SearchSpace
from nasforge.space.arch import Value
from nasforge.strategies.base import Constraint, Score, scalar
from nasforge.strategies.fidelity_base import FidelityStrategy, TrialRequest
from nasforge.strategies.fidelity_sched import (
    RESOURCES,
    FidelityConfig,
    make_ladder,
    request_from_json,
    request_to_json,
)

#: the study name fixes Optuna's HyperbandPruner bracket hash (crc32 of name and number)
STUDY_NAME = "nasforge-fidelity"


class MultiFidelityStrategy(FidelityStrategy):
    """Shared machinery of the multi-fidelity strategies (see the module docs).

    Subclasses choose the scheduler (:meth:`_make_scheduler`) that decides promotions.

    Args:
        space: the search space (a joint space's recipe dims are sampled like the others).
        seed: seeds the samplers (trial ``n``'s sampler from ``(seed, n)``).
        constraint: new configurations skip archs failing it.
        min_epochs: the smallest budget in epochs (``resource: epochs``).
        max_epochs: the full-fidelity budget in epochs (every rung's with ``data_fraction``).
        eta: the reduction factor (keep the top ``1/eta`` of a rung), an integer >= 2.
        resource: ``"epochs"`` or ``"data_fraction"``.
        min_fraction: the smallest data fraction (``resource: data_fraction``), in (0, 1].
        sampler: Optuna sampler of new configurations (``tpe``, ``random``, ``gp``, ...).
        sampler_options: keyword arguments for the sampler's constructor.

    Raises:
        ValueError: a bad option (the message names it; ``create_strategy`` turns it into
            ``ConfigError("strategy.options: ...")``).
    """

    name = "fidelity"
    default_sampler = "random"
    max_epochs = 9
    propose_tries = 20

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        constraint: Constraint | None = None,
        *,
        min_epochs: int = 1,
        max_epochs: int | None = None,
        eta: int = 3,
        resource: str = "epochs",
        min_fraction: float = 1 / 9,
        sampler: str | None = None,
        sampler_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(space, seed, constraint)
        from nasforge.strategies.optuna import SAMPLERS, OptunaStrategy

        n = self.name
        max_e = type(self).max_epochs if max_epochs is None else max_epochs
        if not _is_int(eta) or int(eta) < 2:
            raise ValueError(f"{n}.eta: expected an integer >= 2, got {eta!r}")
        if not _is_int(min_epochs) or int(min_epochs) < 1:
            raise ValueError(f"{n}.min_epochs: expected an integer >= 1, got {min_epochs!r}")
        if not _is_int(max_e) or int(max_e) < int(min_epochs):
            raise ValueError(
                f"{n}.max_epochs: expected an integer >= min_epochs ({min_epochs}), got {max_e!r}"
            )
        if resource not in RESOURCES:
            raise ValueError(
                f"{n}.resource: expected one of {', '.join(RESOURCES)}, got {resource!r}"
            )
        if not isinstance(min_fraction, int | float) or not 0 < float(min_fraction) <= 1:
            raise ValueError(f"{n}.min_fraction: expected a number in (0, 1], got {min_fraction!r}")
        sampler = self.default_sampler if sampler is None else sampler
        if sampler not in SAMPLERS or sampler == "nsga2":
            allowed = ", ".join(s for s in SAMPLERS if s != "nsga2")
            raise ValueError(f"{n}.sampler: expected one of {allowed}, got {sampler!r}")
        try:
            # borrowed for its dims -> Optuna distributions mapping and sampler construction
            self._adapter = OptunaStrategy(
                space, seed, sampler=sampler, sampler_options=sampler_options
            )
        except ValueError as exc:
            raise ValueError(str(exc).replace("optuna.", f"{n}.", 1)) from None
        self.optuna = self._adapter.optuna
        self.max_epochs = int(max_e)
        self.eta = int(eta)
        self.resource = resource
        self.ladder = make_ladder(
            resource, int(min_epochs), int(max_e), float(min_fraction), int(eta)
        )
        self.dims = space.dimensions()
        self._reset()

    # -- the FidelityStrategy protocol ----------------------------------------------------------
    def ask_trial(self) -> TrialRequest | None:
        slot = self.sched.pick()
        if slot is None:
            return None
        config_id, rung, bracket = slot
        if config_id is None:
            config = self._new_config(bracket)
            config_id = config.config_id
        request = self._request(self.configs[config_id], rung)
        self.sched.claim(config_id, rung, bracket)
        self.running[(config_id, rung)] = request
        return request

    def tell_trial(self, request: TrialRequest, score: Score) -> None:
        ident = (request.config_id, request.rung)
        if ident not in self.running:
            raise ValueError(
                f"{self.name}: tell_trial for a request that is not running "
                f"(config {request.config_id}, rung {request.rung})"
            )
        del self.running[ident]
        config = self.configs[request.config_id]
        value = scalar(score)
        ok = math.isfinite(value)
        config.scores[request.rung] = value if ok else None
        self.told.append((request, score))
        self.history.append((request.arch, score))
        self.scores[request.arch.key] = score
        if ok:
            config.trial.report(value, step=self.ladder.step(request.rung))
        for config_id, verdict in self.sched.result(config, request.rung, value if ok else None):
            self._close(config_id, verdict)

    def replay_trials(self, finished: Iterable[tuple[TrialRequest, Score]]) -> None:
        """Rebuild the study, rungs and brackets from finished rows (finish order).

        Call it on a freshly built strategy. Configurations are re-created in id order (the
        Optuna trial number), then results are told in the given order, so the pruners and
        the synchronous rungs decide as they did; what was running is asked again."""
        self._rebuild(list(finished), [])

    def done(self) -> bool:
        return not self.running and self.sched.done()

    def live_keys(self) -> set[str] | None:
        """Configurations whose Optuna trial is still open (not promoted to the top, pruned
        or failed yet): a later rung may continue their checkpoints."""
        running = self.optuna.trial.TrialState.RUNNING
        trials = self.study.get_trials(deepcopy=False)
        return {c.arch.key for i, c in self.configs.items() if trials[i].state == running}

    # -- the plain protocol does not apply ------------------------------------------------------
    def ask(self, n: int = 1) -> list[Arch]:
        raise ConfigError(
            f"strategy.name: {self.name!r} is a multi-fidelity strategy; it runs in the search "
            f"loop (ask_trial/tell_trial with budgets), not as a plain ask/tell strategy"
        )

    def tell(self, arch: Arch, score: Score) -> None:
        self.ask()

    def replay(self, finished: Iterable[tuple[Arch, Score]], asked: Iterable[Arch] = ()) -> None:
        self.ask()

    # -- results --------------------------------------------------------------------------------
    def pending(self) -> set[str]:
        return {r.arch.key for r in self.running.values()}

    def best(self) -> tuple[Arch, Score] | None:
        """The best finite score at the highest rung any configuration finished."""
        done = [(r, s) for r, s in self.told if math.isfinite(scalar(s))]
        if not done:
            return None
        top = max(r.rung for r, _ in done)
        request, score = max(((r, s) for r, s in done if r.rung == top), key=lambda e: scalar(e[1]))
        return request.arch, score

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "told": [[request_to_json(r), _score_json(s)] for r, s in self.told],
            "running": [request_to_json(r) for r in self.running.values()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._reset()
        self._rebuild(
            [(request_from_json(r), _score_from(s)) for r, s in state.get("told", [])],
            [request_from_json(r) for r in state.get("running", [])],
        )

    # -- internals ------------------------------------------------------------------------------
    def _rebuild(self, told: list[tuple[TrialRequest, Score]], running: list[TrialRequest]) -> None:
        """Re-create every configuration in id order, tell ``told`` in order, then mark
        ``running`` as asked (in flight)."""
        firsts: dict[int, TrialRequest] = {}
        for request in [r for r, _ in told] + running:
            self._check_budget(request)
            seen = firsts.get(request.config_id)
            if seen is None or request.rung < seen.rung:
                firsts[request.config_id] = request
        for config_id in sorted(firsts):
            self._restore_config(firsts[config_id])
        for request, score in told:
            self._restore_running(request)
            self.tell_trial(request, score)
        for request in running:
            self._restore_running(request)

    def _make_scheduler(self) -> Any:
        raise NotImplementedError

    def _pruner(self) -> Any:
        return self.optuna.pruners.NopPruner()

    def _reset(self) -> None:
        from nasforge.strategies.optuna import _quiet

        with _quiet(self.optuna):
            self.study = self.optuna.create_study(
                study_name=STUDY_NAME,
                direction="maximize",
                sampler=self._adapter._sampler(self.seed),
                pruner=self._pruner(),
            )
        self.configs: dict[int, FidelityConfig] = {}
        self.running: dict[tuple[int, int], TrialRequest] = {}
        self.told: list[tuple[TrialRequest, Score]] = []
        self.history = []
        self.scores = {}
        self.asked = set()
        self.sched = self._make_scheduler()

    def _request(self, config: FidelityConfig, rung: int) -> TrialRequest:
        return TrialRequest(
            arch=config.arch,
            epochs=self.ladder.epochs[rung],
            data_fraction=self.ladder.fractions[rung],
            rung=rung,
            bracket=config.bracket,
            config_id=config.config_id,
        )

    def _check_budget(self, request: TrialRequest) -> None:
        rung = self.ladder.rung_of(request.epochs, request.data_fraction)
        if rung != request.rung:
            raise ConfigError(
                f"strategy.options: a finished trial's budget ({request.epochs} epochs, "
                f"data fraction {request.data_fraction}, rung {request.rung}) is not on this "
                f"strategy's ladder (epochs {list(self.ladder.epochs)}, fractions "
                f"{list(self.ladder.fractions)}); were the strategy options changed since "
                f"the run started?"
            )

    def _n_trials(self) -> int:
        return len(self.study.get_trials(deepcopy=False))

    def _sampler_seed(self, number: int) -> int:
        return int(np.random.default_rng([self.seed, number]).integers(2**31 - 1))

    def _new_config(self, bracket: int) -> FidelityConfig:
        """Sample an allowed arch (not used by another configuration, satisfying the
        constraint); rejected proposals are closed as failed Optuna trials."""
        from nasforge.strategies.optuna import _quiet

        for _ in range(self.propose_tries):
            number = self._n_trials()
            self.study.sampler = self._adapter._sampler(self._sampler_seed(number))
            with _quiet(self.optuna):
                trial = self.study.ask()
                values: dict[str, Value] = {}
                for dim in self.dims:
                    if dim.active(values):
                        values[dim.label] = self._adapter._from_param(
                            dim, self._adapter._suggest(trial, dim)
                        )
            arch = self.space.make(values)
            if self.allowed(arch):
                return self._add_config(trial, arch, bracket)
            with _quiet(self.optuna):
                self.study.tell(trial.number, state=self.optuna.trial.TrialState.FAIL)
        rng = np.random.default_rng([self.seed, self._n_trials(), 1])
        fallback: Arch | None = None
        for _ in range(1000):  # a tight constraint or a small space: uniform samples
            arch = self.space.sample(rng)
            if self.allowed(arch):
                fallback = arch
                break
            if fallback is None and arch.key not in self.asked:
                fallback = arch  # unseen but violating the constraint beats a repeat
        if fallback is None:
            fallback = arch  # the space is exhausted: a repeat (the loop does not pay twice)
        return self._add_config(self._fixed_trial(fallback), fallback, bracket)

    def _fixed_trial(self, arch: Arch) -> Any:
        """A new Optuna trial whose parameters are ``arch``'s (enqueued, then asked)."""
        from nasforge.strategies.optuna import _quiet

        params = {
            d.label: self._adapter._to_param(d, arch[d.label]) for d in self.dims if d.label in arch
        }
        with _quiet(self.optuna):
            self.study.enqueue_trial(params, skip_if_exists=False)
            trial = self.study.ask()
            for dim in self.dims:
                if dim.label in arch:
                    self._adapter._suggest(trial, dim)
        return trial

    def _add_config(self, trial: Any, arch: Arch, bracket: int) -> FidelityConfig:
        config = FidelityConfig(trial.number, arch, trial, bracket)
        self.configs[config.config_id] = config
        self.asked.add(arch.key)
        return config

    def _restore_config(self, request: TrialRequest) -> None:
        """Re-create configuration ``request.config_id`` as Optuna trial of that number
        (numbers in between, rejected proposals or lost asks, become failed trials)."""
        from nasforge.strategies.optuna import _quiet

        if request.config_id < self._n_trials():
            raise ConfigError(
                f"strategy: replayed configuration {request.config_id} comes after a later one"
            )
        with _quiet(self.optuna):
            while self._n_trials() < request.config_id:
                filler = self.study.ask()
                self.study.tell(filler.number, state=self.optuna.trial.TrialState.FAIL)
        self._add_config(self._fixed_trial(request.arch), request.arch, request.bracket)

    def _restore_running(self, request: TrialRequest) -> None:
        config = self.configs.get(request.config_id)
        if config is None or config.arch.key != request.arch.key:
            raise ConfigError(
                f"strategy: replayed trial of configuration {request.config_id} has another "
                f"arch than its first rung"
            )
        if not self.sched.claimable(request.config_id, request.rung, request.bracket):
            raise ConfigError(
                f"strategy: replayed trial (configuration {request.config_id}, rung "
                f"{request.rung}) was never asked by this strategy's schedule; were the "
                f"strategy options changed since the run started?"
            )
        self.sched.claim(request.config_id, request.rung, request.bracket)
        self.running[(request.config_id, request.rung)] = request

    def _close(self, config_id: int, verdict: str) -> None:
        from nasforge.strategies.optuna import _quiet

        state = self.optuna.trial.TrialState
        config = self.configs[config_id]
        with _quiet(self.optuna):
            if verdict == "complete":
                value = config.scores[max(config.scores)]
                self.study.tell(config_id, value)
            elif verdict == "pruned":
                self.study.tell(config_id, state=state.PRUNED)
            else:
                self.study.tell(config_id, state=state.FAIL)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _score_json(score: Score) -> Any:
    return list(score) if isinstance(score, tuple) else score


def _score_from(data: Any) -> Score:
    return tuple(data) if isinstance(data, list) else data


class SuccessiveHalvingStrategy(MultiFidelityStrategy):
    """``sh``: one synchronous successive-halving ladder (Jamieson & Talwalkar 2016).

    ``n_configs`` configurations (default ``eta**s_max``, so one reaches the top) start at
    the lowest rung; each rung promotes its top ``1/eta`` once all its members reported.
    :meth:`done` once the ladder is spent.

    Args:
        n_configs: configurations at the lowest rung (an integer >= 1).
        **options: see :class:`MultiFidelityStrategy`.
    """

    name = "sh"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        constraint: Constraint | None = None,
        *,
        n_configs: int | None = None,
        **options: Any,
    ) -> None:
        if n_configs is not None and (not _is_int(n_configs) or int(n_configs) < 1):
            raise ValueError(f"sh.n_configs: expected an integer >= 1, got {n_configs!r}")
        self.n_configs = n_configs
        super().__init__(space, seed, constraint, **options)

    def _make_scheduler(self) -> Any:
        from nasforge.strategies.fidelity_sched import SyncScheduler

        n = self.n_configs if self.n_configs is not None else self.eta**self.ladder.top
        return SyncScheduler(self.ladder.top, self.eta, n_configs=int(n))


class HyperbandStrategy(MultiFidelityStrategy):
    """``hyperband``: Hyperband's brackets (Li et al. 2018) over and over.

    With ``synchronous: true`` (default) the paper's schedule: bracket ``s = s_max .. 0``
    starts ``ceil((s_max+1)/(s+1) * eta**s)`` configurations at rung ``s_max - s`` and halves
    them synchronously. With ``synchronous: false``, Optuna's ``HyperbandPruner`` decides
    asynchronously (its brackets, chosen by hashing the trial number; every configuration
    starts at rung 0).

    Args:
        synchronous: the paper's synchronous brackets, or Optuna's asynchronous pruner.
        **options: see :class:`MultiFidelityStrategy`.
    """

    name = "hyperband"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        constraint: Constraint | None = None,
        *,
        synchronous: bool = True,
        **options: Any,
    ) -> None:
        if not isinstance(synchronous, bool):
            raise ValueError(
                f"{self.name}.synchronous: expected true or false, got {synchronous!r}"
            )
        self.synchronous = synchronous
        super().__init__(space, seed, constraint, **options)

    def _pruner(self) -> Any:
        if self.synchronous:
            return super()._pruner()
        # brackets = floor(log_eta(max_resource)) + 1 = top + 1; the +1 keeps float logs of
        # exact powers (log(243, 3) = 4.999...) from losing the full-budget bracket
        return self.optuna.pruners.HyperbandPruner(
            min_resource=1,
            max_resource=self.ladder.step(self.ladder.top) + 1,
            reduction_factor=self.eta,
        )

    def _make_scheduler(self) -> Any:
        from nasforge.strategies.fidelity_sched import PrunerScheduler, SyncScheduler

        if self.synchronous:
            return SyncScheduler(self.ladder.top, self.eta)
        return PrunerScheduler(self.ladder.top)


class BohbStrategy(HyperbandStrategy):
    """``bohb``: Hyperband fed by a model-based sampler (Falkner et al. 2018), here Optuna's
    TPE, which sees every rung's score (stopped configurations as pruned trials ranked by the
    rung they reached). Options as :class:`HyperbandStrategy`; ``sampler`` defaults to TPE."""

    name = "bohb"
    default_sampler = "tpe"


class AshaStrategy(MultiFidelityStrategy):
    """``asha``: asynchronous successive halving (Li et al. 2020) by Optuna's
    ``SuccessiveHalvingPruner``: a result is promoted when it is in the top ``1/eta`` of its
    rung so far; promoted configurations are asked first, new ones otherwise (never waits).
    Options: see :class:`MultiFidelityStrategy`."""

    name = "asha"

    def _pruner(self) -> Any:
        return self.optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=self.eta, min_early_stopping_rate=0
        )

    def _make_scheduler(self) -> Any:
        from nasforge.strategies.fidelity_sched import PrunerScheduler

        return PrunerScheduler(self.ladder.top)
