"""OFA specialisation: config checks, the seeded subnet sample, the accuracy predictor's fit and
its honest cross-validated report, and the predictor-scored search under a hard latency limit
(from a small latency table measured on the torch backend, and from a plain callable) or a
weighted product.

The accuracy of an arch is a deterministic stand-in function here (training is not what these
tests check); the product feeds inherited validation accuracies. Speed is in benchmarks/ofa.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nasforge.errors import ConfigError, NasforgeError, SpaceError
from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.timing import TimingConfig
from nasforge.oneshot.ofa.specialize import (
    AccuracyPredictor,
    SpecializeConfig,
    Specialized,
    extreme_arch,
    sample_subnets,
    specialize,
)
from nasforge.oneshot.ranking import kendall_tau
from nasforge.space import Arch, SearchSpace
from nasforge.spaces.mobile import MobileSpace
from nasforge.strategies import STRATEGIES, Constraint, Strategy, register_strategy

FAST = TimingConfig(warmup=2, repeats=6, rounds=3)


def tiny_space() -> MobileSpace:
    """80 archs: few enough that a search exhausts them (its optimum is then known)."""
    return MobileSpace(
        (1, 16),
        4,
        stages=((8, 1, 1), (16, 2, 2)),
        kernels=(3, 7),
        expands=(1, 6),
        widths=(1.0,),
        activations=("relu",),
        se=(False,),
    )


def small_space() -> MobileSpace:
    """Tens of thousands of archs, every elastic kind of choice (no search exhausts it)."""
    return MobileSpace(
        (1, 24),
        4,
        stages=((8, 1, 2), (16, 2, 3)),
        kernels=(3, 5, 7),
        expands=(1, 3, 6),
        widths=(0.5, 1.0),
        activations=("relu", "hswish"),
        se=(False, True),
    )


def all_archs(space: SearchSpace, n: int) -> list[Arch]:
    rng = np.random.default_rng(0)
    seen: dict[str, Arch] = {}
    for _ in range(50 * n):
        arch = space.sample(rng)
        seen.setdefault(arch.key, arch)
    assert len(seen) == n
    return list(seen.values())


def stand_in_accuracy(space: MobileSpace) -> Callable[[Arch], float]:
    """Deterministic, smooth in the arch's capacity, no ties (an irrational tie-breaker)."""
    weights = np.sqrt(np.arange(2, space.encoding_size + 2)) % 1.0

    def accuracy(arch: Arch) -> float:
        cap = sum(np.log1p(b.expand * b.out_ch * b.kernel / 50) for b in space.blocks(arch))
        return float(0.9 - 0.5 * np.exp(-cap / 6) + 0.01 * space.encode(arch) @ weights)

    return accuracy


def flops_ms(space: MobileSpace) -> Callable[[Arch], float]:
    """A plain latency callable: multiply-adds of the blocks, scaled to milliseconds."""

    def latency(arch: Arch) -> float:
        return 1e-3 * sum(
            b.in_ch * b.expand * (b.in_ch + b.kernel + b.out_ch) for b in space.blocks(arch)
        )

    return latency


@pytest.fixture(scope="module")
def tiny() -> tuple[MobileSpace, AccuracyPredictor, LatencyPredictor, list[Arch]]:
    """The tiny space, a predictor fitted on 40 of its archs, a REAL measured latency table."""
    space = tiny_space()
    samples = sample_subnets(space, stand_in_accuracy(space), 40, seed=0)
    predictor = AccuracyPredictor.fit(space, samples, "mlp", seed=0)
    config = BuildConfig(calibration_archs=3, held_out_archs=2, timing=FAST)
    table = TableBuilder(space, "torch", 1, config, progress=False).build()
    return space, predictor, LatencyPredictor(table, space), all_archs(space, 80)


@pytest.fixture(scope="module")
def small() -> tuple[MobileSpace, AccuracyPredictor]:
    space = small_space()
    samples = sample_subnets(space, stand_in_accuracy(space), 60, seed=0)
    return space, AccuracyPredictor.fit(space, samples, "mlp", seed=0)


