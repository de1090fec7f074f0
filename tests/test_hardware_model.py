"""`LatencyModel`: measure or predict, and the final side-by-side check."""

from __future__ import annotations

import numpy as np
import pytest

from nasforge.errors import ConfigError
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.table import LatencyTable
from nasforge.hardware.timing import TimingConfig
from nasforge.spaces import create_space

FAST = TimingConfig(warmup=1, repeats=6, rounds=3)


def test_measure_mode_measures_the_model() -> None:
    space = create_space("nb201", (3, 8, 8), 10, C=4, N=1)
    arch = space.sample(np.random.default_rng(0))
    lm = LatencyModel.from_config(
        {"mode": "measure", "backend": "torch", "threads": 1, "warmup": 1, "repeats": 6}
    )
    assert lm.latency_ms(arch, space.build(arch), (3, 8, 8)) > 0
    final = lm.final_check(arch, space.build(arch), (3, 8, 8))
    assert final["latency_ms_predicted"] is None and final["statistic"] == "median"
    with pytest.raises(ConfigError, match="no table"):
        lm.predict(arch)


def test_predict_mode_puts_prediction_beside_measurement(tmp_path) -> None:
    space = create_space("nb201", (3, 8, 8), 10, C=4, N=1)
    path = tmp_path / "t.json"
    LatencyTable.build(
        space,
        "torch",
        path=path,
        space_options={"C": 4, "N": 1},
        calibration_archs=3,
        timing=FAST,
        progress=False,
    )
    lm = LatencyModel.from_config({"mode": "predict", "table": str(path)}, space)
    arch = space.sample(np.random.default_rng(1))
    assert lm.latency_ms(arch, None, (3, 8, 8)) == pytest.approx(lm.predict(arch))
    final = lm.final_check(arch, space.build(arch), (3, 8, 8))
    assert final["statistic"] == "min" and final["latency_ms_measured"] > 0
    assert final["latency_error_pct"] == pytest.approx(
        100 * (final["latency_ms_predicted"] / final["latency_ms_measured"] - 1)
    )


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"mode": "guess"}, "latency.mode"),
        ({"mode": "predict"}, "latency.table"),
        ({"mode": "measure", "statistic": "mean"}, "latency.statistic"),
    ],
)
def test_bad_settings_name_the_field(cfg: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        LatencyModel.from_config(cfg)
