"""`nasforge doctor` on a Ray executor config: latency timed on whichever node runs a trial."""

from __future__ import annotations

from nasforge.experiment.config import parse_config
from nasforge.experiment.doctor import diagnose


def config(**search: object) -> object:
    return parse_config(
        {"name": "r", "data": {"name": "digits"}, "search": {"trials": 2, **search}}
    )


def fields(cfg: object) -> set[tuple[str, str]]:
    return {(f.level, f.field) for f in diagnose(cfg, build=False)}  # type: ignore[arg-type]


def test_ray_with_measured_latency_is_warned_and_an_address_is_suggested() -> None:
    found = fields(config(executor="ray"))
    assert ("warning", "latency.mode") in found
    assert ("info", "search.ray_address") in found
    found = fields(config(executor="ray", ray_address="127.0.0.1:6379"))
    assert ("info", "search.ray_address") not in found
    assert not {f for f in fields(config(executor="process")) if "ray" in f[1]}


def test_ray_with_predicted_latency_is_not_warned() -> None:
    cfg = parse_config(
        {
            "name": "r",
            "data": {"name": "digits"},
            "search": {"trials": 2, "executor": "ray", "ray_address": "auto"},
            "latency": {"mode": "flops"},
        }
    )
    assert ("warning", "latency.mode") not in {
        (f.level, f.field) for f in diagnose(cfg, build=False) if "Ray" in f.message
    }
