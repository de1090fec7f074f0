"""The learned correction on top of a table's sum: the fit recovers known per-kind scales, the
predictor applies it to the number, a build fills its held-out accuracy and noise verdict by
default, and tables written before these fields existed still load. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nasforge.hardware.backends import BackendSpec
from nasforge.hardware.builder import BuildConfig, TableBuilder, build_verdict
from nasforge.hardware.calibration import (
    MIN_IMPROVEMENT,
    Correction,
    Features,
    fit_calibration,
    fit_correction,
    layer_kind,
)
from nasforge.hardware.entries import TableEntry
from nasforge.hardware.predictor import LatencyPredictor, summed_layers
from nasforge.hardware.table import LatencyTable, check_table
from nasforge.hardware.timing import TimingConfig
from nasforge.space.plan import LayerSpec
from nasforge.spaces import create_space

FAST = TimingConfig(warmup=1, repeats=3, rounds=3)
OPTIONS = {"C": 4, "N": 1}
TRUE_SCALES = {"conv": 1.4, "pool": 0.7, "skip": 2.0}


def synthetic_points(n: int, seed: int, noise: float = 0.0) -> tuple[list[Features], np.ndarray]:
    """Models made of three kinds, measured as ``0.05 + sum_k scale_k * ms_k + 0.002 *
    layers`` (times ``1 + noise``)."""
    rng = np.random.default_rng(seed)
    feats, ys = [], []
    for _ in range(n):
        kinds = {k: float(rng.uniform(0.1, 2.0)) for k in TRUE_SCALES}
        layers = int(rng.integers(5, 30))
        overhead = 0.01
        feats.append(Features(overhead + sum(kinds.values()), kinds, layers))
        y = 0.05 + sum(TRUE_SCALES[k] * v for k, v in kinds.items()) + 0.002 * layers
        ys.append(y * (1 + noise * rng.standard_normal()))
    return feats, np.array(ys)


def test_correction_recovers_known_per_kind_scales() -> None:
    feats, y = synthetic_points(30, 0)
    held, yh = synthetic_points(10, 1)
    c = fit_correction(feats, y, held, yh)
    for kind, scale in TRUE_SCALES.items():
        assert c.kind_scale(kind) == pytest.approx(scale, abs=0.05)
    assert c.per_layer_ms == pytest.approx(0.002, abs=0.002)
    assert c.used  # the linear fit cannot model three scales: the correction beats it
    assert c.held_out_mape is not None and c.linear_held_out_mape is not None
    assert c.held_out_mape < c.linear_held_out_mape
    pred = np.array([c.apply(f) for f in held])
    assert np.max(np.abs(pred - yh) / yh) < 0.02


def test_correction_is_used_only_where_it_beats_the_linear_fit() -> None:
    # every kind at the same scale: the plain linear fit is the truth, noise on top
    rng = np.random.default_rng(3)
    feats, ys = [], []
    for _ in range(40):
        kinds = {k: float(rng.uniform(0.1, 2.0)) for k in TRUE_SCALES}
        raw = 0.01 + sum(kinds.values())
        feats.append(Features(raw, kinds, 10))
        ys.append((1.1 * raw + 0.02) * (1 + 0.03 * rng.standard_normal()))
    c = fit_correction(feats[:25], ys[:25], feats[25:], ys[25:])
    lin = fit_calibration([f.raw_ms for f in feats[:25]], ys[:25])
    pred_lin = np.array([lin.apply(f.raw_ms) for f in feats[25:]])
    lin_mape = float(np.mean(np.abs(pred_lin - ys[25:]) / ys[25:]) * 100)
    pred = np.array([c.apply(f) for f in feats[25:]])
    mape = float(np.mean(np.abs(pred - ys[25:]) / ys[25:]) * 100)
    assert c.linear_held_out_mape == pytest.approx(lin_mape)
    assert c.held_out_mape == pytest.approx(mape)
    assert c.cv_mape is not None and c.linear_cv_mape is not None
    cv_wins = c.cv_mape < MIN_IMPROVEMENT * c.linear_cv_mape
    assert c.used == (cv_wins and mape < MIN_IMPROVEMENT * lin_mape)
    assert c.reason.startswith("used" if c.used else "not used")
    # with too few held-out models the decision is by leave-one-out on the calibration set
    few = fit_correction(feats[:25], ys[:25], feats[25:28], ys[25:28])
    assert few.cv_mape is not None and few.linear_cv_mape is not None
    assert few.used == (few.cv_mape < MIN_IMPROVEMENT * few.linear_cv_mape)


def test_too_few_points_give_an_unused_identity() -> None:
    feats, y = synthetic_points(4, 0)
    c = fit_correction(feats, y)
    assert not c.used and c.points == 4 and c.apply(feats[0]) == feats[0].raw_ms


def test_layer_kind_groups_by_op_and_categorical_arguments() -> None:
    a = LayerSpec("mobile.ir", (16, 24, 3, 1, 6, "relu", True, 2), (16, 8, 8))
    b = LayerSpec("mobile.ir", (24, 24, 5, 2, 3, "relu", True, 2), (24, 8, 8))
    c = LayerSpec("mobile.ir", (24, 24, 5, 2, 3, "hswish", False, 2), (24, 8, 8))
    assert layer_kind(a) == layer_kind(b) == "mobile.ir[relu,True]"
    assert layer_kind(c) != layer_kind(a)
    assert layer_kind(LayerSpec("stem", (3, 16), (3, 8, 8))) == "stem"


def synthetic_table() -> LatencyTable:
    space = create_space("nb201", (3, 8, 8), 10, **OPTIONS)
    rng = np.random.default_rng(0)
    entries = {}
    for lay in space.all_layers():
        v = float(rng.uniform(0.01, 1.0))
        entries[lay.key] = TableEntry(v, 0.0, v, v, 30)
    return LatencyTable(
        space={"name": "nb201", "input_shape": [3, 8, 8], "num_classes": 10, "options": OPTIONS},
        backend=BackendSpec(),
        batch_size=1,
        fingerprint={},
        entries=entries,
        call_overhead_ms={"min": 0.004, "p10": 0.004, "median": 0.004},
    )


@pytest.mark.parametrize("mode", ["sum", "critical_path"])
def test_predictor_applies_the_correction_to_the_expected_number(mode: str) -> None:
    table = synthetic_table()
    space = table.make_space()
    kinds = sorted({layer_kind(s) for s in space.all_layers()})
    deltas = {k: 0.1 * (i - 2) for i, k in enumerate(kinds)}
    c = Correction(scale=1.2, intercept_ms=0.03, per_layer_ms=0.001, kind_delta=deltas, used=True)
    table.corrections[f"min/{mode}"] = c
    table.calibration[f"min/{mode}"] = fit_calibration([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    pred = LatencyPredictor(table, space, mode=mode)
    raw = LatencyPredictor(table, space, mode=mode, calibrated=False)
    assert pred.correction == c
    rng = np.random.default_rng(2)
    archs = [space.sample(rng) for _ in range(40)]
    for arch in archs + archs:  # the second round reads the memos
        # by hand: scale * raw aggregation + per layer (kind deviation * ms + per-layer ms)
        extra = 0.0
        for seg, rep in space.plan(arch):
            for spec in summed_layers(seg):
                extra += rep * (deltas[layer_kind(spec)] * raw.layer_ms(spec) + 0.001)
        agg = raw.raw_ms(arch)[0 if mode == "sum" else 1]
        want = 1.2 * agg + extra + 0.03
        assert pred.predict(arch) == pytest.approx(want, rel=1e-9)
        assert c.apply(raw.features(arch)) == pytest.approx(want, rel=1e-9)
    assert pred.predict_many(archs) == pytest.approx([pred.predict(a) for a in archs])
    # an unused correction, or asking for none, leaves the linear calibration (2x)
    linear = LatencyPredictor(table, space, mode=mode, correction=False)
    assert linear.predict(archs[0]) == pytest.approx(2 * raw.predict(archs[0]))
    table.corrections[f"min/{mode}"] = Correction(**{**c.to_dict(), "used": False})
    assert LatencyPredictor(table, space, mode=mode).predict(archs[0]) == pytest.approx(
        2 * raw.predict(archs[0])
    )


def test_correction_round_trips_through_the_table_json(tmp_path: Path) -> None:
    table = synthetic_table()
    table.corrections["min/sum"] = Correction(
        scale=1.1, kind_delta={"a": 0.2}, points=20, cv_mape=1.5, used=True
    )
    table.build_stability = {"stable": False, "reasons": ["busy"], "entries": 3}
    again = LatencyTable.load(table.save(tmp_path / "t.json"), warn=False)
    assert again.corrections == table.corrections
    assert again.build_stability == table.build_stability


def test_old_table_without_the_new_fields_loads(tmp_path: Path) -> None:
    table = synthetic_table()
    table.calibration["min/sum"] = fit_calibration([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    d = table.to_dict()
    d["format"] = 1
    for key in ("corrections", "held_out_points", "build_stability"):
        del d[key]
    d["entries"] = {k: v[:8] for k, v in d["entries"].items()}  # no "unstable" column
    p = tmp_path / "old.json"
    p.write_text(json.dumps(d))
    old = LatencyTable.load(p, warn=False)
    assert old.corrections == {} and old.build_stability == {} and old.held_out_points == []
    assert not any(e.unstable for e in old.entries.values())
    space = old.make_space()
    arch = space.sample(np.random.default_rng(0))
    raw = LatencyPredictor(old, space, calibrated=False).predict(arch)
    assert LatencyPredictor(old, space).predict(arch) == pytest.approx(2 * raw)


def test_build_verdict_counts_unstable_entries() -> None:
    quiet = [TableEntry(1.0, 0.0, 1.0, 1.0, 3)] * 8
    busy = [TableEntry(1.0, 0.0, 1.0, 1.0, 3, unstable=True)] * 4
    ok = build_verdict(quiet + busy[:1], [])
    assert ok["stable"] and ok["unstable_entries"] == 1 and ok["entries"] == 9
    bad = build_verdict(quiet + busy, [])
    assert not bad["stable"] and "4 of 12 entries" in bad["reasons"][0]


def test_default_build_scores_itself_on_held_out_models(tmp_path: Path) -> None:
    assert BuildConfig().held_out_archs > 0 and BuildConfig().calibration_archs >= 8
    space = create_space("nb201", (3, 8, 8), 10, **OPTIONS)
    config = BuildConfig(timing=FAST)  # default numbers of calibration and held-out models
    table = TableBuilder(space, "torch", 1, config, space_options=OPTIONS, progress=False).build(
        tmp_path / "t.json"
    )
    n_held = config.held_out_archs
    assert len(table.held_out_points) == n_held
    assert len(table.calibration_points) == config.calibration_archs
    for key in ("min/sum", "median/sum", "min/critical_path"):
        acc = table.accuracy[key]
        assert acc["n"] == n_held and 0.0 <= acc["within_10pct"] <= 1.0 and acc["mape"] >= 0
        assert table.corrections[key].points == config.calibration_archs
    v = table.build_stability
    assert set(v) >= {"stable", "reasons", "entries", "unstable_entries", "models"}
    assert v["entries"] == len(table.entries) and v["models"] == n_held + config.calibration_archs
    assert isinstance(v["stable"], bool) and v["stable"] == (not v["reasons"])
    # the accuracy is that of the predictor as it predicts from the finished table
    pred = LatencyPredictor(table, space, mode="sum", statistic="min")
    archs = [space.make(json.loads(p["arch"])["values"]) for p in table.held_out_points]
    y = np.array([p["measured_ms"]["min"] for p in table.held_out_points])
    err = np.abs(pred.predict_many(archs) - y) / y
    assert table.accuracy["min/sum"]["mape"] == pytest.approx(float(np.mean(err)) * 100)
    again = LatencyTable.load(table.path, warn=False)  # type: ignore[arg-type]
    assert again.corrections == table.corrections
    assert json.dumps(again.accuracy) == json.dumps(table.accuracy)


def test_check_table_names_a_build_on_a_busy_host(tmp_path: Path) -> None:
    table = synthetic_table()
    table.build_stability = {"stable": False, "reasons": ["3 of 4 entries measured busy"]}
    msgs = check_table(table.save(tmp_path / "t.json"))
    assert any("built while the host was busy (3 of 4 entries" in m for m in msgs)
    table.build_stability = {"stable": True, "reasons": []}
    assert not any("busy" in m for m in check_table(table.save(tmp_path / "t.json")))
