"""Waiting for a quiet host before measuring (``NoisePolicy.wait_quiet_s``, ``wait_for_quiet``).

Real polls of the real host: a busy loop in a subprocess on this process's own CPU, the real
reference kernel, the real /proc counters. The test host is busy itself (CI runs two workers),
so no test assumes it is quiet: quiet outcomes come from thresholds no host can fail, busy
ones from thresholds no host can pass, or from the busy loop. No test asserts a time.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from test_hardware_noise import Scripted

from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.noise import (
    NoisePolicy,
    QuietWait,
    Stability,
    quiet_baseline,
    wait_for_quiet,
)
from nasforge.hardware.table import MODEL_TIMING
from nasforge.hardware.timing import TimingConfig, compare_runners, time_runners
from nasforge.spaces import create_space

#: thresholds no host fails: only what a test sets on purpose decides
LAX: dict[str, Any] = {"max_reference_slowdown": 1e9, "max_others_cpus": 1e9, "max_steal": 1.0}
CPUS = os.cpu_count() or 1


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh quiet-baseline cache: no baseline unless a test writes one."""
    monkeypatch.setenv("NASFORGE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def busy_loop_on_my_cpu() -> Iterator[int]:
    """A pure-Python busy loop pinned to the CPU this test runs on (and this test pinned to
    it too, so the two share it); yields the CPU."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(proc.pid, {cpu})
        yield cpu
    finally:
        proc.kill()
        proc.wait()
        os.sched_setaffinity(0, before)


def test_a_busy_loop_on_this_cpu_keeps_the_host_busy_for_the_whole_wait(
    busy_loop_on_my_cpu: int,
) -> None:
    lines: list[str] = []
    # the measurement needs every CPU, so a process spinning on one of them is in its way
    w = wait_for_quiet(2.0, threads=CPUS, policy=NoisePolicy(quiet_poll_s=0.25), say=lines.append)
    assert not w.quiet and w.polls >= 2
    assert w.waited_s >= 2.0  # it never gives up early while busy
    assert w.reason == "host stayed busy for the whole 2 s wait"
    assert any(r.startswith("other processes used") for r in w.reasons)
    assert w.others_cpus >= 0.5
    assert lines[0].startswith("waiting for a quiet host: ") and "of 2 s" in lines[0]
    assert lines[-1].startswith("host stayed busy for the whole 2 s wait")
    assert lines[-1].endswith("measuring anyway")


def test_a_host_within_the_thresholds_is_quiet_after_k_polls() -> None:
    lines: list[str] = []
    policy = NoisePolicy(**LAX, quiet_polls=3)
    w = wait_for_quiet(60.0, policy=policy, poll_s=0.2, say=lines.append)
    assert w.quiet and w.polls == 3 and w.reasons == () and w.reason == ""
    assert math.isnan(w.reference_ratio)  # no baseline yet: the counters alone decided
    assert lines == []  # quiet from the start: nothing to say


def test_the_reference_kernel_is_judged_against_the_quiet_baseline() -> None:
    threads = torch.get_num_threads()
    quiet_baseline("test cpu", threads, "wall", 1e-6)  # a baseline no real call can match
    lax_counters = NoisePolicy(max_others_cpus=1e9, max_steal=1.0, quiet_poll_s=0.2)
    w = wait_for_quiet(0.3, policy=lax_counters, say=None, cpu_model="test cpu")
    assert not w.quiet and w.reference_ratio > 1000
    assert any("reference kernel" in r for r in w.reasons)
    assert "reference kernel" in w.status() and "x its quiet time" in w.status()
    w = wait_for_quiet(
        0.3, policy=NoisePolicy(**LAX, quiet_poll_s=0.2), say=None, cpu_model="test cpu"
    )
    assert w.quiet and w.reference_ratio > 1000  # judged, within a (huge) limit


class Slow(Scripted):
    """A scripted runner whose visits take 0.1 s of wall time, so that a pass lasts long
    enough (> 0.2 s) for the host counters to judge it."""

    def run(self, n: int) -> tuple[list[float], list[float]]:
        time.sleep(0.1)
        return super().run(n)


def _passes(runner: Scripted, rounds: int) -> int:
    return runner.calls // rounds  # no warm-up, no re-measurement: one call per round


def _always_retried(**policy: Any) -> TimingConfig:
    """One pass is never settled (every runner's round spread over a negative limit), so the
    harness measures 1 + retries passes on any host."""
    pol = NoisePolicy(max_round_spread=-1.0, retries=2, pause_s=0.0, **policy)
    return TimingConfig(warmup=0, repeats=6, rounds=3, reference=False, max_remeasure=0, policy=pol)


def test_no_wait_is_exactly_the_old_harness() -> None:
    r = Scripted("a", 1.0)
    cfg = _always_retried()
    assert cfg.policy.wait_quiet_s == 0.0
    (s,) = time_runners([r], cfg)
    assert _passes(r, 3) == 3 and s.stability.attempts == 3
    assert s.stability.waits == 0 and s.stability.waited_s == 0.0
    r = Scripted("a", 1.0)
    settled = TimingConfig(
        warmup=0, repeats=6, rounds=3, reference=False, policy=NoisePolicy(**LAX)
    )
    (s,) = time_runners([r], settled)
    assert _passes(r, 3) == 1 and s.stability.attempts == 1 and s.stability.waits == 0


def test_each_pass_of_a_retried_measurement_waits_for_a_quiet_host() -> None:
    lines: list[str] = []
    r = Scripted("a", 1.0)
    cfg = _always_retried(**LAX, quiet_poll_s=0.2, quiet_polls=1)
    cfg = replace(cfg, notify=lines.append).waiting(30.0)
    (s,) = time_runners([r], cfg)
    assert _passes(r, 3) == 3
    assert s.stability.attempts == 3 and s.stability.waits == 3 and s.stability.waited_s > 0
    assert not any("host stayed busy" in x for x in s.stability.reasons)
    assert lines == []
    back = Stability.from_dict(s.stability.to_dict())
    assert back.waits == 3 and back.waited_s == s.stability.waited_s


def test_a_wait_that_times_out_measures_anyway_and_says_so() -> None:
    lines: list[str] = []
    # other processes may use no CPU at all (a negative allowance): no host passes that
    pol = NoisePolicy(max_others_cpus=-1.0, retries=0, quiet_poll_s=0.25)
    cfg = TimingConfig(warmup=0, repeats=6, rounds=3, reference=False, policy=pol)
    cfg = replace(cfg, notify=lines.append).waiting(1.0)
    r = Slow("a", 1.0)
    (s,) = time_runners([r], cfg, threads=CPUS)
    assert _passes(r, 3) == 1  # measured after the wait, busy or not
    assert not s.stability.stable and s.stability.waits == 1
    assert s.stability.reasons[-1] == "host stayed busy for the whole 1 s wait"
    assert "host stayed busy" in s.stability.label
    assert lines and lines[-1].endswith("measuring anyway")


def test_compare_runners_counts_the_waits_of_its_re_measurement() -> None:
    pol = NoisePolicy(**LAX, max_ci_halfwidth=-1.0, retries=1, quiet_poll_s=0.2, quiet_polls=1)
    cfg = TimingConfig(warmup=0, repeats=8, rounds=4, reference=False, policy=pol, notify=None)
    a, b = Scripted("a", 2.0), Scripted("b", 1.0)
    stats, ups = compare_runners([a, b], cfg.waiting(30.0))
    assert not ups[1].stable  # no interval is narrow enough: measured twice
    assert a.calls == 4 + 8  # then with twice the rounds
    assert stats[0].stability.waits == 2 and stats[1].stability.waits == 2


def test_a_verdict_written_before_the_wait_existed_still_loads() -> None:
    old = Stability(stable=False, reasons=("hypervisor stole 20% of CPU time",)).to_dict()
    del old["waits"], old["waited_s"]
    back = Stability.from_dict(old)
    assert back.waits == 0 and back.waited_s == 0.0 and not back.stable
    assert Stability().merge(Stability(waits=2, waited_s=5.0)).waited_s == 5.0


def test_bad_wait_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="wait_quiet_s"):
        NoisePolicy(wait_quiet_s=-1.0)
    with pytest.raises(ValueError, match="wait_quiet_s"):
        TimingConfig().waiting(float("nan"))
    with pytest.raises(ValueError, match="quiet_polls"):
        NoisePolicy(quiet_polls=0)
    assert TimingConfig().waiting(300).policy.wait_quiet_s == 300.0


def test_the_table_builder_waits_in_every_pass_it_times() -> None:
    space = create_space("mobile", (3, 32, 32), 10)
    plain = TableBuilder(space, "torch", 1, BuildConfig(), progress=False)
    assert plain.model_timing == MODEL_TIMING  # no wait asked: exactly as before
    lines: list[str] = []
    timing = TimingConfig(warmup=1, repeats=3, rounds=3, notify=lines.append).waiting(120)
    waiting = TableBuilder(space, "torch", 1, BuildConfig(timing=timing), progress=False)
    assert waiting.config.timing.policy.wait_quiet_s == 120
    assert waiting.model_timing.policy.wait_quiet_s == 120
    assert waiting.model_timing.notify is not None
    assert waiting.model_timing.repeats == MODEL_TIMING.repeats  # only the wait is taken
    big = TableBuilder(space, "torch", 32, BuildConfig(timing=timing), progress=False)
    assert big.model_timing.policy.wait_quiet_s == 120


def test_quiet_wait_status_reads_like_the_progress_line() -> None:
    w = QuietWait(False, 40.0, 20, 1.27, 0.94, 0.0, ("x",), 300.0)
    assert w.status() == "reference kernel 1.27x its quiet time, other processes 0.9 CPUs"
    assert w.reason == "host stayed busy for the whole 300 s wait"


@pytest.mark.slow  # about 6 s on a busy 2-core host: a real (tiny) build
def test_a_real_build_waits_before_each_of_its_harness_passes(tmp_path: Path) -> None:
    lines: list[str] = []
    # no host passes a negative-infinite allowance: every wait runs out and says so
    busy = NoisePolicy(max_others_cpus=-1e9, retries=0, quiet_poll_s=0.25)
    timing = TimingConfig(warmup=1, repeats=3, rounds=3, policy=busy, notify=lines.append)
    space = create_space("nb201", (3, 8, 8), 10, C=4, N=1)
    config = BuildConfig(calibration_archs=1, held_out_archs=0, timing=timing.waiting(0.3))
    table = TableBuilder(space, "torch", 1, config, progress=False).build(tmp_path / "t.json")
    finals = [x for x in lines if x.endswith("measuring anyway")]
    # the call-overhead probe, the one chunk of entries (retries=0), the whole-model pass
    # and its retry (whole models keep their own thresholds and retries; only the wait is
    # the build's)
    assert len(finals) == 4
    assert table.build_stability["models_stability"]["waits"] == 2
    assert not table.build_stability["stable"]


# -- the wiring: CLI options and the search config reach the harness --------------------------
def test_the_cli_options_refuse_a_negative_wait_by_name(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nasforge.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app,
        ["latency", "build", "--out", str(tmp_path / "t.json"), "--wait-quiet", "-1", "--quiet"],
    )
    assert res.exit_code == 2 and "--wait-quiet" in res.output, res.output
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read: the option is checked first")
    res = runner.invoke(
        app, ["compress", str(model), "--wait-quiet", "-1", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "--wait-quiet" in res.output, res.output


def test_a_search_configs_wait_reaches_the_latency_models_timing() -> None:
    from pydantic import ValidationError

    from nasforge.experiment.config import LatencyConfig
    from nasforge.hardware.model import LatencyModel

    lat = LatencyConfig(mode="measure", wait_quiet_s=120)
    assert LatencyModel.from_config(lat).timing.policy.wait_quiet_s == 120.0
    assert LatencyModel.from_config(LatencyConfig(mode="measure")).timing.policy.wait_quiet_s == 0
    with pytest.raises(ValidationError, match="wait_quiet_s"):
        LatencyConfig(mode="measure", wait_quiet_s=-1)
