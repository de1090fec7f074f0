"""The OFA report says when the supernet was trained data-parallel (DDP under torchrun)."""

from __future__ import annotations

from nasforge.experiment.report_ofa import training_section


def test_training_section_carries_world_size() -> None:
    records = [{"epoch": 1, "phase": "full", "loss": 1.0, "seconds": 2.0, "world_size": 2}]
    t = training_section(records, None, {"world_size": 2, "cpu_seconds": 4.0})
    assert t["world_size"] == 2 and t["epochs"][0]["world_size"] == 2
    assert training_section(records, None, {})["world_size"] == 1  # a one-process run


def test_oneshot_show_says_data_parallel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from nasforge.experiment.report_oneshot import oneshot_section, show_lines
    from nasforge.experiment.store import TrialStore

    with TrialStore(tmp_path / "t.db") as store:
        store.add_epoch("supernet", 0, {"loss": 1.0, "lr": 0.1, "world_size": 2})
        store.set_meta("oneshot", {"method": "spos", "phase": "supernet", "world_size": 2})
        assert oneshot_section(store)["world_size"] == 2  # type: ignore[index]
        assert "data-parallel (DDP) on 2 processes" in show_lines(store)[0]
        store.set_meta("oneshot", {"method": "spos", "phase": "supernet"})
        assert not any("data-parallel" in line for line in show_lines(store))
