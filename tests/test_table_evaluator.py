"""TableEvaluator: lookups equal the CSV rows, budgets, clear errors, the NB201 definition."""

from __future__ import annotations

import csv
import gzip
import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from nasforge.errors import ConfigError, DataError, NasforgeError
from nasforge.evaluators import Reporter, StopTrial, TableEvaluator, TableSpec
from nasforge.evaluators.table import BudgetExhausted, nb201_cifar10_spec
from nasforge.spaces.nb201 import NB201Space

ROWS = [
    # key, op_a, op_b, val, test, secs_per_epoch, lat_cpu, lat_gpu, mflops
    ("a|x", "x", "p", "80.5", "79.0", "10", "3.0", "1.0", "5"),
    ("a|y", "x", "q", "90.25", "88.0", "20", "6.0", "", "7"),
    ("b|x", "y", "p", "85.0", "86.5", "15", "2.0", "0.5", "6"),
    ("b|y", "y", "q", "70.0", "71.0", "5", "1.0", "0.2", "3"),
]
HEADER = ("key", "op_a", "op_b", "val", "test", "secs", "lat_ms_cpu", "lat_ms_gpu", "mflops")


def _write(
    path: Path, rows: Sequence[tuple[str, ...]] = ROWS, header: tuple[str, ...] = HEADER
) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _spec(path: Path, **changes: object) -> TableSpec:
    fields: dict[str, object] = {
        "path": path,
        "key_column": "key",
        "op_columns": {"a": "op_a", "b": "op_b"},
        "signal_column": "val",
        "reported_column": "test",
        "cost_column": "secs",
        "cost_multiplier": 12.0,
        "hardware_columns": {"lat_ms_cpu": "lat_ms_cpu", "lat_ms_gpu": "lat_ms_gpu"},
        "latency_column": "lat_ms_cpu",
        "extra_columns": [("mflops", "flops", 1e6)],
        "name": "toy",
    }
    fields.update(changes)
    return TableSpec(**fields)  # type: ignore[arg-type]


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return _write(tmp_path / "toy.csv.gz")


def test_lookup_equals_the_row(toy: Path) -> None:
    ev = TableEvaluator(_spec(toy))
    res = ev.evaluate({"a": "x", "b": "q"})
    assert res.metrics == {
        "val_acc": 90.25,
        "test_acc": 88.0,
        "latency_ms": 6.0,
        "lat_ms_cpu": 6.0,
        "flops": 7e6,
    }  # the empty GPU cell is left out
    assert res.cost_seconds == pytest.approx(20 * 12.0)
    assert res.info["row"] == 1
    assert ev.evaluate("b|x").metrics["test_acc"] == 86.5
    assert ev.lookup(" b|y ") == ev.metrics_at(3)
    assert ev.queries == 2 and ev.spent_seconds == pytest.approx((20 + 15) * 12.0)
    assert len(ev) == 4


def test_plain_csv_and_string_only_key_with_arch_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "plain.csv")
    ev = TableEvaluator(
        _spec(path, op_columns=(), signal_metric="score"),
        arch_key=lambda arch: f"{arch['a']}|{arch['b']}",
    )
    assert ev.evaluate({"a": "b", "b": "x"}).metrics["score"] == 85.0
    with pytest.raises(ConfigError, match="needs arch_key"):
        TableEvaluator(_spec(path, op_columns=())).evaluate({"a": "b", "b": "x"})


def test_query_budget(toy: Path) -> None:
    ev = TableEvaluator(_spec(toy), max_queries=3)
    for _ in range(3):
        ev.evaluate({"a": "x", "b": "p"})
    assert ev.remaining_queries == 0
    with pytest.raises(BudgetExhausted, match="query budget of 3"):
        ev.evaluate({"a": "x", "b": "p"})
    assert ev.queries == 3
    ev.reset()
    assert ev.evaluate({"a": "x", "b": "p"}).metrics["val_acc"] == 80.5


def test_time_budget_answers_the_crossing_query(toy: Path) -> None:
    ev = TableEvaluator(_spec(toy), max_seconds=300.0)  # each query below costs 120 s
    ev.evaluate("a|x")
    ev.evaluate("a|x")
    assert ev.remaining_seconds == pytest.approx(60.0)
    ev.evaluate("a|x")  # crosses 300 s: still answered, as in NB201's protocol
    with pytest.raises(BudgetExhausted, match="simulated time budget of 300 s"):
        ev.evaluate("a|x")
    assert ev.queries == 3 and ev.spent_seconds == pytest.approx(360.0)


