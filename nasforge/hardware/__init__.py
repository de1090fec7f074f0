"""What a candidate costs, measured: timing harness, static costs, latency tables."""

from nasforge.hardware.profile import count_flops, count_params, model_size_bytes
from nasforge.hardware.timing import LatencyMeasurement, measure_latency

__all__ = ["count_flops", "count_params", "model_size_bytes", "LatencyMeasurement", "measure_latency"]
