"""OFA specialisation's measured refinement (:mod:`nasforge.oneshot.ofa.refine`): with a
"measurement" that is a biased version of the table's prediction, refinement lands inside the
window where the table alone does not, stops as soon as inside, never returns an arch measured
above the target when one below was measured, retries an unstable measurement once, and
chooses inside the window among accuracies the predictor cannot tell apart. Stand-in
accuracies and latencies, as in test_ofa_specialize.py (its helpers are imported).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_ofa_specialize import flops_ms, small_space, stand_in_accuracy

from nasforge.errors import ConfigError, NasforgeError
from nasforge.oneshot.ofa.refine import MAX_REFINE_ROUNDS, Measured
from nasforge.oneshot.ofa.specialize import (
    AccuracyPredictor,
    SpecializeConfig,
    sample_subnets,
    specialize,
)
from nasforge.space import Arch
from nasforge.spaces.mobile import MobileSpace


@pytest.fixture(scope="module")
def small() -> tuple[MobileSpace, AccuracyPredictor]:
    space = small_space()
    samples = sample_subnets(space, stand_in_accuracy(space), 60, seed=0)
    return space, AccuracyPredictor.fit(space, samples, "mlp", seed=0)


# -- measured refinement -------------------------------------------------------------------------
def refine_target(space: MobileSpace) -> float:
    """A limit in the crowded middle of the space's predicted latencies."""
    lat = flops_ms(space)
    rng = np.random.default_rng(5)
    return float(np.percentile([lat(space.sample(rng)) for _ in range(300)], 40))


class Biased:
    """A stand-in "measurement": the prediction times ``bias`` (a table that over- or
    under-predicts), counting its calls; ``unstable`` first calls per arch are flagged."""

    def __init__(self, space: MobileSpace, bias: float, unstable: int = 0) -> None:
        self.lat, self.bias, self.unstable = flops_ms(space), bias, unstable
        self.calls: list[str] = []

    def __call__(self, arch: Arch) -> Measured:
        self.calls.append(arch.key)
        flagged = self.calls.count(arch.key) <= self.unstable
        ms = self.bias * self.lat(arch) * (1.01 if flagged else 1.0)
        return Measured(ms, unstable=flagged, stability={"stable": not flagged})


def inside(ms: float, target: float, window: float = 0.10) -> bool:
    return (1 - window) * target <= ms <= target


@pytest.mark.parametrize("bias", [0.8, 1.2])
def test_refinement_lands_inside_the_window_where_the_table_alone_does_not(
    bias: float, small: tuple[MobileSpace, AccuracyPredictor]
) -> None:
    space, predictor = small
    target = refine_target(space)
    cfg = SpecializeConfig(evaluations=600)
    plain = specialize(space, predictor, flops_ms(space), target, cfg)
    assert not inside(bias * plain.predicted_latency_ms, target)  # the bias puts it outside
    meas = Biased(space, bias)
    got = specialize(space, predictor, flops_ms(space), target, cfg, measure_ms=meas)
    assert got.feasible and got.measured_ms is not None and inside(got.measured_ms, target)
    assert got.measured_ms == pytest.approx(bias * flops_ms(space)(got.arch))
    rounds = got.refinement
    assert got.refine_stop == "inside" and 2 <= len(rounds) <= cfg.refine_rounds
    # round 1 aims at the middle of the window; each round is recorded
    assert rounds[0]["limit_ms"] == pytest.approx(target * (1 - cfg.margin))
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
    assert meas.calls == [r["arch_key"] for r in rounds]  # one measurement per round
    assert rounds[-1]["arch_key"] == got.arch.key and got.limit_ms == rounds[-1]["limit_ms"]
    for r in rounds:
        assert r["predicted_ms"] <= r["limit_ms"] and r["unstable"] is False
        assert r["measured_ms"] == pytest.approx(bias * r["predicted_ms"])
    # the second limit is the first corrected by the measured/predicted ratio
    assert rounds[1]["limit_ms"] == pytest.approx(rounds[0]["limit_ms"] / bias)
    assert got.evaluations > cfg.evaluations  # every search counted
    record = json.loads(json.dumps(got.to_dict()))
    assert record["refinement"] == rounds and record["measured_ms"] == got.measured_ms


