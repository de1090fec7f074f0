"""The noise defence: verdict rules, paired speed-ups with intervals, the quiet baseline.

Everything here is driven by scripted numbers (fake runners, synthetic host activity), so
the tests pass on any host, loaded or quiet; no test asserts a measured time.
"""

from __future__ import annotations

import json
import math

import pytest

from nasforge.hardware.backends import Runner
from nasforge.hardware.noise import (
    UNSTABLE,
    HostActivity,
    HostSample,
    NoisePolicy,
    Stability,
    assess,
    paired_speedup,
    quiet_baseline,
    round_spread,
)
from nasforge.hardware.timing import LatencyMeasurement, TimingConfig, compare_runners


def _activity(others: float, steal: float = 0.0, cpus: int = 2) -> HostActivity:
    return HostActivity(seconds=2.0, cpus=cpus, others_cpus=others, steal=steal, load1=1.0)


def test_quiet_pass_is_stable() -> None:
    v = assess(_activity(0.1), [1.0, 1.01, 1.0], 1.0, [0.01, 0.02], threads=1)
    assert v.stable and v.reasons == () and v.label == "stable"
    assert v.reference_ratio == pytest.approx(1.0)


def test_reference_slowdown_against_the_quiet_baseline_is_unstable() -> None:
    v = assess(_activity(0.0), [1.4, 1.41, 1.4], 1.0, [0.0], threads=1)
    assert not v.stable
    assert any("as slow as on this host when quiet" in r for r in v.reasons)
    assert v.label.startswith(UNSTABLE)


def test_reference_burst_between_rounds_is_unstable() -> None:
    v = assess(None, [1.0, 1.5, 1.0], None, [], threads=1)
    assert not v.stable and "varied 50%" in v.reasons[0]


def test_other_processes_count_only_on_cpus_the_measurement_needs() -> None:
    # one burner on a 2-CPU host: a 1-thread measurement keeps its own CPU ...
    assert assess(_activity(1.0), [], None, [], threads=1).stable
    # ... a 2-thread one does not
    v = assess(_activity(1.0), [], None, [], threads=2)
    assert not v.stable and "other processes used 1.0 of 2 CPUs" in v.reasons[0]
    # two burners take the measurement's CPU too
    assert not assess(_activity(2.0), [], None, [], threads=1).stable


def test_steal_and_round_spread_are_reasons() -> None:
    assert not assess(_activity(0.0, steal=0.2), [], None, [], threads=1).stable
    v = assess(None, [], None, [0.01, 0.3], threads=1)
    assert not v.stable and "round medians spread 30%" in v.reasons[0]


def test_round_spread_is_robust_to_one_burst_round() -> None:
    assert round_spread([1.0, 1.0, 1.0, 1.0, 3.0]) == 0.0
    assert round_spread([1.0, 1.2, 0.8, 1.0]) == pytest.approx(0.1)
    assert round_spread([2.0]) == 0.0


def test_host_sample_activity_is_bounded() -> None:
    a = HostSample.take()
    b = HostSample(a.wall_s + 1.0, a.own_cpu_s, a.stat, a.load1)
    act = HostActivity.between(a, b)
    assert act.seconds == pytest.approx(1.0)
    if a.stat is not None:  # Linux: the counters did not move, nobody else ran
        assert act.others_cpus == 0.0 and act.steal == 0.0
    short = HostActivity.between(a, HostSample(a.wall_s + 0.01, 0, a.stat, 0))
    assert math.isnan(short.others_cpus)


def test_stability_round_trips_and_merges() -> None:
    v = assess(None, [1.0, 1.5], 1.0, [0.2], threads=1)
    back = Stability.from_dict(json.loads(json.dumps(v.to_dict())))
    assert back.stable == v.stable and back.reasons == v.reasons
    both = Stability().merge(v)
    assert not both.stable and both.reasons == v.reasons
    assert Stability.from_dict(None).stable


def test_paired_speedup_of_exact_rounds_has_a_point_interval() -> None:
    s = paired_speedup([2.0] * 6, [1.0] * 6, "b", "a")
    assert s.ratio == pytest.approx(2.0) and s.low == pytest.approx(2.0)
    assert s.stable and s.label == "2.00x [2.00, 2.00]" and s.rounds == 6


