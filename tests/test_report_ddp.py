"""The OFA report says when the supernet was trained data-parallel (DDP under torchrun)."""

from __future__ import annotations

from nasforge.experiment.report_ofa import training_section


def test_training_section_carries_world_size() -> None:
    records = [{"epoch": 1, "phase": "full", "loss": 1.0, "seconds": 2.0, "world_size": 2}]
    t = training_section(records, None, {"world_size": 2, "cpu_seconds": 4.0})
    assert t["world_size"] == 2 and t["epochs"][0]["world_size"] == 2
    assert training_section(records, None, {})["world_size"] == 1  # a one-process run