def test_unknown_arch_is_a_clear_error_and_costs_nothing(toy: Path) -> None:
    ev = TableEvaluator(_spec(toy))
    with pytest.raises(NasforgeError, match="no row with a=z, b=p") as info:
        ev.evaluate({"a": "z", "b": "p"})
    assert not isinstance(info.value, KeyError)
    with pytest.raises(NasforgeError, match="arch has no label 'b'"):
        ev.evaluate({"a": "x"})
    with pytest.raises(NasforgeError, match="'c|x' is not in column 'key'"):
        ev.evaluate("c|x")
    assert ev.queries == 0 and ev.spent_seconds == 0.0


def test_missing_column_names_the_field(toy: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"table.signal_column: column 'valid' not in .*available: key"
    ):
        TableEvaluator(_spec(toy, signal_column="valid"))
    with pytest.raises(ConfigError, match=r"op_columns\['b'\]: column 'op_c'"):
        TableEvaluator(_spec(toy, op_columns={"a": "op_a", "b": "op_c"}))
    with pytest.raises(ConfigError, match="hardware_columns: column 'lat_ms_tpu'"):
        TableEvaluator(_spec(toy, hardware_columns={"lat_ms_tpu": "lat_ms_tpu"}))


def test_spec_round_trips_through_json(toy: Path) -> None:
    import json

    spec = _spec(toy)
    again = TableSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and hash(again) == hash(spec)
    assert again.op_columns == (("a", "op_a"), ("b", "op_b"))
    with pytest.raises(ConfigError, match="unknown field.*'signal'"):
        TableSpec.from_dict({**spec.to_dict(), "signal": "val"})
    with pytest.raises(ConfigError, match="missing field.*signal_column"):
        TableSpec.from_dict({"path": str(toy), "key_column": "key"})


def test_bad_specs_and_files(tmp_path: Path, toy: Path) -> None:
    with pytest.raises(ConfigError, match="key_column .* or op_columns"):
        _spec(toy, key_column=None, op_columns=())
    with pytest.raises(ConfigError, match="cost_multiplier"):
        _spec(toy, cost_multiplier=-1.0)
    with pytest.raises(ConfigError, match=r"\['lat_ms_cpu'\] are produced by more than one"):
        _spec(toy, hardware_columns={"lat_ms_cpu": "lat_ms_cpu", "lat_ms_gpu": "lat_ms_cpu"})
    with pytest.raises(DataError, match="nope.csv does not exist"):
        TableEvaluator(_spec(tmp_path / "nope.csv"))
    bad = _write(tmp_path / "bad.csv", rows=[("a|x", "x", "p", "80", "79", "10", "fast", "1", "5")])
    with pytest.raises(DataError, match="column 'lat_ms_cpu' row 1 holds 'fast'"):
        TableEvaluator(_spec(bad))
    dup = _write(tmp_path / "dup.csv", rows=[ROWS[0], ROWS[0]])
    with pytest.raises(DataError, match="rows 1 and 2 share the key"):
        TableEvaluator(_spec(dup))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("key,val\na|x,1,2\n")
    with pytest.raises(DataError, match="line 2 has 3 fields"):
        TableEvaluator(TableSpec(path=ragged, key_column="key", signal_column="val"))


def test_arrays_and_oracle(toy: Path) -> None:
    ev = TableEvaluator(_spec(toy))
    arrays = ev.arrays()
    np.testing.assert_array_equal(arrays["val_acc"], [80.5, 90.25, 85.0, 70.0])
    np.testing.assert_array_equal(arrays["cost_seconds"], [120.0, 240.0, 180.0, 60.0])
    assert math.isnan(arrays["lat_ms_gpu"][1])
    with pytest.raises(ValueError):
        arrays["val_acc"][0] = 0.0  # read-only: the cache is shared
    assert ev.oracle().key == "a|y"
    best = ev.oracle(limit=3.0)
    assert (best.row, best.key, best.metrics["test_acc"]) == (2, "b|x", 86.5)
    assert ev.oracle("test_acc", limit=0.3, limit_metric="lat_ms_gpu").key == "b|y"
    with pytest.raises(NasforgeError, match="no row has latency_ms <= 0.5"):
        ev.oracle(limit=0.5)
    with pytest.raises(ConfigError, match="unknown metric 'acc'"):
        ev.oracle("acc")
    assert ev.keys() == ["a|x", "a|y", "b|x", "b|y"]
    assert ev.arch_values(3) == {"a": "y", "b": "q"}
    assert ev.queries == 0


