"""The timing harness: statistics, interleaving, stray rounds re-measured, provenance recorded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasforge.hardware.backends import BackendError, BackendSpec, Runner
from nasforge.hardware.noise import NoisePolicy
from nasforge.hardware.timing import (
    LatencyMeasurement,
    TimingConfig,
    measure_latency,
    measure_models,
    summarize,
    time_runners,
)

#: scripted runners are timed in one pass: a retry on a busy host would replay the script
ONE_PASS = NoisePolicy(retries=0)


class FakeRunner(Runner):
    """Returns scripted samples: ``script[k]`` for the k-th call of ``run``."""

    def __init__(self, script: list[list[float]], log: list[str], name: str) -> None:
        super().__init__(lambda: None, name)
        self.script, self.log, self.calls = script, log, 0

    def run(self, n: int) -> tuple[list[float], list[float]]:
        vals = self.script[min(self.calls, len(self.script) - 1)][:n]
        self.calls += 1
        self.log.append(self.name)
        return list(vals), list(vals)


def test_summarize_drops_a_stray_round_and_reports_spread() -> None:
    rounds = [[1.0, 1.1, 0.9, 1.0], [1.0, 1.05, 0.95, 1.0], [5.0, 5.0, 5.0, 5.0]]
    s = summarize(rounds, tolerance=0.1, remeasured=2)
    assert s.rounds == 2 and s.dropped_rounds == 1 and s.remeasured_rounds == 2
    assert s.median_ms == pytest.approx(1.0)
    assert s.min_ms == pytest.approx(0.9)
    assert s.q1_ms <= s.median_ms <= s.q3_ms
    assert s.iqr_ms == pytest.approx(s.q3_ms - s.q1_ms)


def test_summarize_counts_outlier_samples() -> None:
    samples = [1.0] * 20 + [1.1] * 20 + [50.0]
    s = summarize([samples], tolerance=0.1)
    assert s.outlier_samples == 1
    assert 1.0 <= s.median_ms <= 1.1


def test_time_runners_remeasures_a_burst_round_and_interleaves() -> None:
    log: list[str] = []
    quiet = [[1.0] * 10]
    # call 0 is warm-up; calls 1-3 are rounds; round 2 (call 2) hits a burst
    bursty = [[1.0] * 10, [1.0] * 10, [3.0] * 10, [1.0] * 10, [1.0] * 10]
    runners = [FakeRunner(quiet, log, "a"), FakeRunner(bursty, log, "b")]
    stats = time_runners(
        runners, TimingConfig(warmup=1, repeats=30, rounds=3, seed=0, policy=ONE_PASS)
    )
    assert stats[0].remeasured_rounds == 0
    assert stats[1].remeasured_rounds == 1
    assert stats[1].median_ms == pytest.approx(1.0)
    assert stats[1].dropped_rounds == 0
    # after warm-up, each round visits both runners before the next round starts
    rounds = log[2:8]
    assert sorted(rounds[:2]) == ["a", "b"] and sorted(rounds[2:4]) == ["a", "b"]


def test_time_runners_order_is_seeded() -> None:
    def order(seed: int) -> list[str]:
        log: list[str] = []
        runners = [FakeRunner([[1.0] * 5], log, str(i)) for i in range(6)]
        time_runners(
            runners, TimingConfig(warmup=0, repeats=9, rounds=3, seed=seed, policy=ONE_PASS)
        )
        return log

    assert order(3) == order(3)
    assert order(3) != order(4)


def test_measure_latency_pins_and_records_threads_and_fingerprint() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    model.train()
    before = torch.get_num_threads()
    m = measure_latency(model, (3, 16, 16), batch_size=2, warmup=2, repeats=9, threads=1)
    assert torch.get_num_threads() == before
    assert model.training, "the caller's model must not be switched to eval"
    assert isinstance(model[1], nn.BatchNorm2d), "the caller's model must not be BN-folded"
    assert m.threads == 1 and m.batch_size == 2 and m.backend == "torch"
    assert m.clock == "cpu"  # one thread on the calling thread: CPU time is the latency
    assert 0 < m.min_ms <= m.p10_ms <= m.median_ms
    assert m.iqr_ms >= 0 and m.repeats >= 3
    assert m.fingerprint["threads"] == 1
    assert m.fingerprint["allocator"]
    assert m.value_ms("min") == m.min_ms


def test_measurement_round_trips_through_dict() -> None:
    m = measure_latency(nn.Linear(8, 4), (8,), warmup=1, repeats=6, threads=1)
    again = LatencyMeasurement.from_dict(m.to_dict())
    assert again == m


def test_cpu_clock_is_refused_for_multithreaded_backends() -> None:
    with pytest.raises(BackendError, match="timing.clock"):
        TimingConfig(clock="cpu").resolve_clock(BackendSpec("torch", threads=2))
    assert TimingConfig().resolve_clock(BackendSpec("torch", threads=2)) == "wall"
    with pytest.raises(BackendError, match="timing.clock"):
        TimingConfig(clock="sundial")


def test_measure_models_interleaves_and_orders_results() -> None:
    small = nn.Linear(16, 16)
    big = nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)])
    ms = measure_models(
        [nn.Sequential(nn.Linear(256, 16), small), big],
        (256,),
        threads=1,
        config=TimingConfig(warmup=2, repeats=12, rounds=3),
    )
    assert len(ms) == 2
    assert ms[0].min_ms < ms[1].min_ms
