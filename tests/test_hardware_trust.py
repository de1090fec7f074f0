"""`table_verdict`: trust, do not trust or cannot tell, from the evidence a table carries.

Tables here are synthetic records (no layer is measured): their held-out accuracy, build noise
verdict, fingerprint and recorded validation are chosen, and the verdict must follow from them.
The last tests show the verdict enforced where a user meets it: ``LatencyModel`` for API users,
the search's preflight (exit 2, one line) and ``nasforge doctor``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.experiment.config import LatencyConfig
from nasforge.hardware.backends import BackendSpec
from nasforge.hardware.fingerprint import device_fingerprint
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.table import LatencyTable
from nasforge.hardware.trust import (
    DEFAULT_TRUST_POLICY,
    TableVerdict,
    TrustPolicy,
    UntrustedTableError,
    UntrustedTableWarning,
    record_validation,
    recorded_validation,
    table_verdict,
    validation_record,
)

runner = CliRunner()
SPACE = {"name": "nb201", "input_shape": [3, 8, 8], "num_classes": 10, "options": {"C": 4, "N": 1}}
GOOD = {"n": 20.0, "within_10pct": 1.0, "mape": 3.0, "kendall_tau": 0.95}


def acc(within: float, tau: float, n: float = 20.0) -> dict[str, dict[str, float]]:
    return {"min/sum": {"n": n, "within_10pct": within, "mape": 5.0, "kendall_tau": tau}}


def make_table(
    accuracy: dict[str, dict[str, float]] | None = None,
    build_stability: dict[str, Any] | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> LatencyTable:
    table = LatencyTable(
        space=dict(SPACE),
        backend=BackendSpec("torch", 1),
        batch_size=1,
        fingerprint=fingerprint or device_fingerprint(1).to_dict(),
        accuracy=accuracy or {},
        created="2026-12-01T00:00:00+00:00",
    )
    if build_stability is not None:  # a field the builder fills on newer tables
        object.__setattr__(table, "build_stability", build_stability)
    return table


def foreign_fingerprint() -> dict[str, Any]:
    fp = device_fingerprint(1).to_dict()
    fp["cpu_model"] = "Some Other CPU 9000"
    return fp


def test_accurate_held_out_score_on_this_machine_is_trusted() -> None:
    v = table_verdict(make_table(acc(1.0, 0.95)))
    assert v.trusted is True and v.status == "trust" and v.source == "held-out"
    assert v.key == "min/sum" and v.n == 20 and v.kendall_tau == pytest.approx(0.95)
    assert "100% of 20 models" in v.reasons[0] and not v.notes


def test_score_between_floor_and_goal_is_trusted_with_a_note() -> None:
    v = table_verdict(make_table(acc(0.85, 0.86)))
    assert v.trusted is True
    assert any("under the goal of 95%" in n for n in v.notes)


@pytest.mark.parametrize(
    "within, tau, needle",
    [
        (0.0, 0.95, "0% of 20 models within +-10%"),
        (0.43, 0.70, "Kendall tau 0.70"),
        (1.0, float("nan"), "Kendall tau undefined"),
    ],
)
def test_inaccurate_held_out_score_is_not_trusted(within: float, tau: float, needle: str) -> None:
    v = table_verdict(make_table(acc(within, tau)))
    assert v.trusted is False and v.status == "do not trust"
    assert any(needle in r for r in v.reasons), v.reasons


def test_thresholds_are_the_policy_s() -> None:
    table = make_table(acc(0.85, 0.86))
    strict = TrustPolicy(min_within_10pct=0.9, min_kendall_tau=0.9)
    assert table_verdict(table, policy=strict).trusted is False
    assert DEFAULT_TRUST_POLICY.min_within_10pct < DEFAULT_TRUST_POLICY.goal_within_10pct


def test_busy_build_is_not_trusted_even_when_its_score_looks_good() -> None:
    busy = {"stable": False, "reasons": ["30 of 80 entries measured while the host was busy"]}
    v = table_verdict(make_table(acc(1.0, 0.95), build_stability=busy))
    assert v.trusted is False and v.build_stable is False
    assert any("busy host" in r and "30 of 80" in r for r in v.reasons)
    quiet = table_verdict(make_table(acc(1.0, 0.95), build_stability={"stable": True}))
    assert quiet.trusted is True and quiet.build_stable is True


def test_table_from_another_machine_is_not_trusted() -> None:
    v = table_verdict(make_table(acc(1.0, 0.95), fingerprint=foreign_fingerprint()))
    assert v.trusted is False and v.mismatches
    assert any("another machine" in r and "Some Other CPU 9000" in r for r in v.reasons)
    # judged for the machine it was built on, the same table is fine
    same = table_verdict(
        make_table(acc(1.0, 0.95), fingerprint=foreign_fingerprint()),
        fingerprint=foreign_fingerprint(),
    )
    assert same.trusted is True


def test_old_table_without_held_out_score_cannot_tell() -> None:
    v = table_verdict(make_table())
    assert v.trusted is None and v.status == "cannot tell" and "no held-out score" in v.reasons[0]
    few = table_verdict(make_table(acc(1.0, 1.0, n=2)))
    assert few.trusted is None and any("only 2 models" in n for n in few.notes)
    # with no score, another machine is still reason enough to refuse
    assert table_verdict(make_table(fingerprint=foreign_fingerprint())).trusted is False


def test_score_is_read_for_the_aggregation_predictions_use() -> None:
    table = make_table({"min/critical_path": GOOD})  # torch sequential predicts with the sum
    v = table_verdict(table)
    assert v.trusted is None and any("min/critical_path" in n for n in v.notes)
    assert table_verdict(table, mode="critical_path").trusted is True


def record(
    within: float, tau: float, stable: bool = True, n: float = 50.0, **kw: Any
) -> dict[str, Any]:
    stability = {"stable": stable, "reasons": [] if stable else ["reference kernel 1.8x slow"]}
    return validation_record(
        acc(within, tau, n),
        stability,
        kw.get("fingerprint", device_fingerprint(1).to_dict()),
        kw.get("table_created", "2026-12-01T00:00:00+00:00"),
    )


def test_validation_on_a_busy_host_cannot_tell() -> None:
    v = table_verdict(make_table(acc(1.0, 0.95)), record(0.1, 0.2, stable=False))
    assert v.trusted is None and v.host_busy
    assert v.label.startswith("cannot tell: host busy") and "1.8x" in v.label


def test_validation_on_this_machine_outweighs_the_build() -> None:
    table = make_table(acc(1.0, 0.95))
    bad = table_verdict(table, record(0.4, 0.6))
    assert bad.trusted is False and bad.source == "validation"
    # a passing validation here outweighs a table copied from another machine
    foreign = make_table(acc(1.0, 0.95), fingerprint=foreign_fingerprint())
    good = table_verdict(foreign, record(0.98, 0.95))
    assert good.trusted is True and any("validated on this machine" in n for n in good.notes)
    few = table_verdict(table, record(1.0, 1.0, n=3))
    assert few.trusted is None and "only 3 archs" in few.reasons[0]


def test_recorded_validation_is_read_back_and_ignored_when_stale(tmp_path: Path) -> None:
    path = make_table(acc(1.0, 0.95)).save(tmp_path / "t.json")
    record_validation(path, record(0.3, 0.5))
    table = LatencyTable.load(path, warn=False)
    assert recorded_validation(table) is not None
    v = table_verdict(table)
    assert v.trusted is False and v.source == "validation"
    # a record of another build, or from another machine, is not evidence about this one
    record_validation(path, record(0.3, 0.5, table_created="2020-01-01T00:00:00+00:00"))
    v = table_verdict(LatencyTable.load(path, warn=False))
    assert v.trusted is True and v.source == "held-out"
    assert any("another build" in n for n in v.notes)
    record_validation(path, record(0.3, 0.5, fingerprint=foreign_fingerprint()))
    assert table_verdict(LatencyTable.load(path, warn=False)).source == "held-out"


def test_verdict_round_trips_through_json() -> None:
    v = table_verdict(make_table(acc(0.5, 0.95), fingerprint=foreign_fingerprint()))
    d = json.loads(json.dumps(v.to_dict()))
    back = TableVerdict.from_dict(d)
    assert back.trusted is False and back.reasons == v.reasons and back.key == v.key
    assert back.mismatches == v.mismatches and back.within_10pct == pytest.approx(0.5)
    assert math.isnan(TableVerdict.from_dict(table_verdict(make_table()).to_dict()).mape)


# -- enforced where a user meets it --------------------------------------------------------------
@pytest.fixture(scope="module")
def real_table(tmp_path_factory: pytest.TempPathFactory) -> LatencyTable:
    """A small measured nb201 table (its own verdict does not matter: copies get chosen ones)."""
    from nasforge.hardware.builder import BuildConfig, TableBuilder
    from nasforge.hardware.timing import TimingConfig
    from nasforge.spaces import create_space

    space = create_space("nb201", (1, 8, 8), 10, C=4, N=1)  # the shape of the digits data
    path = tmp_path_factory.mktemp("trust") / "t.json"
    cfg = BuildConfig(calibration_archs=3, timing=TimingConfig(warmup=1, repeats=3, rounds=3))
    return TableBuilder(
        space, "torch", 1, cfg, space_options={"C": 4, "N": 1}, progress=False
    ).build(path)


def copy_with(table: LatencyTable, path: Path, within: float, tau: float) -> Path:
    d = table.to_dict()
    d["accuracy"] = {
        k: acc(within, tau)["min/sum"] for k in ("min/sum", "min/critical_path", "min/schedule")
    }
    d["build_stability"] = {"stable": True, "reasons": []}
    d.pop("validation", None)
    path.write_text(json.dumps(d))
    return path


def test_latency_model_refuses_an_untrusted_table_unless_allowed(
    real_table: LatencyTable, tmp_path: Path
) -> None:
    bad = copy_with(real_table, tmp_path / "bad.json", 0.3, 0.5)
    with pytest.raises(UntrustedTableError, match="allow_untrusted_table") as info:
        LatencyModel("predict", table=str(bad))
    assert str(info.value).startswith("latency.table: ") and "\n" not in str(info.value)
    lm = LatencyModel.from_config(
        LatencyConfig(mode="predict", table=str(bad), allow_untrusted_table=True)
    )
    assert lm.verdict is not None and lm.verdict.trusted is False
    good = copy_with(real_table, tmp_path / "good.json", 1.0, 0.95)
    assert LatencyModel("predict", table=str(good)).verdict.trusted is True  # type: ignore[union-attr]


def test_latency_model_warns_when_it_cannot_tell(real_table: LatencyTable, tmp_path: Path) -> None:
    d = real_table.to_dict()
    d["accuracy"], d["build_stability"] = {}, {}
    old = tmp_path / "old.json"
    old.write_text(json.dumps(d))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm = LatencyModel("predict", table=str(old))
    assert lm.verdict is not None and lm.verdict.trusted is None
    assert any(issubclass(w.category, UntrustedTableWarning) for w in caught)


def write_config(tmp_path: Path, table: Path, allow: bool) -> Path:
    cfg = {
        "name": "trust",
        "data": {"name": "digits", "limit": 60},
        "space": {"name": "nb201", "options": {"C": 4, "N": 1}},
        "strategy": {"name": "random"},
        "search": {"trials": 1, "executor": "inline"},
        "train": {"epochs": 1},
        "objective": {"kind": "weighted_product", "target": 1.0, "w": -0.07},
        "latency": {"mode": "predict", "table": str(table), "allow_untrusted_table": allow},
        "final": {"epochs": 0, "export_onnx": False},
        "runs_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / f"cfg_{allow}.yaml"
    path.write_text(json.dumps(cfg))
    return path


def test_search_and_doctor_refuse_an_untrusted_table_and_the_override_allows_it(
    real_table: LatencyTable, tmp_path: Path
) -> None:
    bad = copy_with(real_table, tmp_path / "bad.json", 0.3, 0.5)
    res = runner.invoke(
        app, ["search", str(write_config(tmp_path, bad, False)), "--no-final", "--quiet"]
    )
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "do not trust" in errors[0], res.output
    assert "allow_untrusted_table" in errors[0] and "Traceback" not in res.output
    doc = runner.invoke(app, ["doctor", str(write_config(tmp_path, bad, False))])
    assert doc.exit_code == 1, doc.output  # doctor: error findings exit 1
    text = " ".join(doc.output.split())
    assert text.count("do not trust") == 1 and "error latency.table" in text, doc.output
    allowed = write_config(tmp_path, bad, True)
    doc = runner.invoke(app, ["doctor", str(allowed)])
    text = " ".join(doc.output.split())
    assert "error latency.table" not in text
    assert "warning latency.allow_untrusted_table" in text, doc.output
    res = runner.invoke(app, ["search", str(allowed), "--no-final", "--quiet"])
    assert res.exit_code == 0, res.output
