"""Multi-fidelity strategies (sh, hyperband, asha, bohb): schedules, promotions, resume."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from nasforge.errors import ConfigError
from nasforge.space import Arch
from nasforge.strategies import STRATEGIES, create_strategy, strategy_factory
from nasforge.strategies.fidelity import MultiFidelityStrategy
from nasforge.strategies.fidelity_base import FidelityStrategy, TrialRequest
from nasforge.strategies.fidelity_sched import make_ladder
from nasforge.testing import conditional_objective, conditional_toy_space, toy_objective, toy_space

NAMES = ("sh", "hyperband", "asha", "bohb")
Score = Callable[[TrialRequest], float | None]


def _make(name: str, seed: int = 0, **options: object) -> MultiFidelityStrategy:
    if name == "sh" and "max_epochs" not in options:
        options = {"n_configs": 30, "max_epochs": 27, **options}  # 30 + 10 + 3 + 1 trials
    strategy = create_strategy(name, toy_space(), seed=seed, **options)
    assert isinstance(strategy, MultiFidelityStrategy)
    return strategy


def _toy_score(seed: int = 0) -> Score:
    """Hidden-target matches (0..6) scaled to [0, 1], plus a little for a larger budget."""
    evaluate, _ = toy_objective(toy_space(), seed)
    return lambda r: float(evaluate(r.arch)) / 6 + 0.01 * r.rung  # type: ignore[arg-type]


def _run(strategy: FidelityStrategy, score: Score, n: int) -> list[tuple[TrialRequest, object]]:
    """Sequential ask/tell for ``n`` evaluations (or until the strategy waits or is done)."""
    told = []
    for _ in range(n):
        request = strategy.ask_trial()
        if request is None:
            break
        value = score(request)
        strategy.tell_trial(request, value)
        told.append((request, value))
    return told


def _ident(r: TrialRequest | None) -> tuple | None:
    if r is None:
        return None
    return (r.arch.key, r.epochs, r.data_fraction, r.rung, r.bracket, r.config_id)


def test_registered_as_fidelity_strategies() -> None:
    for name in NAMES:
        factory = strategy_factory(name)
        assert getattr(factory, "multi_fidelity", False) is True
        assert factory.max_epochs == 9  # type: ignore[attr-defined]
        assert _make(name).name == name
    assert set(NAMES) <= set(STRATEGIES)


def test_ladders() -> None:
    assert make_ladder("epochs", 1, 9, 1.0, 3).epochs == (1, 3, 9)
    assert make_ladder("epochs", 1, 10, 1.0, 3).epochs == (1, 3, 10)  # the top is the max
    assert make_ladder("epochs", 2, 16, 1.0, 2).epochs == (2, 4, 8, 16)
    assert make_ladder("epochs", 3, 3, 1.0, 3).epochs == (3,)
    frac = make_ladder("data_fraction", 1, 4, 1 / 9, 3)
    assert frac.epochs == (4, 4, 4)
    assert frac.fractions == pytest.approx((1 / 9, 1 / 3, 1.0), abs=1e-6)


def test_sh_rungs_match_the_paper_and_wait_for_the_whole_rung() -> None:
    strategy = _make("sh", min_epochs=1, max_epochs=9, eta=3)
    rung0 = [strategy.ask_trial() for _ in range(9)]
    assert all(r is not None and r.epochs == 1 and r.rung == 0 for r in rung0)
    assert strategy.ask_trial() is None  # synchronous: rung 1 needs all of rung 0
    values = dict(zip((r.config_id for r in rung0 if r), [5, 1, 9, 3, 7, 2, 8, 4, 6], strict=True))
    for r in reversed(rung0):  # tell order must not matter
        assert r is not None
        strategy.tell_trial(r, float(values[r.config_id]))
    top3 = sorted(values, key=lambda c: -values[c])[:3]
    rung1 = [strategy.ask_trial() for _ in range(3)]
    assert strategy.ask_trial() is None
    assert sorted(r.config_id for r in rung1 if r) == sorted(top3)
    assert {(r.epochs, r.rung) for r in rung1 if r} == {(3, 1)}
    for r, v in zip(rung1, (0.2, 0.9, 0.5), strict=True):
        assert r is not None
        strategy.tell_trial(r, v)
    final = strategy.ask_trial()
    assert final is not None and final.epochs == 9 and final.config_id == rung1[1].config_id  # type: ignore[union-attr]
    assert not strategy.done()
    strategy.tell_trial(final, 0.95)
    assert strategy.done() and strategy.ask_trial() is None
    states = Counter(t.state.name for t in strategy.study.get_trials(deepcopy=False))
    assert states == {"PRUNED": 8, "COMPLETE": 1}


def test_hyperband_brackets_match_the_paper() -> None:
    # Li et al. 2018 with R = 9, eta = 3: s=2: 9@1, 3@3, 1@9; s=1: 5@3, 1@9; s=0: 3@9.
    strategy = _make("hyperband", min_epochs=1, max_epochs=9, eta=3)
    told = _run(strategy, _toy_score(), 13 + 6 + 3 + 9)
    per_bracket = Counter((r.bracket, r.epochs) for r, _ in told)
    assert per_bracket == {
        (0, 1): 9, (0, 3): 3, (0, 9): 1,
        (1, 3): 5, (1, 9): 1,
        (2, 9): 3,
        (3, 1): 9,  # the next cycle starts again with s = 2
    }  # fmt: skip
    for r, _ in told:
        assert r.epochs == (1, 3, 9)[r.rung]


def test_hyperband_starts_the_next_bracket_while_one_waits() -> None:
    strategy = _make("hyperband")
    first = [strategy.ask_trial() for _ in range(9)]
    nxt = strategy.ask_trial()
    assert {r.bracket for r in first if r} == {0}
    assert nxt is not None and nxt.bracket == 1 and nxt.epochs == 3


def test_asha_promotes_the_top_fraction_of_each_rung() -> None:
    eta = 3
    strategy = _make("asha", eta=eta, max_epochs=9)
    rng = np.random.default_rng(0)
    seen: dict[int, list[float]] = {0: [], 1: []}
    expected: tuple[int, int] | None = None
    promoted = 0
    configs: set[int] = set()
    for _ in range(150):
        r = strategy.ask_trial()
        assert r is not None  # asynchronous: never waits
        if expected is not None:  # a promotion is asked before any new configuration
            assert (r.config_id, r.rung) == expected
        else:
            assert r.rung == 0 and r.config_id not in configs
        configs.add(r.config_id)
        v = float(rng.random())
        strategy.tell_trial(r, v)
        expected = None
        if r.rung < 2:
            seen[r.rung].append(v)
            ranked = sorted(seen[r.rung], reverse=True)
            # Optuna's ASHA: promoted when in the top 1/eta of the rung so far (at least 1)
            if v >= ranked[max(len(ranked) // eta, 1) - 1]:
                expected = (r.config_id, r.rung + 1)
                promoted += r.rung == 0
    n0 = len(seen[0])
    assert n0 > 60
    assert n0 / eta * 0.5 < promoted < n0 / eta * 1.5  # about a third promoted, not all


def test_failed_trials_are_never_promoted() -> None:
    for name in ("sh", "asha"):
        strategy = _make(name, seed=3)
        failed: set[int] = set()

        def score(r: TrialRequest, failed: set[int] = failed) -> float | None:
            if r.config_id % 2 == 0:  # half fail, including (for sh) the best ones otherwise
                failed.add(r.config_id)
                return None
            return 0.1

        told = _run(strategy, score, 60)
        assert failed
        assert all(r.config_id not in failed for r, _ in told if r.rung > 0)
        trials = strategy.study.get_trials(deepcopy=False)
        assert all(trials[c].state.name == "FAIL" for c in failed)


def test_sh_ladder_ends_when_every_member_failed() -> None:
    strategy = _make("sh", n_configs=4)
    told = _run(strategy, lambda r: None, 10)
    assert len(told) == 4 and strategy.done()


@pytest.mark.parametrize("name", NAMES)
def test_replay_continues_like_an_uninterrupted_strategy(name: str) -> None:
    score = _toy_score(1)
    live = _make(name, seed=5)
    told = _run(live, score, 23)
    in_flight = live.ask_trial()  # asked, never finished: the crash
    resumed = _make(name, seed=5)
    resumed.replay_trials(told)
    again = resumed.ask_trial()
    assert _ident(again) == _ident(in_flight)  # what was running is asked again
    assert in_flight is not None and again is not None
    live.tell_trial(in_flight, score(in_flight))
    resumed.tell_trial(again, score(again))
    a = [_ident(r) for r, _ in _run(live, score, 25)]
    b = [_ident(r) for r, _ in _run(resumed, score, 25)]
    assert a == b and len(a) >= 15


@pytest.mark.parametrize("name", ("hyperband", "asha"))
def test_replay_after_out_of_order_finishes(name: str) -> None:
    """Two workers: results arrive out of ask order; the replayed strategy decides alike."""
    score = _toy_score(2)
    live = _make(name, seed=2)
    running: list[TrialRequest] = []
    finished: list[tuple[TrialRequest, object]] = []
    for step in range(40):
        while len(running) < 2:
            r = live.ask_trial()
            assert r is not None
            running.append(r)
        r = running.pop(step % 2)
        live.tell_trial(r, score(r))
        finished.append((r, score(r)))
    resumed = _make(name, seed=2)
    resumed.replay_trials(finished)
    # the crash lost `running`: the resumed strategy fills the same slots; a lost promotion is
    # the same configuration again, a lost new configuration is a fresh one (new id)
    live_next = [*running, live.ask_trial()]
    resumed_next = [resumed.ask_trial(), resumed.ask_trial()]
    assert all(live_next) and all(resumed_next)
    slots = [sorted((r.rung, r.bracket) for r in rs if r) for rs in (live_next, resumed_next)]
    assert slots[0] == slots[1]
    known = {r.config_id for r, _ in finished}
    promoted = [
        {(r.config_id, r.rung) for r in rs if r and r.config_id in known}
        for rs in (live_next, resumed_next)
    ]
    assert promoted[0] == promoted[1]


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    score = _toy_score(3)
    original = _make(
        name, seed=4, sampler_options={"n_startup_trials": 3} if name == "bohb" else None
    )
    _run(original, score, 20)
    open_request = original.ask_trial()  # stays open while a later ask finishes
    later = original.ask_trial()
    assert later is not None
    original.tell_trial(later, score(later))
    state = json.loads(json.dumps(original.state_dict()))
    restored = _make(
        name, seed=4, sampler_options={"n_startup_trials": 3} if name == "bohb" else None
    )
    restored.load_state_dict(state)
    assert restored.pending() == original.pending()
    assert open_request is not None
    for strategy in (original, restored):
        strategy.tell_trial(open_request, score(open_request))
    a = [_ident(r) for r, _ in _run(original, score, 15)]
    b = [_ident(r) for r, _ in _run(restored, score, 15)]
    assert a == b


def test_seeded_requests_repeat() -> None:
    for name in NAMES:
        runs = [[_ident(r) for r, _ in _run(_make(name, seed=9), _toy_score(), 30)] for _ in "ab"]
        assert runs[0] == runs[1]


def test_data_fraction_resource() -> None:
    strategy = _make("hyperband", resource="data_fraction", min_fraction=1 / 9, max_epochs=4)
    told = _run(strategy, _toy_score(), 20)
    assert {r.epochs for r, _ in told} == {4}
    fractions = {round(r.data_fraction, 4): r.rung for r, _ in told}
    assert fractions == {0.1111: 0, 0.3333: 1, 1.0: 2}


def test_bohb_samples_better_than_random() -> None:
    """TPE fed by Hyperband's rungs proposes configurations closer to the hidden target
    than uniform sampling (expected 1.5 of 6 matches, sd of a 40-mean about 0.17)."""
    for seed in (0, 1):
        evaluate, _ = toy_objective(toy_space(), seed)
        strategy = _make("bohb", seed=seed)
        new: dict[int, Arch] = {}
        for r, _ in _run(strategy, _toy_score(seed), 110):
            new.setdefault(r.config_id, r.arch)
        late = [float(evaluate(a)) for _, a in sorted(new.items())[30:70]]  # type: ignore[arg-type]
        assert len(late) == 40
        assert float(np.mean(late)) >= 2.3, f"seed {seed}: {np.mean(late):.2f} matches"


def test_best_is_at_full_fidelity() -> None:
    strategy = _make("sh", max_epochs=9)

    def score(r: TrialRequest) -> float:
        return 0.9 - 0.1 * r.rung  # cheap rungs score higher: they must not win

    told = _run(strategy, score, 20)
    best = strategy.best()
    assert best is not None and best[1] == pytest.approx(0.7)
    assert best[0] == next(r.arch for r, _ in told if r.rung == 2)


def test_plain_ask_and_options_errors() -> None:
    strategy = _make("asha")
    with pytest.raises(ConfigError, match="multi-fidelity"):
        strategy.ask(1)
    bad = [
        ({"eta": 1}, "asha.eta"),
        ({"resource": "steps"}, "asha.resource"),
        ({"min_fraction": 0}, "asha.min_fraction"),
        ({"max_epochs": 0}, "asha.max_epochs"),
        ({"sampler": "nope"}, "asha.sampler"),
        ({"bogus": 1}, "bogus"),
    ]
    for options, field in bad:
        with pytest.raises(ConfigError, match=field):
            create_strategy("asha", toy_space(), seed=0, **options)
    with pytest.raises(ConfigError, match="sh.n_configs"):
        create_strategy("sh", toy_space(), n_configs=0)


def test_replay_refuses_a_changed_ladder() -> None:
    live = _make("asha", max_epochs=9)
    told = _run(live, _toy_score(), 5)
    assert any(r.epochs == 3 for r, _ in told)
    with pytest.raises(ConfigError, match="ladder"):
        _make("asha", eta=2, max_epochs=8).replay_trials(told)


def test_asynchronous_hyperband_uses_optunas_brackets() -> None:
    """Every new configuration is worse than all before it: ASHA (one bracket) stops all but
    the first at rung 0, Optuna's HyperbandPruner lets its higher brackets' configurations
    through rung 0 unchecked (their first decision is at a larger budget)."""
    promoted = {}
    for name, options in (("asha", {}), ("hyperband", {"synchronous": False})):
        strategy = _make(name, **options)  # type: ignore[arg-type]
        told = _run(strategy, lambda r: 1.0 / (1 + r.config_id) + 0.01 * r.rung, 60)
        promoted[name] = {r.config_id for r, _ in told if r.rung == 1}
        states = Counter(t.state.name for t in strategy.study.get_trials(deepcopy=False))
        assert states["PRUNED"] > 0 and states["COMPLETE"] > 0
    assert promoted["asha"] == {0}
    assert len(promoted["hyperband"]) >= 3


@pytest.mark.parametrize("name", ("hyperband", "bohb"))
def test_conditional_space_with_floats_replays(name: str) -> None:
    """Int, log-Float and conditional dims go through Optuna and back unchanged on replay."""
    space = conditional_toy_space()

    def score(r: TrialRequest) -> float:
        return float(conditional_objective(r.arch)) + 0.1 * r.rung  # type: ignore[arg-type]

    live = create_strategy(name, space, seed=1)
    told = _run(live, score, 30)  # type: ignore[arg-type]
    for r, _ in told:
        space.validate(r.arch)
    resumed = create_strategy(name, space, seed=1)
    resumed.replay_trials(told)  # type: ignore[attr-defined]
    a = [_ident(r) for r, _ in _run(live, score, 12)]  # type: ignore[arg-type]
    b = [_ident(r) for r, _ in _run(resumed, score, 12)]  # type: ignore[arg-type]
    assert a == b


def test_tiny_space_exhausted_does_not_hang() -> None:
    space = toy_space(n_dims=1, n_choices=2)
    strategy = create_strategy("asha", space, seed=0)
    told = _run(strategy, lambda r: 0.5, 12)  # type: ignore[arg-type]
    assert len(told) == 12
