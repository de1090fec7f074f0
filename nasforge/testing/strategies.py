"""Conformance suite for :class:`~nasforge.strategies.Strategy` implementations.

Like Optuna's ``optuna.testing`` suites, it ships inside the package so that every strategy
(ours or a plug-in registered with ``register_strategy``) is held to the same contract.
Subclass :class:`StrategyConformance` in a test module, name the subclass ``Test...`` and
implement :meth:`StrategyConformance.make_strategy`::

    class TestEvolution(StrategyConformance):
        optimum_budget = 300

        def make_strategy(self, space, seed, constraint=None):
            return EvolutionStrategy(
                space, seed=seed, constraint=constraint, population=10, tournament=3
            )

The optimum test follows NNI's strategy sanity test: a toy space of ``n_dims`` categorical
dimensions with ``n_choices`` each and a hidden target; the score of an arch is the number of
dimensions equal to the target, so the optimum (score ``n_dims``) is known analytically.
Methods use plain ``assert`` so that the module needs no pytest at import time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np

from nasforge.space import Arch, Categorical, Condition, Float, Int, SearchSpace
from nasforge.strategies.base import Constraint, Score, Strategy

Evaluate = Callable[[Arch], Score]


# -- toy problems -----------------------------------------------------------------------------
def toy_space(n_dims: int = 6, n_choices: int = 4) -> SearchSpace:
    """``n_dims`` categorical dims ``d0 .. d{n-1}``, each with choices ``0 .. n_choices-1``."""
    dims = [Categorical(f"d{i}", choices=tuple(range(n_choices))) for i in range(n_dims)]
    return SearchSpace(dims, name="toy")


def toy_objective(space: SearchSpace, seed: int = 0) -> tuple[Evaluate, float]:
    """A hidden target drawn from ``seed``; returns ``(evaluate, optimum)``.

    ``evaluate(arch)`` counts the dimensions equal to the target, so the optimum is the
    number of dimensions and exactly one arch reaches it.
    """
    rng = np.random.default_rng(10_000 + seed)
    target = {d.label: d.sample(rng) for d in space.dimensions()}

    def evaluate(arch: Arch) -> Score:
        return float(sum(arch[label] == value for label, value in target.items()))

    return evaluate, float(len(target))


def conditional_toy_space() -> SearchSpace:
    """A small space with an integer depth, conditional blocks and a float dimension."""
    dims: list = [Int("depth", low=1, high=3), Float("lr", low=1e-3, high=1e-1, log=True)]
    for j in range(3):
        when = (Condition("depth", ">=", j + 1),) if j > 0 else ()
        dims.append(
            Categorical(f"block{j}/op", choices=("conv3", "conv5", "pool", "skip"), when=when)
        )
        dims.append(Categorical(f"block{j}/se", choices=(False, True), when=when))
    return SearchSpace(dims, name="conditional_toy")


def conditional_objective(arch: Arch) -> Score:
    """A deterministic score for :func:`conditional_toy_space` (deeper, conv5, no se is best)."""
    score = float(arch["depth"]) - abs(np.log10(float(arch["lr"])) + 2.0)
    for j in range(int(arch["depth"])):
        score += {"conv3": 0.5, "conv5": 1.0, "pool": 0.2, "skip": 0.0}[str(arch[f"block{j}/op"])]
        score -= 0.3 * bool(arch[f"block{j}/se"])
    return score


# -- the search loop --------------------------------------------------------------------------
def run_search(
    strategy: Strategy,
    evaluate: Evaluate,
    budget: int,
    batch: int = 1,
    stop_at: float | None = None,
) -> list[tuple[Arch, Score]]:
    """Ask/evaluate/tell until ``budget`` evaluations are spent; never exceeds it.

    Each round asks ``min(batch, budget - spent)`` archs, evaluates them and tells the results
    in *reverse* order (strategies must not depend on tell order). Stops early once a score
    ``>= stop_at`` is seen. Returns ``(arch, score)`` in evaluation order.
    """
    if budget < 0 or batch < 1:
        raise ValueError("run_search: need budget >= 0 and batch >= 1")
    records: list[tuple[Arch, Score]] = []
    while len(records) < budget:
        archs = strategy.ask(min(batch, budget - len(records)))
        results = [(a, evaluate(a)) for a in archs]
        for arch, score in reversed(results):
            strategy.tell(arch, score)
        records.extend(results)
        if stop_at is not None and any(s is not None and _first(s) >= stop_at for _, s in results):
            break
    return records


def _first(score: Score) -> float:
    return float(score[0]) if isinstance(score, tuple) else float(score)  # type: ignore[arg-type]


def _keys(records: Sequence[tuple[Arch, Score]]) -> list[str]:
    return [a.key for a, _ in records]


# -- the suite --------------------------------------------------------------------------------
class StrategyConformance:
    """Contract tests every strategy passes; subclass and implement :meth:`make_strategy`.

    Class attributes to tune per strategy:
        optimum_budget: evaluations allowed to reach the toy optimum (6 dims x 4 choices,
            4,096 archs, one optimum).
        optimum_seeds: the seeds (strategy seed = hidden-target seed) that must all succeed.
        optimum_skip: a reason string to exempt the strategy from the optimum test.
    """

    optimum_budget: int = 300
    optimum_seeds: tuple[int, ...] = (0, 1, 2)
    optimum_skip: str | None = None

    def make_strategy(
        self, space: SearchSpace, seed: int, constraint: Constraint | None = None
    ) -> Strategy:
        """A fresh strategy for ``(space, seed)``, built with ``constraint`` (pass it to the
        constructor, as :func:`~nasforge.strategies.create_strategy` does)."""
        raise NotImplementedError("subclasses return a fresh strategy for (space, seed)")

    # helpers ----------------------------------------------------------------------------------
    def _toy(self, seed: int = 0) -> tuple[SearchSpace, Evaluate]:
        space = toy_space()
        evaluate, _ = toy_objective(space, seed)
        return space, evaluate

    # tests ------------------------------------------------------------------------------------
    def test_asks_are_valid_and_unique(self) -> None:
        space = conditional_toy_space()
        strategy = self.make_strategy(space, 0)
        records = run_search(strategy, conditional_objective, budget=40, batch=3)
        for arch, _ in records:
            space.validate(arch)
        keys = _keys(records)
        assert len(set(keys)) == len(keys), "a strategy asked the same key twice"

    def test_seeded_reproducibility(self) -> None:
        space, evaluate = self._toy(0)
        runs = [
            _keys(run_search(self.make_strategy(space, 7), evaluate, budget=40, batch=2))
            for _ in range(2)
        ]
        assert runs[0] == runs[1], "same seed and same tells gave different asks"

    def test_state_dict_roundtrip(self) -> None:
        space, evaluate = self._toy(1)
        original = self.make_strategy(space, 3)
        run_search(original, evaluate, budget=24, batch=2)
        open_asks = original.ask(2)  # one is told before saving, one stays pending
        original.tell(open_asks[0], evaluate(open_asks[0]))
        state = json.loads(json.dumps(original.state_dict()))
        restored = self.make_strategy(space, 3)
        restored.load_state_dict(state)
        assert restored.pending() == original.pending()
        for strategy in (original, restored):
            strategy.tell(open_asks[1], evaluate(open_asks[1]))
        a = _keys(run_search(original, evaluate, budget=20, batch=2))
        b = _keys(run_search(restored, evaluate, budget=20, batch=2))
        assert a == b, "a strategy restored from its state_dict asked different archs"

    def test_respects_budget(self) -> None:
        space, evaluate = self._toy(2)
        strategy = self.make_strategy(space, 0)
        calls = 0

        def counting(arch: Arch) -> Score:
            nonlocal calls
            calls += 1
            return evaluate(arch)

        records = run_search(strategy, counting, budget=17, batch=4)
        assert calls == len(records) == 17
        assert len(strategy.history) == 17

    def test_never_reasks_a_finished_key(self) -> None:
        space, evaluate = self._toy(3)
        strategy = self.make_strategy(space, 1)
        finished: set[str] = set()
        pending: list[Arch] = []
        for step in range(30):  # interleaved asks and out-of-order tells
            for arch in strategy.ask(1 + step % 3):
                assert arch.key not in finished, "re-asked a finished key"
                assert arch.key not in {p.key for p in pending}, "re-asked a pending key"
                pending.append(arch)
            while len(pending) > 2:
                arch = pending.pop(int(step % len(pending)))
                strategy.tell(arch, evaluate(arch))
                finished.add(arch.key)

    def test_failed_trials_are_tolerated(self) -> None:
        space, evaluate = self._toy(4)
        strategy = self.make_strategy(space, 2)

        def flaky(arch: Arch) -> Score:
            return None if int(arch["d0"]) == 0 else evaluate(arch)

        records = run_search(strategy, flaky, budget=30, batch=2)
        assert len(records) == 30
        assert any(s is None for _, s in records) or all(a["d0"] != 0 for a, _ in records)

    def test_constraint_is_respected(self) -> None:
        space, evaluate = self._toy(6)
        strategy = self.make_strategy(
            space, 5, constraint=lambda arch: int(arch["d0"]) != 0 and int(arch["d1"]) != 1
        )
        records = run_search(strategy, evaluate, budget=30, batch=2)
        bad = [a for a, _ in records if int(a["d0"]) == 0 or int(a["d1"]) == 1]
        assert not bad, f"{len(bad)} asked archs violate the constraint"

    def test_replay_does_not_reask(self) -> None:
        space, evaluate = self._toy(5)
        live = self.make_strategy(space, 4)
        records = run_search(live, evaluate, budget=20)
        opened = live.ask(1)
        resumed = self.make_strategy(space, 4)
        resumed.replay(records, asked=opened)
        done = set(_keys(records)) | {opened[0].key}
        for arch in resumed.ask(10):
            assert arch.key not in done, "a replayed strategy re-asked a finished or open key"

    def test_reaches_toy_optimum(self) -> None:
        if self.optimum_skip:
            import pytest

            pytest.skip(self.optimum_skip)
        space = toy_space()
        for seed in self.optimum_seeds:
            evaluate, optimum = toy_objective(space, seed)
            strategy = self.make_strategy(space, seed)
            records = run_search(strategy, evaluate, budget=self.optimum_budget, stop_at=optimum)
            best = max(_first(s) for _, s in records if s is not None)
            assert best == optimum, (
                f"seed {seed}: best {best} after {len(records)} evaluations, optimum {optimum}"
            )


def builtin_strategies() -> list[str]:
    """The strategy names nasforge itself registers (a factory in the ``nasforge`` package),
    not those a plugin or a test module added to the registry."""
    from nasforge.strategies import STRATEGIES

    def module(factory: object) -> str:
        return factory.split(":")[0] if isinstance(factory, str) else factory.__module__

    return [n for n, f in STRATEGIES.items() if module(f).split(".")[0] == "nasforge"]
