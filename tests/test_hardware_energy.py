"""Energy: measured from a counter when there is one, reported unavailable otherwise.

The counter test runs on a fake clock (every read advances it by 1 ms), so the arithmetic is
checked exactly and a loaded host cannot move it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from nasforge.hardware import energy
from nasforge.hardware.energy import EnergyCounter, RaplCounter, measure_energy, rapl_domains


class FakeClock:
    """Stands in for the ``time`` module in :mod:`nasforge.hardware.energy`."""

    def __init__(self) -> None:
        self.t = 0.0

    def perf_counter(self) -> float:
        self.t += 0.001
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


class WallPowerCounter(EnergyCounter):
    """A fake counter drawing a constant 10 W on ``clock``."""

    name = "fake"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def read(self) -> float:
        return 10.0 * self.clock.t


def test_unavailable_is_reported_with_a_reason_not_a_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "no-powercap")
    monkeypatch.setattr(energy, "rapl_domains", lambda: rapl_domains(tmp_path / "no-powercap"))
    m = measure_energy(nn.Linear(4, 4), (4,), duration_s=0.01)
    assert not m.available and m.joules_per_inference is None and m.mean_watts is None
    assert "does not exist" in m.reason


def test_energy_per_inference_from_a_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(energy, "time", clock)
    m = measure_energy(nn.Linear(4, 4), (4,), duration_s=0.05, counter=WallPowerCounter(clock))
    assert m.available and m.source == "fake" and m.calls >= 10
    assert m.mean_watts == pytest.approx(10.0, rel=0.05)
    assert m.joules_per_inference == pytest.approx(10.0 * m.seconds / m.calls, rel=0.05)
    assert (
        m.net_joules_per_inference is not None
        and m.net_joules_per_inference < m.joules_per_inference
    )


def test_rapl_reads_domains_and_handles_wrap_around(tmp_path: Path) -> None:
    dom = tmp_path / "intel-rapl:0"
    dom.mkdir()
    (dom / "energy_uj").write_text("900000\n")
    (dom / "max_energy_range_uj").write_text("1000000\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain: not counted twice
    found, reason = rapl_domains(tmp_path)
    assert found == [dom] and reason == ""
    c = RaplCounter(found)
    before = c.read()
    (dom / "energy_uj").write_text("100000\n")  # wrapped: 0.9 J -> 1.0 J -> 0.1 J
    assert c.delta(before, c.read()) == pytest.approx(0.2)
