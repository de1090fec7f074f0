"""`LatencyModel`: measure or predict, and the final side-by-side check.

The model takes the experiment's validated ``latency`` section (the pydantic
:class:`~nasforge.experiment.config.LatencyConfig` is the one source of defaults and checks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nasforge.errors import ConfigError
from nasforge.experiment.config import LatencyConfig
from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.timing import TimingConfig
from nasforge.spaces import create_space

FAST = TimingConfig(warmup=1, repeats=6, rounds=3)


def test_measure_mode_measures_the_model() -> None:
    space = create_space("nb201", (3, 8, 8), 10, C=4, N=1)
    arch = space.sample(np.random.default_rng(0))
    lm = LatencyModel.from_config(LatencyConfig(mode="measure", warmup=1, repeats=6))
    assert lm.latency_ms(arch, space.build(arch), (3, 8, 8)) > 0
    final = lm.final_check(arch, space.build(arch), (3, 8, 8))
    assert final["latency_ms_predicted"] is None and final["statistic"] == "median"
    with pytest.raises(ConfigError, match="no table"):
        lm.predict(arch)


def test_predict_mode_puts_prediction_beside_measurement(tmp_path: Path) -> None:
    space = create_space("nb201", (3, 8, 8), 10, C=4, N=1)
    path = tmp_path / "t.json"
    config = BuildConfig(calibration_archs=3, timing=FAST)
    TableBuilder(space, "torch", 1, config, space_options={"C": 4, "N": 1}, progress=False).build(
        path
    )
    # this test is about predictions, not about this build's verdict (a busy host may make it
    # "do not trust"; tests/test_hardware_trust.py checks the refusal)
    section = LatencyConfig(mode="predict", table=str(path), allow_untrusted_table=True)
    lm = LatencyModel.from_config(section, space)
    arch = space.sample(np.random.default_rng(1))
    assert lm.latency_ms(arch, None, (3, 8, 8)) == pytest.approx(lm.predict(arch))
    final = lm.final_check(arch, space.build(arch), (3, 8, 8))
    assert final["statistic"] == "min" and final["latency_ms_measured"] > 0
    assert final["latency_error_pct"] == pytest.approx(
        100 * (final["latency_ms_predicted"] / final["latency_ms_measured"] - 1)
    )
    with pytest.raises(ConfigError, match="latency.statistic"):
        LatencyModel(
            "predict", table=str(path), space=space, statistic="mean", allow_untrusted_table=True
        )


@pytest.mark.parametrize(
    "kwargs, field",
    [({"mode": "guess"}, "latency.mode"), ({"mode": "predict"}, "latency.table")],
)
def test_programmatic_misuse_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        LatencyModel(**kwargs)
