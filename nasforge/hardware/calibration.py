"""Per-network overhead: a linear map from summed layer latencies to whole-model latency.

A sum of layers timed alone misses what only a whole network pays (framework dispatch between
layers, cache traffic between layers, Python in a cell's ``forward``) and counts what only
a lone layer pays. A few whole-model measurements fix both with ``slope * raw + intercept``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: how a table's layer costs add up to a network (see :mod:`nasforge.hardware.predictor`);
#: one calibration is fitted per aggregation and statistic
AGGREGATIONS = ("sum", "critical_path", "schedule")


@dataclass(frozen=True)
class Calibration:
    """``measured_ms ~= slope * raw_ms + intercept_ms`` over whole-model measurements.

    ``raw_ms`` is the table's sum (or critical path, or schedule) with the backend's per-call
    overhead counted once. ``mape`` is the fit's mean absolute % error on its own points.
    """

    slope: float = 1.0
    intercept_ms: float = 0.0
    points: int = 0
    mape: float = float("nan")

    def apply(self, raw_ms: float) -> float:
        return self.slope * raw_ms + self.intercept_ms

    def to_dict(self) -> dict[str, float]:
        return {
            "slope": self.slope,
            "intercept_ms": self.intercept_ms,
            "points": self.points,
            "mape": self.mape,
        }


def fit_calibration(
    raw_ms: Sequence[float] | np.ndarray, measured_ms: Sequence[float] | np.ndarray
) -> Calibration:
    """Weighted least squares of ``measured ~ slope * raw + intercept`` minimising relative error.

    With fewer than 3 points (or no spread in ``raw_ms``) only a scale is fitted; with none,
    the identity.
    """
    x = np.asarray(raw_ms, dtype=float)
    y = np.asarray(measured_ms, dtype=float)
    if len(x) == 0:
        return Calibration()
    w = 1.0 / np.maximum(y, 1e-12)
    if len(x) >= 3 and np.ptp(x) > 1e-12:
        a = np.stack([x * w, w], axis=1)
        (slope, intercept), *_ = np.linalg.lstsq(a, y * w, rcond=None)
    else:
        slope, intercept = float(np.sum(w * w * x * y) / max(np.sum(w * w * x * x), 1e-300)), 0.0
    pred = slope * x + intercept
    mape = float(np.mean(np.abs(pred - y) / np.maximum(y, 1e-12)) * 100)
    return Calibration(float(slope), float(intercept), len(x), mape)
