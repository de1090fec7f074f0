"""CUDA backend: events timing, device memory, tables and energy. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_latency_is_timed_with_events_and_fingerprinted() -> None:
    from nasforge.hardware.timing import measure_latency

    model = nn.Sequential(*[nn.Conv2d(32, 32, 3, padding=1) for _ in range(4)])
    m = measure_latency(model, (32, 64, 64), batch_size=8, backend="cuda", repeats=30)
    assert m.backend == "cuda" and m.clock == "wall" and m.median_ms > 0
    assert m.fingerprint["gpu_name"]
    big = measure_latency(
        nn.Sequential(*[nn.Conv2d(32, 32, 3, padding=1) for _ in range(16)]),
        (32, 64, 64),
        batch_size=8,
        backend="cuda",
        repeats=30,
    )
    assert big.min_ms > m.min_ms


def test_cuda_memory_peak_matches_prediction_for_a_chain() -> None:
    from nasforge.hardware.memory import measure_peak_activation_bytes, predict_memory

    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256))
    pred = predict_memory(model, (256,), batch_size=64).peak_activation_bytes
    meas = measure_peak_activation_bytes(model, (256,), batch_size=64, device="cuda")
    # the CUDA caching allocator rounds blocks up to 512 bytes and may hold cuBLAS workspace
    assert pred <= meas.peak_bytes <= 2 * pred + (8 << 20)


def test_cuda_table_predicts_within_tolerance() -> None:
    from nasforge.hardware.builder import BuildConfig, TableBuilder
    from nasforge.hardware.timing import TimingConfig
    from nasforge.hardware.validate import validate_table
    from nasforge.spaces import create_space

    space = create_space("nb201", (3, 32, 32), 10)
    config = BuildConfig(calibration_archs=8, timing=TimingConfig(warmup=3, repeats=30, rounds=3))
    table = TableBuilder(space, "cuda", 64, config, progress=False).build()
    report = validate_table(table, space, n=16, seed=1)
    s = report.score_of("table:sum")
    print("\n".join(report.lines()))
    assert s.kendall_tau > 0.5 and np.isfinite(s.mape)


def test_nvml_energy_is_measured_or_explained() -> None:
    from nasforge.hardware.energy import measure_energy

    m = measure_energy(
        nn.Linear(1024, 1024), (1024,), batch_size=256, backend="cuda", duration_s=0.5
    )
    assert m.available or m.reason
    if m.available:
        assert m.joules_per_inference is not None and m.joules_per_inference > 0
