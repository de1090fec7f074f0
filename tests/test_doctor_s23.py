"""`nasforge doctor` gives a `nasforge scale` config the findings that apply to scaling (none
about a search it never runs), and warns when a compressed search's float latency is timed
on another backend than its compressed models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.experiment.config import ExperimentConfig, parse_config
from nasforge.experiment.doctor import diagnose

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SEARCH_FIELDS = ("strategy", "search", "objective", "final")


def scale_config(**over: Any) -> dict[str, Any]:
    """examples/scale.yaml, with a small dataset (and ``over`` merged into its sections)."""
    raw = yaml.safe_load((EXAMPLES / "scale.yaml").read_text())
    raw["data"]["samples"] = 300
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def found(cfg: ExperimentConfig, build: bool = True) -> set[tuple[str, str]]:
    return {(f.level, f.field) for f in diagnose(cfg, build=build)}


def test_scaling_config_gets_no_search_findings() -> None:
    raw = scale_config()
    findings = diagnose(parse_config(raw))
    assert not [f for f in findings if f.field.split(".")[0] in SEARCH_FIELDS], findings
    assert not [f for f in findings if f.level == "error"], findings
    # the same sections without scaling: are diagnosed as a search (so the check above bites)
    del raw["scaling"]
    as_search = diagnose(parse_config(raw))
    assert any(f.field.split(".")[0] in SEARCH_FIELDS for f in as_search), as_search


def test_scaling_config_errors_name_the_scaling_fields(tmp_path: Path) -> None:
    wrong_space = found(parse_config(scale_config(space={"name": "nb201"})))
    assert ("error", "space.name") in wrong_space
    missing = found(parse_config(scale_config(scaling={"base": str(tmp_path / "nope")})))
    assert ("error", "scaling.base") in missing
    flops = found(parse_config(scale_config(latency={"mode": "flops"})), build=False)
    assert ("error", "latency.mode") in flops
    # sections scale never reads are named, as info, not diagnosed as a search
    extra = parse_config(scale_config(strategy={"name": "evolution"}, search={"trials": 2}))
    got = found(extra)
    assert ("info", "strategy") in got and ("info", "search") in got
    assert not {f for f in got if f[0] != "info"}


def test_doctor_cli_on_a_scaling_config(tmp_path: Path) -> None:
    good, bad = tmp_path / "scale.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(scale_config()))
    bad.write_text(yaml.safe_dump(scale_config(space={"name": "nb201"})))
    runner = CliRunner()
    res = runner.invoke(app, ["doctor", str(good)])
    assert res.exit_code == 0 and "no problems found" in res.output, res.output
    res = runner.invoke(app, ["doctor", str(bad)])
    assert res.exit_code == 1 and "space.name" in res.output and "Traceback" not in res.output


def compressed(latency: dict[str, Any], **options: Any) -> ExperimentConfig:
    return parse_config(
        {
            "data": {"name": "digits"},
            "space": {"name": "mobile"},
            "evaluator": {"kind": "compressed", "options": options},
            "automl": {"compress": {"prune_ratio": [0.0, 0.25], "bits": [32, 8]}},
            "latency": latency,
            "objective": {"kind": "weighted_product", "target": 1.0},
        }
    )


def warned(cfg: ExperimentConfig) -> list[str]:
    return [
        f.message
        for f in diagnose(cfg, build=False)
        if (f.level, f.field) == ("warning", "latency.backend")
    ]


def test_compressed_search_with_a_torch_latency_backend_is_warned() -> None:
    messages = warned(compressed({"backend": "torch"}))
    assert len(messages) == 1 and "onnxruntime" in messages[0] and "torch" in messages[0]
    assert not warned(compressed({"backend": "onnxruntime"}))
    # the option times on another onnxruntime backend than latency.backend
    assert warned(compressed({"backend": "onnxruntime"}, backend="onnxruntime:parallel"))
    assert not warned(
        compressed(
            {"backend": "onnxruntime:parallel", "threads": 2}, backend="onnxruntime:parallel"
        )
    )
    plain = parse_config({"data": {"name": "digits"}, "latency": {"backend": "torch"}})
    assert not warned(plain)
