"""Table presets read the columns a file has; a separate latency file joins on the arch key."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Sequence
from pathlib import Path

import pytest

from nasforge.errors import ConfigError, DataError, RegistrationError
from nasforge.evaluators.table import (
    TableEvaluator,
    TablePreset,
    TableSpec,
    register_table_preset,
    spec_from_preset,
    table_spec_from_config,
)
from nasforge.spaces.nb201 import NB201Space

ARCH_A = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|skip_connect~2|"
ARCH_B = "|skip_connect~0|+|none~0|none~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def _write(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _nb201_like(tmp_path: Path) -> Path:
    """A two-row table in the NB201 layout, for CIFAR-100 ('c100') and a device 'jetson'."""
    space = NB201Space()
    header = [
        "arch_str",
        *(f"op_{d}_{s}" for d, s in ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))),
    ]
    header += ["c100_valid_acc_200", "c100_test_acc_200", "c100_train_time_per_epoch_s"]
    header += ["c100_flops_M", "lat_ms_jetson"]
    rows = []
    for text, val, lat in ((ARCH_A, 60.5, 4.0), (ARCH_B, 55.0, 9.0)):
        arch = space.from_string(text)
        ops = [arch[f"edge_{d}_{s}"] for d, s in ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))]
        rows.append([text, *ops, val, val - 1, 10.0, 50.0, lat])
    return _write(tmp_path / "nb201_c100.csv", header, rows)


def test_preset_reads_the_data_sets_and_devices_the_file_has(tmp_path: Path) -> None:
    path = _nb201_like(tmp_path)
    spec = spec_from_preset("nb201", path=path, device="jetson", epochs=12)
    assert spec.signal_column == "c100_valid_acc_200"  # the only data set in the file
    assert spec.reported_column == "c100_test_acc_200"
    assert spec.hardware_columns == (("lat_ms_jetson", "lat_ms_jetson"),)
    assert spec.extra_columns == (("c100_flops_M", "flops", 2e6),)  # no params column: left out
    ev = TableEvaluator(spec)
    res = ev.evaluate(NB201Space().from_string(ARCH_A))
    assert res.metrics == {
        "val_acc": 60.5,
        "test_acc": 59.5,
        "latency_ms": 4.0,
        "lat_ms_jetson": 4.0,
        "flops": 100e6,
    }
    assert res.cost_seconds == pytest.approx(120.0)
    # the default device (pixel3) is not in this file: no latency_ms unless one is chosen
    assert spec_from_preset("nb201", path=path).latency_column is None


def test_preset_errors_list_what_the_file_has(tmp_path: Path) -> None:
    path = _nb201_like(tmp_path)
    with pytest.raises(
        ConfigError, match=r"'jetsn' .*did you mean 'jetson'.*devices there: jetson"
    ):
        spec_from_preset("nb201", path=path, device="jetsn")
    with pytest.raises(ConfigError, match=r"table.dataset: 'c10' .*data sets there: c100"):
        spec_from_preset("nb201", path=path, dataset="c10")
    with pytest.raises(ConfigError, match=r"table.signal: column 'c100_valid' .*did you mean"):
        spec_from_preset("nb201", path=path, signal="c100_valid")
    with pytest.raises(
        ConfigError, match=r"unknown field\(s\) \['devise'\].*did you mean 'device'"
    ):
        table_spec_from_config({"preset": "nb201", "path": str(path), "devise": "jetson"})
    with pytest.raises(ConfigError, match=r"unknown preset 'nb210'; did you mean 'nb201'"):
        table_spec_from_config({"preset": "nb210"})
    with pytest.raises(ConfigError, match="give one of them"):
        spec_from_preset("nb201", path=path, device="jetson", latency_column="lat_ms_jetson")
    # explicit columns override the templates
    spec = spec_from_preset("nb201", path=path, signal="c100_test_acc_200", report=None)
    assert spec.signal_column == "c100_test_acc_200"


def test_latency_file_joined_on_the_arch_key(tmp_path: Path) -> None:
    path = _nb201_like(tmp_path)
    lat = _write(tmp_path / "lat.csv", ["arch", "lat_ms_mybox"], [[ARCH_B, 2.5], [ARCH_A, 1.5]])
    cfg = {
        "preset": "nb201",
        "path": str(path),
        "latency_path": str(lat),
        "latency_key": "arch",
        "device": "mybox",
    }
    spec = table_spec_from_config(cfg)
    ev = TableEvaluator(spec)
    assert ev.lookup(ARCH_A)["latency_ms"] == 1.5 and ev.lookup(ARCH_B)["lat_ms_mybox"] == 2.5
    assert ev.lookup(ARCH_A)["lat_ms_jetson"] == 4.0  # the main file's devices stay
    assert TableSpec.from_dict(spec.to_dict()) == spec


def test_latency_join_errors_name_the_file_and_column(tmp_path: Path) -> None:
    path = _nb201_like(tmp_path)
    base = {"preset": "nb201", "path": str(path), "latency_key": "arch", "device": None}

    def spec(
        rows: list[list[object]], header: Sequence[str] = ("arch", "lat_ms_x"), **more: object
    ):
        lat = _write(tmp_path / f"lat{len(list(tmp_path.iterdir()))}.csv", header, rows)
        return TableEvaluator(table_spec_from_config({**base, "latency_path": str(lat), **more}))

    with pytest.raises(DataError, match=r"lat\d+\.csv: no row for 1 of the 2 architectures"):
        spec([[ARCH_A, 1.0]])
    partial = spec([[ARCH_A, 1.0]], latency_partial=True)
    assert "lat_ms_x" not in partial.lookup(ARCH_B) and partial.lookup(ARCH_A)["lat_ms_x"] == 1.0
    with pytest.raises(DataError, match=r"rows 1 and 2 share the key .* in column\(s\) arch"):
        spec([[ARCH_A, 1.0], [ARCH_A, 2.0], [ARCH_B, 3.0]])
    with pytest.raises(
        DataError, match=r"key\(s\) in column\(s\) arch are not in column\(s\) arch_str"
    ):
        spec([[ARCH_A, 1.0], [ARCH_B, 2.0], ["|typo~0|", 3.0]])
    with pytest.raises(
        ConfigError, match=r"table.latency_key: column 'arch' not in .*did you mean"
    ):
        spec([[ARCH_A, 1.0], [ARCH_B, 2.0]], header=("arch_", "lat_ms_x"))
    with pytest.raises(DataError, match=r"column\(s\) \['lat_ms_jetson'\] are also in"):
        spec([[ARCH_A, 1.0], [ARCH_B, 2.0]], header=("arch", "lat_ms_jetson"))


def test_plain_spec_joins_on_op_columns_without_a_key(tmp_path: Path) -> None:
    acc = _write(tmp_path / "acc.csv", ["w1", "w2", "acc"], [[8, 16, 70.0], [16, 16, 75.0]])
    lat = _write(tmp_path / "lat.csv", ["w2", "w1", "ms"], [[16, 16, 3.0], [16, 8, 2.0]])
    spec = TableSpec(
        path=acc,
        op_columns=(("w1", "w1"), ("w2", "w2")),
        signal_column="acc",
        latency_path=lat,
        latency_column="ms",
    )
    ev = TableEvaluator(spec)
    assert ev.lookup({"w1": 8, "w2": 16}) == {"val_acc": 70.0, "latency_ms": 2.0}
    with pytest.raises(ConfigError, match="latency_key: joins on key_column"):
        TableSpec(
            path=acc,
            op_columns=(("w1", "w1"),),
            signal_column="acc",
            latency_path=lat,
            latency_key="w1",
        )
    with pytest.raises(ConfigError, match="need latency_path"):
        TableSpec(path=acc, op_columns=(("w1", "w1"),), signal_column="acc", latency_key="w1")


def test_a_preset_registered_from_outside(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mine.csv",
        ["net", "valid_top1", "ms_cpu", "ms_npu"],
        [["a", 70.0, 3.0, 1.0], ["b", 72.0, 5.0, 0.5]],
    )
    preset = TablePreset(
        name="my_bench",
        description="my benchmark",
        signal="valid_top1",
        key_column="net",
        latency_prefix="ms_",
        default_device="cpu",
    )
    register_table_preset(preset)
    register_table_preset(preset)  # a plugin loaded twice: equal, so fine
    with pytest.raises(RegistrationError, match="my_bench"):
        register_table_preset(TablePreset(name="my_bench", description="x", signal="other"))
    ev = TableEvaluator(table_spec_from_config({"preset": "my_bench", "path": str(path)}))
    assert ev.lookup("b") == {"val_acc": 72.0, "latency_ms": 5.0, "ms_cpu": 5.0, "ms_npu": 0.5}
    spec = table_spec_from_config({"preset": "my_bench", "path": str(path), "device": "npu"})
    assert TableEvaluator(spec).oracle(limit=0.7).key == "b"