# -- config --------------------------------------------------------------------------------------
def test_config_defaults() -> None:
    cfg = SpecializeConfig.from_options()
    assert (cfg.samples, cfg.predictor, cfg.strategy, cfg.evaluations) == (
        150,
        "mlp",
        "evolution",
        3000,
    )
    assert (cfg.objective, cfg.w, cfg.seed) == ("limit", -0.07, 0)
    with pytest.raises(ValueError):
        cfg.samples = 3  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    "options, field",
    [
        ({"samples": 9}, "samples"),
        ({"predictor": "forest"}, "predictor"),
        ({"objective": "soft"}, "objective"),
        ({"w": 0.5}, "w"),
        ({"evaluations": 0}, "evaluations"),
        ({"strategy": " "}, "strategy"),
        ({"evalutions": 10}, "evalutions"),
    ],
)
def test_bad_options_name_the_field(options: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^ofa\.specialize\.{field}: "):
        SpecializeConfig.from_options("ofa.specialize", **options)


def test_unknown_strategy_and_bad_strategy_options_are_named(
    small: tuple[MobileSpace, AccuracyPredictor],
) -> None:
    space, predictor = small
    with pytest.raises(ConfigError, match=r"ofa\.specialize\.strategy: .*'evolutoin'.*evolution"):
        specialize(space, predictor, flops_ms(space), 1.0, SpecializeConfig(strategy="evolutoin"))
    cfg = SpecializeConfig(strategy_options={"population": 1})
    with pytest.raises(ConfigError, match=r"ofa\.specialize\.strategy_options: .*population"):
        specialize(space, predictor, flops_ms(space), 1.0, cfg)
    with pytest.raises(ConfigError, match="target_ms"):
        specialize(space, predictor, flops_ms(space), 0.0, SpecializeConfig())
    with pytest.raises(ConfigError, match="encod"):
        specialize(tiny_space(), predictor, flops_ms(space), 1.0, SpecializeConfig())


# -- the sample ----------------------------------------------------------------------------------
def test_extreme_archs_of_the_mobile_space() -> None:
    space = small_space()
    big, little = extreme_arch(space, True), extreme_arch(space, False)
    assert big["stage1/depth"] == 3 and little["stage1/depth"] == 1
    assert big["stage0/width"] == 1.0 and little["stage0/width"] == 0.5
    assert {big[f"stage1/block{j}/kernel"] for j in range(3)} == {7}
    assert {big[f"stage1/block{j}/expand"] for j in range(3)} == {6}
    assert big["stage1/block2/se"] is True and little["stage1/block0/se"] is False
    assert big["stage0/block0/act"] == "relu"  # the space's first activation
    assert little["stage0/block0/kernel"] == 3 and little["stage0/block0/expand"] == 1
    lat = flops_ms(space)
    samples = [space.sample(np.random.default_rng(s)) for s in range(50)]
    assert all(lat(little) <= lat(a) <= lat(big) for a in samples)


def test_sample_subnets_is_seeded_distinct_and_includes_the_extremes() -> None:
    space = small_space()
    calls: list[str] = []
    done: list[tuple[int, int]] = []

    def accuracy(arch: Arch) -> float:
        calls.append(arch.key)
        return stand_in_accuracy(space)(arch)

    got = sample_subnets(space, accuracy, 30, seed=3, progress=lambda i, n: done.append((i, n)))
    keys = [a.key for a, _ in got]
    assert len(got) == 30 and len(set(keys)) == 30
    assert keys == calls  # accuracy called once per arch, in the returned order
    assert done == [(i, 30) for i in range(1, 31)]
    assert got[0][0] == extreme_arch(space, True) and got[1][0] == extreme_arch(space, False)
    assert all(acc == stand_in_accuracy(space)(a) for a, acc in got)
    again = sample_subnets(space, stand_in_accuracy(space), 30, seed=3)
    assert [a.key for a, _ in again] == keys
    other = sample_subnets(space, stand_in_accuracy(space), 30, seed=4)
    assert [a.key for a, _ in other][2:] != keys[2:]
    # a space smaller than n: every arch once
    assert len(sample_subnets(tiny_space(), lambda a: 0.5, 200, seed=0)) == 80


def test_sample_subnets_refuses_bad_input() -> None:
    space = small_space()
    with pytest.raises(ConfigError, match="samples"):
        sample_subnets(space, lambda a: 0.5, 1, seed=0)
    with pytest.raises(NasforgeError, match="accuracy of arch"):
        sample_subnets(space, lambda a: float("nan"), 5, seed=0)


# -- the accuracy predictor ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "gp"])
def test_predictor_fits_a_smooth_function_and_says_so(kind: str) -> None:
    space = small_space()
    w = np.random.default_rng(1).normal(size=space.encoding_size)

    def smooth(arch: Arch) -> float:
        z = float(space.encode(arch) @ w) / 4
        return 70.0 + 10.0 * np.tanh(z) + 2.0 * np.sin(z)

    samples = sample_subnets(space, smooth, 80, seed=0)
    pred = AccuracyPredictor.fit(space, samples, kind, seed=0)
    assert pred.kind == kind and pred.n_samples == 80 and pred.folds == 5
    assert pred.cv_kendall_tau > 0.75
    spread = float(np.std([acc for _, acc in samples]))
    assert pred.cv_mae < 0.35 * spread
    rng = np.random.default_rng(9)
    fresh = [space.sample(rng) for _ in range(100)]
    got = pred.predict(fresh)
    truth = [smooth(a) for a in fresh]
    assert got.shape == (100,)
    assert kendall_tau(list(got), truth) > 0.75  # the report's tau is what unseen archs get
    assert float(np.abs(got - truth).mean()) < 0.35 * spread  # in the samples' units
    assert json.loads(json.dumps(pred.summary()))["cv_kendall_tau"] == pred.cv_kendall_tau


def test_predictor_fitted_on_noise_reports_that_it_cannot_rank() -> None:
    space = small_space()
    noise = np.random.default_rng(5).normal(size=60)
    archs = [a for a, _ in sample_subnets(space, lambda a: 0.0, 60, seed=0)]
    pred = AccuracyPredictor.fit(space, list(zip(archs, noise)), "mlp", seed=0)
    assert abs(pred.cv_kendall_tau) < 0.3
    assert pred.cv_mae > 0.5 * float(np.std(noise))


def test_predictor_refuses_bad_input() -> None:
    space = small_space()
    samples = sample_subnets(space, stand_in_accuracy(space), 12, seed=0)
    with pytest.raises(ConfigError, match=r"ofa\.specialize\.predictor"):
        AccuracyPredictor.fit(space, samples, "forest")
    with pytest.raises(ConfigError, match=r"ofa\.specialize\.samples: 6 samples"):
        AccuracyPredictor.fit(space, samples[:6], "mlp")
    with pytest.raises(NasforgeError, match="sample 3"):
        bad = [(a, float("inf") if i == 3 else 0.5) for i, (a, _) in enumerate(samples)]
        AccuracyPredictor.fit(space, bad, "mlp")
    with pytest.raises(SpaceError, match="stage9"):
        AccuracyPredictor.fit(space, [({"stage9/depth": 1}, 0.5)] * 12, "mlp")


# -- the search ----------------------------------------------------------------------------------
def exhaustive_best(archs: list[Arch], score: np.ndarray, ok: np.ndarray) -> Arch:
    i = int(np.flatnonzero(ok)[np.argmax(score[ok])])
    return archs[i]


def test_hard_limit_from_a_measured_table_is_respected_and_optimal(
    tiny: tuple[MobileSpace, AccuracyPredictor, LatencyPredictor, list[Arch]],
) -> None:
    """Every target: the arch is within the limit, its latency is the table's prediction,
    and (the 80 archs exhausted) it is the predicted-best arch within the limit; tighter
    limits never give a slower arch."""
    space, predictor, table_ms, archs = tiny
    lat = np.array([table_ms.predict(a) for a in archs])
    acc = predictor.predict(archs)
    cfg = SpecializeConfig(evaluations=500)
    results: list[Specialized] = []
    for q in (90, 60, 30, 5):
        target = float(np.percentile(lat, q))
        got = specialize(space, predictor, table_ms.predict, target, cfg)
        assert got.feasible and got.objective == "limit" and got.target_ms == target
        assert got.predicted_latency_ms <= target
        assert got.predicted_latency_ms == table_ms.predict(got.arch)
        assert got.predicted_acc == pytest.approx(float(predictor.predict([got.arch])[0]))
        assert got.arch == exhaustive_best(archs, acc, lat <= target)
        assert got.evaluations <= 80 + 2
        assert len(got.history) == got.evaluations
        assert got.history[-1] == got.score == got.predicted_acc
        results.append(got)
    for looser, tighter in zip(results, results[1:]):
        assert tighter.predicted_latency_ms <= looser.predicted_latency_ms
        assert tighter.predicted_acc <= looser.predicted_acc


def test_hard_limit_with_a_plain_callable_on_a_large_space(
    small: tuple[MobileSpace, AccuracyPredictor],
) -> None:
    space, predictor = small
    base = flops_ms(space)
    calls: dict[str, int] = {}

    def latency(arch: Arch) -> float:
        calls[arch.key] = calls.get(arch.key, 0) + 1
        return base(arch)

    rng = np.random.default_rng(2)
    lats = [base(space.sample(rng)) for _ in range(300)]
    target = float(np.percentile(lats, 20))
    got = specialize(space, predictor, latency, target, SpecializeConfig(evaluations=400))
    assert got.feasible and got.predicted_latency_ms <= target
    assert got.predicted_latency_ms == base(got.arch)
    assert got.evaluations == 400  # the largest and the smallest arch among them
    assert max(calls.values()) == 1  # one latency call per distinct arch
    # better than what the predictor says of 300 random archs within the limit
    rand = [space.sample(rng) for _ in range(300)]
    ok = [a for a in rand if base(a) <= target]
    assert got.predicted_acc >= float(predictor.predict(ok).max())
    # history: best-so-far, never decreasing once an arch within the limit was scored
    hist = [h for h in got.history if h is not None]
    assert hist == sorted(hist) and hist[-1] == got.score


def test_weighted_objective_maximises_the_weighted_product(
    tiny: tuple[MobileSpace, AccuracyPredictor, LatencyPredictor, list[Arch]],
) -> None:
    space, predictor, table_ms, archs = tiny
    lat = np.array([table_ms.predict(a) for a in archs])
    acc = predictor.predict(archs)
    target = float(np.median(lat))
    everything = np.ones(len(archs), dtype=bool)
    got: dict[float, Specialized] = {}
    for w in (0.0, -0.07, -0.5):
        cfg = SpecializeConfig(objective="weighted", w=w, evaluations=500)
        got[w] = specialize(space, predictor, table_ms.predict, target, cfg)
        assert got[w].feasible and got[w].objective == "weighted"
        assert got[w].score == pytest.approx(
            got[w].predicted_acc * (got[w].predicted_latency_ms / target) ** w
        )
        weighted = acc * (lat / target) ** w
        assert got[w].arch == exhaustive_best(archs, weighted, everything)
    assert got[0.0].arch == archs[int(np.argmax(acc))]  # w = 0: accuracy alone
    # a stronger weight trades predicted accuracy for speed
    assert got[-0.5].predicted_latency_ms <= got[-0.07].predicted_latency_ms
    assert got[-0.07].predicted_latency_ms <= got[0.0].predicted_latency_ms


def test_unreachable_limit_reports_infeasible_and_the_fastest_arch(
    tiny: tuple[MobileSpace, AccuracyPredictor, LatencyPredictor, list[Arch]],
    small: tuple[MobileSpace, AccuracyPredictor],
) -> None:
    space, predictor, table_ms, archs = tiny
    fastest = min(table_ms.predict(a) for a in archs)
    got = specialize(space, predictor, table_ms.predict, fastest / 2, SpecializeConfig())
    assert not got.feasible
    assert got.predicted_latency_ms == fastest > got.target_ms
    assert all(h is None for h in got.history)
    assert got.evaluations < 100  # stopped, not 3000 evaluations of nothing
    space2, predictor2 = small
    got2 = specialize(space2, predictor2, flops_ms(space2), 1e-9, SpecializeConfig())
    assert not got2.feasible and got2.arch == extreme_arch(space2, False)  # scored first


def test_same_seed_same_result_and_json_record(
    small: tuple[MobileSpace, AccuracyPredictor],
) -> None:
    space, predictor = small
    lat = flops_ms(space)
    target = lat(extreme_arch(space, True)) / 3
    cfg = SpecializeConfig(evaluations=300, seed=4)
    a = specialize(space, predictor, lat, target, cfg)
    b = specialize(space, predictor, lat, target, cfg)
    assert a.arch == b.arch and a.history == b.history and a.evaluations == b.evaluations
    assert (a.predicted_acc, a.predicted_latency_ms) == (b.predicted_acc, b.predicted_latency_ms)
    record = json.loads(json.dumps(a.to_dict()))
    assert record["arch"] == a.arch.to_dict() and record["arch_key"] == a.arch.key
    assert space.make(record["arch"]) == a.arch
    assert record["strategy"] == "evolution" and record["feasible"] is True


class _UniformToy(Strategy):
    """A toy strategy from outside the package: uniform samples, counting its asks."""

    name = "h4_toy"
    asks = 0

    def _propose(self) -> Arch:
        type(self).asks += 1
        return self.space.sample(self.rng)


def _toy(
    space: SearchSpace, *, seed: int, constraint: Constraint | None, **options: Any
) -> Strategy:
    return _UniformToy(space, seed, constraint)


@pytest.mark.parametrize("name", ["h4_toy", "local", "predictor"])
def test_any_registered_strategy_searches(
    name: str, small: tuple[MobileSpace, AccuracyPredictor], tmp_path: Path
) -> None:
    space, predictor = small
    register_strategy("h4_toy", _toy)
    try:
        lat = flops_ms(space)
        target = lat(extreme_arch(space, True)) / 2
        options = {"surrogate": "gp", "warmup": 10} if name == "predictor" else {}
        cfg = SpecializeConfig(strategy=name, strategy_options=options, evaluations=30)
        got = specialize(space, predictor, lat, target, cfg)
        assert got.feasible and got.predicted_latency_ms <= target and got.strategy == name
        assert got.evaluations == 30
        if name == "h4_toy":
            assert _UniformToy.asks >= 28
    finally:
        STRATEGIES.pop("h4_toy", None)