def test_refinement_stops_as_soon_as_inside(small: tuple[MobileSpace, AccuracyPredictor]) -> None:
    space, predictor = small
    target = refine_target(space)
    meas = Biased(space, 1.0)  # an unbiased table: round 1 (aimed at 0.95 x target) is inside
    got = specialize(
        space, predictor, flops_ms(space), target, SpecializeConfig(evaluations=600), meas
    )
    assert len(got.refinement) == 1 and len(meas.calls) == 1 and got.refine_stop == "inside"
    assert inside(got.measured_ms or 0.0, target)


def test_refinement_never_returns_an_arch_measured_above_the_target_when_one_was_below(
    small: tuple[MobileSpace, AccuracyPredictor],
) -> None:
    space, predictor = small
    target = refine_target(space)
    lat = flops_ms(space)
    seen: list[str] = []

    def erratic(arch: Arch) -> float:  # the first arch measures fast, every later one slow
        seen.append(arch.key)
        return (0.5 if arch.key == seen[0] else 1.5) * lat(arch)

    cfg = SpecializeConfig(evaluations=400, refine_rounds=3)
    got = specialize(space, predictor, lat, target, cfg, measure_ms=erratic)
    rounds = got.refinement
    assert len(rounds) >= 2 and all(r["measured_ms"] > target for r in rounds[1:])
    assert got.arch.key == rounds[0]["arch_key"] and got.feasible
    assert got.measured_ms == rounds[0]["measured_ms"] <= target
    # the slow rounds' limits stay between what measured too fast and too slow
    assert rounds[1]["limit_ms"] == pytest.approx(2 * target * (1 - cfg.margin))  # clipped
    if len(rounds) > 2:
        assert rounds[0]["predicted_ms"] < rounds[2]["limit_ms"] < rounds[1]["predicted_ms"]


def test_refinement_with_nothing_under_the_target_says_so(
    small: tuple[MobileSpace, AccuracyPredictor],
) -> None:
    space, predictor = small
    target = refine_target(space)
    meas = Biased(space, 10.0)
    got = specialize(space, predictor, flops_ms(space), target, SpecializeConfig(), meas)
    assert not got.feasible and (got.measured_ms or 0.0) > target
    assert got.measured_ms == min(r["measured_ms"] for r in got.refinement)  # the fastest
    assert (
        got.refine_stop in ("rounds", "repeat")
        and len(got.refinement) <= SpecializeConfig().refine_rounds
    )


def test_unstable_measurement_is_retried_once_then_used_with_its_flag(
    small: tuple[MobileSpace, AccuracyPredictor],
) -> None:
    space, predictor = small
    target = refine_target(space)
    cfg = SpecializeConfig(evaluations=400)
    once = Biased(space, 1.0, unstable=1)  # the retry is stable
    got = specialize(space, predictor, flops_ms(space), target, cfg, once)
    r = got.refinement[0]
    assert r["retried"] and not r["unstable"] and r["stability"] == {"stable": True}
    assert r["first_measured_ms"] == pytest.approx(1.01 * r["measured_ms"])
    assert once.calls == [r["arch_key"]] * 2 and not got.measured_unstable
    always = Biased(space, 1.0, unstable=99)  # stays unstable: used, flagged, not retried again
    got = specialize(space, predictor, flops_ms(space), target, cfg, always)
    assert len(always.calls) == 2 * len(got.refinement)
    assert all(r["retried"] and r["unstable"] for r in got.refinement)
    assert got.measured_unstable


