"""Doctor hook: proxies as latency, and tables that do not belong to this run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.doctor import latency_findings
from nasforge.hardware.timing import TimingConfig
from nasforge.spaces import create_space


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    space = create_space("nb201", (3, 8, 8), 10, C=4, N=1)
    path = tmp_path_factory.mktemp("doctor") / "t.json"
    config = BuildConfig(calibration_archs=0, timing=TimingConfig(warmup=1, repeats=3, rounds=3))
    TableBuilder(space, "torch", 1, config, space_options={"C": 4, "N": 1}, progress=False).build(
        path
    )
    return path


def fields(findings: list[tuple[str, str, str]]) -> dict[str, str]:
    return {f: level for level, f, _ in findings}


def test_flops_as_the_latency_objective_warns() -> None:
    cfg = {
        "objective": {"kind": "weighted_product", "cost_metric": "flops", "target": 5},
        "latency": {"mode": "measure"},
    }
    assert fields(latency_findings(cfg)) == {"objective.cost_metric": "warning"}
    assert fields(latency_findings({"latency": {"mode": "flops"}})) == {"latency.mode": "warning"}
    assert (
        latency_findings({"objective": {"kind": "constraint", "cost_metric": "latency_ms"}}) == []
    )


def test_predict_needs_an_existing_table(tmp_path: Path) -> None:
    assert fields(latency_findings({"latency": {"mode": "predict"}})) == {"latency.table": "error"}
    missing = latency_findings({"latency": {"mode": "predict", "table": str(tmp_path / "no.json")}})
    assert missing[0][0] == "error" and "does not exist" in missing[0][2]


def test_table_from_another_machine_or_setting_warns(table_path: Path, tmp_path: Path) -> None:
    ok: dict[str, Any] = {
        "space": {"name": "nb201", "options": {"C": 4, "N": 1}},
        "latency": {
            "mode": "predict",
            "table": str(table_path),
            "backend": "torch",
            "batch_size": 1,
            "threads": 1,
        },
    }
    msgs = [m for _, _, m in latency_findings(ok)]
    assert not any("another machine" in m or "backend" in m for m in msgs), msgs
    d = json.loads(table_path.read_text())
    d["fingerprint"]["cpu_model"] = "Some Other CPU"
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(d))
    cfg = {**ok, "latency": {**ok["latency"], "table": str(foreign), "threads": 2}}
    text = "\n".join(m for _, _, m in latency_findings(cfg))
    assert "Some Other CPU" in text and "1 thread(s), used with 2" in text


def test_parallel_backends_on_one_thread_warn_and_onnxruntime_parallel_is_explained() -> None:
    one = latency_findings({"latency": {"backend": "torch:parallel", "threads": 1}})
    assert fields(one) == {"latency.threads": "warning"}
    assert latency_findings({"latency": {"backend": "torch:parallel", "threads": 2}}) == []
    ort = latency_findings({"latency": {"backend": "onnxruntime:parallel", "threads": 2}})
    assert fields(ort) == {"latency.backend": "info"}
    assert "one after another" in ort[0][2]


def with_accuracy(table_path: Path, path: Path, accuracy: dict) -> Path:
    """A copy of the table with a chosen held-out score and a quiet build."""
    d = json.loads(table_path.read_text())
    d["accuracy"], d["build_stability"] = accuracy, {"stable": True, "reasons": []}
    d.pop("validation", None)
    path.write_text(json.dumps(d))
    return path


def test_table_verdict_is_an_error_a_warning_or_nothing(table_path: Path, tmp_path: Path) -> None:
    def findings(table: Path, allow: bool = False) -> list[tuple[str, str, str]]:
        latency = {"mode": "predict", "table": str(table), "allow_untrusted_table": allow}
        verdicts = ("do not trust", "cannot tell", "its verdict is")
        return [
            f for f in latency_findings({"latency": latency}) if any(v in f[2] for v in verdicts)
        ]

    score = {"n": 20.0, "mape": 4.0}
    bad = with_accuracy(
        table_path,
        tmp_path / "bad.json",
        {"min/sum": {**score, "within_10pct": 0.3, "kendall_tau": 0.5}},
    )
    ((level, field, msg),) = findings(bad)
    assert (level, field) == ("error", "latency.table") and "do not trust" in msg
    assert "latency.allow_untrusted_table: true" in msg and "30% of 20 models" in msg
    ((level, field, _),) = findings(bad, allow=True)
    assert (level, field) == ("warning", "latency.allow_untrusted_table")
    old = with_accuracy(table_path, tmp_path / "old.json", {})
    ((level, field, msg),) = findings(old)
    assert (level, field) == ("warning", "latency.table") and "cannot tell" in msg
    good = with_accuracy(
        table_path,
        tmp_path / "good.json",
        {"min/sum": {**score, "within_10pct": 1.0, "kendall_tau": 0.95}},
    )
    assert findings(good) == []