def test_reporter_and_pickling(toy: Path) -> None:
    class Stopper(Reporter):
        def __call__(self, step: int, metrics: dict[str, float]) -> None:
            super().__call__(step, metrics)
            raise StopTrial

    ev = TableEvaluator(_spec(toy), max_queries=5)
    rep = Stopper()
    assert ev.evaluate("a|y", reporter=rep).metrics["val_acc"] == 90.25
    assert rep.values == [(12, {"val_acc": 90.25})]
    blob = pickle.dumps(ev)
    assert len(blob) < 4000  # the table itself is not shipped
    clone = pickle.loads(blob)
    assert clone.queries == 1 and clone.max_queries == 5
    assert clone.evaluate("b|y").metrics == ev.lookup("b|y")


# -- the shared NAS-Bench-201 table -----------------------------------------------------------
def test_nb201_lookup_equals_the_csv(nb201_csv: Path) -> None:
    with gzip.open(nb201_csv, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    space = NB201Space()
    ev = TableEvaluator(nb201_cifar10_spec(nb201_csv, device="raspi4"))
    rng = np.random.default_rng(0)
    for i in rng.choice(len(rows), size=300, replace=False):
        row = rows[int(i)]
        res = ev.evaluate(space.from_string(row["arch_str"]))
        assert res.info["row"] == int(i)
        assert res.metrics["val_acc"] == float(row["c10_valid_acc_200"])
        assert res.metrics["test_acc"] == float(row["c10_test_acc_200"])
        assert res.metrics["latency_ms"] == float(row["lat_ms_raspi4"])
        assert res.metrics["lat_ms_pixel3"] == float(row["lat_ms_pixel3"])
        assert res.metrics["params"] == pytest.approx(float(row["c10_params_MB"]) * 1e6)
        assert res.metrics["flops"] == pytest.approx(2e6 * float(row["c10_flops_M"]))
        assert res.cost_seconds == pytest.approx(200 * float(row["c10_train_time_per_epoch_s"]))
        assert ev.row_of(row["arch_str"]) == int(i)
    assert ev.queries == 300


def test_nb201_every_row_is_found_by_labels_and_by_string(nb201_csv: Path) -> None:
    ev = TableEvaluator(nb201_cifar10_spec(nb201_csv))
    keys = ev.keys()
    assert len(keys) == 15625
    space = NB201Space()
    for i in range(0, 15625, 7):
        assert ev.row_of(ev.arch_values(i)) == i
        assert space.to_string(space.make(ev.arch_values(i))) == keys[i]
        assert ev.row_of(keys[i]) == i


def test_nb201_oracle_matches_the_readme(nb201_csv: Path) -> None:
    ev = TableEvaluator(nb201_cifar10_spec(nb201_csv, epochs=12))
    best = ev.oracle()
    assert best.row == 6111 and best.metrics["val_acc"] == 91.6067
    assert best.metrics["test_acc"] == 94.3733
    fast = ev.oracle(limit=5.0)
    assert fast.metrics["latency_ms"] <= 5.0 and fast.metrics["val_acc"] < 91.6067
    assert ev.evaluate(best.key or "").cost_seconds == ev.arrays()["cost_seconds"][6111]
    full = TableEvaluator(nb201_cifar10_spec(nb201_csv))  # 200 epochs by default
    np.testing.assert_allclose(
        ev.arrays()["cost_seconds"] * 200 / 12, full.arrays()["cost_seconds"]
    )


def test_nb201_spec_defaults_and_errors(
    nb201_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NASFORGE_SHARED_DATA", str(nb201_csv.parents[1]))
    assert nb201_cifar10_spec().path == nb201_csv
    assert nb201_cifar10_spec(device=None).latency_column is None
    monkeypatch.setenv("NASFORGE_SHARED_DATA", str(tmp_path))
    missing = tmp_path / "nas-bench-201" / "nb201_cifar10.csv.gz"
    with pytest.raises(DataError, match=str(missing)):
        nb201_cifar10_spec()
    # devices are the file's lat_ms_<device> columns, listed when one is missing
    with pytest.raises(
        ConfigError, match=r"table.device: 'tpu' has no column 'lat_ms_tpu' .*1080ti_1, .*eyeriss"
    ):
        nb201_cifar10_spec(nb201_csv, device="tpu")
    with pytest.raises(ConfigError, match="did you mean 'pixel3'"):
        nb201_cifar10_spec(nb201_csv, device="pixl3")