def test_refine_rounds_0_is_the_unrefined_search(
    small: tuple[MobileSpace, AccuracyPredictor],
) -> None:
    space, predictor = small
    target = refine_target(space)
    cfg = SpecializeConfig(evaluations=300, refine_rounds=0)

    def never(arch: Arch) -> float:
        raise AssertionError("measured with refine_rounds 0")

    got = specialize(space, predictor, flops_ms(space), target, cfg, measure_ms=never)
    plain = specialize(space, predictor, flops_ms(space), target, cfg)
    assert got.arch == plain.arch and got.history == plain.history
    assert got.limit_ms == target and got.measured_ms is None and got.refinement == []


def test_weighted_objective_is_measured_once_not_refined(
    small: tuple[MobileSpace, AccuracyPredictor],
) -> None:
    space, predictor = small
    target = refine_target(space)
    cfg = SpecializeConfig(objective="weighted", evaluations=300)
    meas = Biased(space, 0.5)
    got = specialize(space, predictor, flops_ms(space), target, cfg, meas)
    plain = specialize(space, predictor, flops_ms(space), target, cfg)
    assert got.arch == plain.arch and len(got.refinement) == 1 and got.feasible
    assert got.refinement[0]["limit_ms"] == target and got.measured_ms == pytest.approx(
        0.5 * plain.predicted_latency_ms
    )


def test_refinement_settings_are_checked(small: tuple[MobileSpace, AccuracyPredictor]) -> None:
    for options, name in (
        ({"refine_rounds": -1}, "refine_rounds"),
        ({"refine_rounds": MAX_REFINE_ROUNDS + 1}, "refine_rounds"),
        ({"window": 0.0}, "window"),
        ({"window": 1.0}, "window"),
        ({"margin": -0.1}, "margin"),
        ({"margin": 0.1}, "margin"),  # not below the default window
        ({"window": 0.2, "margin": 0.3}, "margin"),
    ):
        with pytest.raises(ConfigError, match=rf"^ofa\.specialize\.{name}: "):
            SpecializeConfig.from_options("ofa.specialize", **options)
    cfg = SpecializeConfig.from_options(refine_rounds=5, window=0.2, margin=0.1)
    assert (cfg.refine_rounds, cfg.window, cfg.margin) == (5, 0.2, 0.1)
    assert SpecializeConfig().refine_rounds == 5
    space, predictor = small
    for bad in (float("nan"), 0.0, -1.0):

        def broken(arch: Arch, value: float = bad) -> float:
            return value

        with pytest.raises(NasforgeError, match="measure_ms"):
            specialize(space, predictor, flops_ms(space), 1.0, cfg, broken)


def test_refinement_prefers_inside_the_window_among_accuracies_the_predictor_cannot_tell_apart(
    small: tuple[MobileSpace, AccuracyPredictor],
) -> None:
    """Round 1 finds a fast arch with a slightly higher predicted accuracy, measured below
    the window; round 2 one measured inside with an accuracy within the tolerance: with the
    tolerance the inside one is chosen, without it the more accurate fast one."""
    from dataclasses import dataclass as _dc

    from nasforge.oneshot.ofa.refine import refine_limit

    space, _ = small
    rng = np.random.default_rng(3)
    a1, a2 = space.sample(rng), space.sample(rng)
    while a2.key == a1.key:
        a2 = space.sample(rng)

    @_dc
    class Cand:
        arch: Arch
        predicted_latency_ms: float
        predicted_acc: float

    fast, near = Cand(a1, 0.95, 0.900), Cand(a2, 1.20, 0.895)
    measured = {a1.key: 0.60, a2.key: 0.95}  # target 1.0: a1 below the window, a2 inside

    def search(limit: float) -> Cand:
        return fast if limit <= 0.96 else near

    for tol, want in ((0.01, a2.key), (0.0, a1.key)):
        out = refine_limit(search, lambda a: measured[a.key], 1.0, 0.05, 0.10, 3, tolerance=tol)
        assert [r.arch_key for r in out.rounds] == [a1.key, a2.key]
        assert out.chosen.arch.key == want and out.feasible
    with pytest.raises(ValueError):
        refine_limit(search, lambda a: measured[a.key], 1.0, 0.05, 0.10, 3, tolerance=-1.0)
