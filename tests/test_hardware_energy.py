"""Energy: measured from a counter when there is one, reported unavailable otherwise."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from torch import nn

from nasforge.hardware import energy
from nasforge.hardware.energy import EnergyCounter, RaplCounter, measure_energy, rapl_domains


class WallPowerCounter(EnergyCounter):
    """A fake counter drawing a constant 10 W."""

    name = "fake"

    def read(self) -> float:
        return 10.0 * time.perf_counter()


def test_unavailable_is_reported_with_a_reason_not_a_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "no-powercap")
    monkeypatch.setattr(energy, "rapl_domains", lambda: rapl_domains(tmp_path / "no-powercap"))
    m = measure_energy(nn.Linear(4, 4), (4,), duration_s=0.01)
    assert not m.available and m.joules_per_inference is None and m.mean_watts is None
    assert "does not exist" in m.reason


def test_energy_per_inference_from_a_counter() -> None:
    m = measure_energy(nn.Linear(4, 4), (4,), duration_s=0.05, counter=WallPowerCounter())
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