def test_paired_speedup_interval_widens_with_noise_and_flags_it() -> None:
    base = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    noisy = [1.0, 0.5, 1.6, 0.7, 1.4, 0.9]
    s = paired_speedup(base, noisy, "b", "a", policy=NoisePolicy(max_ci_halfwidth=0.1))
    assert s.low < s.ratio < s.high
    assert not s.stable and "95% interval" in s.reasons[-1] and UNSTABLE in s.label
    exact = paired_speedup(base, [1.0] * 6)
    assert exact.agrees_with(s) == (s.low <= 2.0 <= s.high)


def test_paired_speedup_carries_the_pass_verdict() -> None:
    busy = Stability(stable=False, reasons=("reference kernel varied 40% between rounds",))
    s = paired_speedup([2.0] * 4, [1.0] * 4, stability=busy)
    assert not s.stable and s.reasons == busy.reasons
    with pytest.raises(ValueError):
        paired_speedup([], [])


def test_quiet_baseline_keeps_the_fastest_and_survives_a_bad_cache(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NASFORGE_CACHE_DIR", str(tmp_path))
    assert quiet_baseline("cpu x", 1, "cpu", 2.0) == 2.0
    assert quiet_baseline("cpu x", 1, "cpu", 3.0) == 2.0
    assert quiet_baseline("cpu x", 1, "cpu", 1.5) == 1.5
    assert quiet_baseline("cpu x", 2, "cpu", 9.0) == 9.0  # another thread count: its own key
    (tmp_path / "reference_kernel.json").write_text("not json{")
    assert quiet_baseline("cpu x", 1, "cpu", 4.0) == 4.0


class Scripted(Runner):
    """Returns ``value`` ms per call (both clocks), times ``factors[k]`` on its k-th visit."""

    def __init__(self, name: str, value: float, factors: list[float] | None = None) -> None:
        super().__init__(lambda: None, name)
        self.value, self.factors, self.calls = value, factors or [1.0], 0

    def run(self, n: int) -> tuple[list[float], list[float]]:
        f = self.factors[self.calls % len(self.factors)]
        self.calls += 1
        v = [self.value * f] * n
        return v, list(v)


ONE_PASS = NoisePolicy(retries=0)


def test_compare_runners_gives_the_ratio_of_paired_rounds() -> None:
    cfg = TimingConfig(warmup=1, repeats=40, rounds=8, reference=False, policy=ONE_PASS)
    stats, ups = compare_runners([Scripted("fp32", 4.0), Scripted("int8", 1.0)], cfg)
    assert ups[0].ratio == pytest.approx(1.0)
    assert ups[1].ratio == pytest.approx(4.0) and ups[1].high == pytest.approx(4.0)
    assert ups[1].name == "int8" and ups[1].baseline == "fp32"
    assert len(stats[1].all_round_medians_ms) == 8


def test_compare_runners_flags_a_speedup_it_cannot_pin_down() -> None:
    jumpy = [1.0, 2.5, 0.6, 1.8, 0.7, 2.2, 1.0, 0.5]  # every round a different host
    cfg = TimingConfig(
        warmup=0, repeats=40, rounds=8, reference=False, max_remeasure=0, policy=ONE_PASS
    )
    _, ups = compare_runners([Scripted("a", 4.0), Scripted("b", 1.0, jumpy)], cfg)
    assert not ups[1].stable
    assert UNSTABLE in ups[1].label


def test_measurement_round_trips_its_verdict() -> None:
    busy = Stability(stable=False, reasons=("hypervisor stole 20% of CPU time",))
    m = LatencyMeasurement(1.5, 0.1, 1.4, 30, 1, 1, stability=busy)
    assert m.unstable and UNSTABLE in m.label
    back = LatencyMeasurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.unstable and back.stability.reasons == busy.reasons
    old = m.to_dict()
    del old["stability"]  # a record written before the verdict existed
    assert not LatencyMeasurement.from_dict(old).unstable


def test_pooled_verdict_forgives_a_few_wide_spreads_but_not_a_busy_host() -> None:
    from nasforge.hardware.noise import pool_verdicts

    ok = Stability()
    wide = Stability(stable=False, reasons=("round medians spread 7% (> 5%)",))
    assert pool_verdicts([ok] * 19 + [wide]).stable
    many = pool_verdicts([ok] * 7 + [wide] * 3)
    assert not many.stable and "3 of 10 measurements" in many.reasons[0]
    busy = Stability(stable=False, reasons=("hypervisor stole 20% of CPU time",))
    assert not pool_verdicts([ok] * 99 + [busy]).stable
    assert pool_verdicts([]).stable
