"""Latency tables: JSON round trip, foreign machines warn, rebuilds reuse entries, and the
table's prediction is checked against whole-model measurement on a chain of ops."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from nasforge.hardware import entries as entries_mod
from nasforge.hardware.table import LatencyTable, TableError, TableMismatchWarning, check_table
from nasforge.hardware.timing import TimingConfig, measure_models
from nasforge.spaces import create_space
from nasforge.spaces.mobile import MobileSpace

FAST = TimingConfig(warmup=2, repeats=6, rounds=3)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory: pytest.TempPathFactory) -> LatencyTable:
    space = create_space("nb201", (3, 8, 8), 10, C=4, N=1)
    path = tmp_path_factory.mktemp("tables") / "nb201.json"
    return LatencyTable.build(
        space,
        "torch",
        batch_size=1,
        path=path,
        space_options={"C": 4, "N": 1},
        calibration_archs=3,
        timing=FAST,
        progress=False,
    )


def test_build_measures_every_layer_and_calibrates(tiny_table: LatencyTable) -> None:
    space = tiny_table.make_space()
    from nasforge.hardware.layers import enumerate_layers

    assert set(tiny_table.entries) == {lay.key for lay in enumerate_layers(space)}
    assert all(e.min_ms > 0 and e.min_ms <= e.median_ms for e in tiny_table.entries.values())
    assert {"min/sum", "min/critical_path", "median/sum"} <= set(tiny_table.calibration)
    assert len(tiny_table.calibration_points) == 3
    assert tiny_table.fingerprint["threads"] == 1 and tiny_table.clock == "cpu"
    assert tiny_table.context == "isolated"
    assert tiny_table.predictor().predict(space.sample(np.random.default_rng(0))) > 0


def test_json_round_trip(tiny_table: LatencyTable, tmp_path: Path) -> None:
    p = tiny_table.save(tmp_path / "t.json")
    again = LatencyTable.load(p)
    assert again == tiny_table
    assert again.to_dict() == tiny_table.to_dict()


def test_table_from_another_machine_warns(tiny_table: LatencyTable, tmp_path: Path) -> None:
    d = tiny_table.to_dict()
    d["fingerprint"] = {**d["fingerprint"], "cpu_model": "Other CPU", "allocator": "tcmalloc"}
    p = tmp_path / "foreign.json"
    p.write_text(json.dumps(d))
    with pytest.warns(TableMismatchWarning) as caught:
        LatencyTable.load(p)
    assert {str(w.message).split(": ")[-2] for w in caught} >= {"cpu_model", "allocator"}
    msgs = check_table(p)
    assert any("cpu_model" in m for m in msgs) and any("allocator" in m for m in msgs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_table(tiny_table.path) == []


def test_check_table_names_setting_mismatches(tiny_table: LatencyTable) -> None:
    space = create_space("nb201", (3, 8, 8), 10, C=8, N=1)
    msgs = check_table(tiny_table.path, space=space, backend="onnxruntime", batch_size=4, threads=2)
    text = "\n".join(msgs)
    for needle in ("backend torch", "batch size 1", "1 thread(s)", "not in the table"):
        assert needle in text


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "not found"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": 1, "space": {}}', "not a latency table"),
        ('{"format": 99}', "format 99"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, content: str | None, needle: str) -> None:
    p = tmp_path / "bad.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(TableError, match=needle) as info:
        LatencyTable.load(p)
    assert str(p) in str(info.value)
    assert needle in check_table(p)[0]


def test_rebuild_reuses_measured_entries(
    tiny_table: LatencyTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(layers, *args, **kwargs):
        if layers:
            raise AssertionError(f"re-measured {len(layers)} layers")
        return []

    monkeypatch.setattr("nasforge.hardware.table.measure_entries", refuse)
    space = tiny_table.make_space()
    again = LatencyTable.build(
        space,
        "torch",
        path=tiny_table.path,
        space_options={"C": 4, "N": 1},
        calibration_archs=3,
        timing=FAST,
        progress=False,
    )
    assert again.entries == tiny_table.entries
    assert again.calibration == tiny_table.calibration


def test_partial_table_measures_only_what_is_missing(
    tiny_table: LatencyTable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tiny_table.to_dict()
    dropped = sorted(d["entries"])[:2]
    for k in dropped:
        del d["entries"][k]
    p = tmp_path / "partial.json"
    p.write_text(json.dumps(d))
    seen: list[str] = []
    real = entries_mod.measure_entries

    def spy(layers, *args, **kwargs):
        seen.extend(lay.key for lay in layers)
        return real(layers, *args, **kwargs)

    monkeypatch.setattr("nasforge.hardware.table.measure_entries", spy)
    LatencyTable.build(
        tiny_table.make_space(),
        "torch",
        path=p,
        space_options={"C": 4, "N": 1},
        calibration_archs=0,
        timing=FAST,
        progress=False,
    )
    assert sorted(seen) == dropped


@pytest.mark.slow  # asserts timing accuracy: a loaded host may fail it
def test_predicted_sum_of_a_chain_tracks_whole_model_measurement() -> None:
    """Differential: a chain of inverted-residual blocks, table sum vs measured whole model.

    Tolerance: the uncalibrated sum (per-call overhead counted once) is within 40% of the
    measured minimum and ranks clearly different models as measured does; after the
    per-network calibration on 4 other archs it is within 20%. (Typical on a busy 2-core host:
    10-25% and 2-8%.)
    """
    space = MobileSpace(
        (3, 16, 16),
        10,
        stages=((8, 1, 2), (16, 2, 2)),
        kernels=(3, 7),
        expands=(1, 6),
        widths=(1.0,),
        activations=("relu",),
        se=(False,),
    )
    table = LatencyTable.build(
        space,
        "torch",
        calibration_archs=4,
        progress=False,
        timing=TimingConfig(warmup=2, repeats=9, rounds=3),
    )
    rng = np.random.default_rng(42)
    archs = [space.sample(rng) for _ in range(6)]
    measured = np.array(
        [
            m.min_ms
            for m in measure_models(
                [space.build(a) for a in archs],
                (3, 16, 16),
                1,
                table.backend,
                config=table.timing(TimingConfig(warmup=3, repeats=30, rounds=3)),
            )
        ]
    )
    raw = np.array([table.predictor(space, statistic="min").raw_ms(a)[0] for a in archs])
    calibrated = table.predictor(space, statistic="min").predict_many(archs)
    assert np.all(np.abs(raw - measured) / measured < 0.40), (raw, measured)
    assert np.all(np.abs(calibrated - measured) / measured < 0.20), (calibrated, measured)
    heavy, light = int(np.argmax(measured)), int(np.argmin(measured))
    if measured[heavy] > 1.3 * measured[light]:
        assert raw[heavy] > raw[light]
