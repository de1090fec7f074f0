"""The verdict of the latency table a ``predict`` search ranked by reaches the run's report.

A search that predicts latency from a table whose verdict is "cannot tell" used to say so only
as a console warning. Here a real (tiny) nb201 table is measured once; copies of it get chosen
held-out scores, a search predicts from each, and the report must show the table's path, its
verdict, the figures it rests on and the machines — and still show the same verdict when it is
written again after the table file has changed or gone.
"""

from __future__ import annotations

import json
import re
import warnings
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from test_hardware_trust import write_config
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.experiment.config import LatencyConfig, load_config
from nasforge.experiment.latency_verdict import (
    JUDGED_AT_REPORT,
    JUDGED_AT_START,
    TABLE_VERDICT_META,
    record_table_verdict,
    run_table_verdict,
    table_verdict_text,
)
from nasforge.experiment.report import write_report
from nasforge.experiment.setup import make_objective, make_space
from nasforge.experiment.store import TrialStore
from nasforge.hardware.fingerprint import device_fingerprint
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.table import LatencyTable

runner = CliRunner()


@pytest.fixture(scope="module")
def real_table(tmp_path_factory: pytest.TempPathFactory) -> LatencyTable:
    """A small measured nb201 table for the digits input (copies get chosen scores)."""
    from nasforge.hardware.builder import BuildConfig, TableBuilder
    from nasforge.hardware.timing import TimingConfig
    from nasforge.spaces import create_space

    space = create_space("nb201", (1, 8, 8), 10, C=4, N=1)
    path = tmp_path_factory.mktemp("verdict") / "t.json"
    timing = TimingConfig(warmup=0, repeats=3, rounds=1)
    cfg = BuildConfig(calibration_archs=1, held_out_archs=0, timing=timing)
    return TableBuilder(
        space, "torch", 1, cfg, space_options={"C": 4, "N": 1}, progress=False
    ).build(path)


def copy_with(
    table: LatencyTable, path: Path, score: dict[str, float] | None, **fields: Any
) -> Path:
    """``table`` written to ``path`` with the held-out ``score`` (``None``: none at all)."""
    d = table.to_dict()
    keys = ("min/sum", "min/critical_path", "min/schedule", "median/sum")
    d["accuracy"] = {k: dict(score) for k in keys} if score else {}
    d["build_stability"] = {"stable": True, "reasons": []}
    d.pop("validation", None)
    d.update(fields)
    path.write_text(json.dumps(d))
    return path


GOOD = {"n": 20.0, "within_10pct": 0.95, "mape": 3.5, "kendall_tau": 0.93}
POOR = {"n": 20.0, "within_10pct": 0.30, "mape": 25.0, "kendall_tau": 0.50}


def search(tmp_path: Path, table: Path, allow: bool = False, final: bool = False) -> Path:
    """A one-trial digits search predicting latency from ``table`` (the trust tests' config);
    returns its run dir."""
    args = ["search", str(write_config(tmp_path, table, allow)), "--quiet"]
    res = runner.invoke(app, args + ([] if final else ["--no-final"]))
    assert res.exit_code == 0, res.output
    return tmp_path / "runs" / "trust"


def report_of(run: Path) -> tuple[dict[str, Any], str]:
    """report.json, and report.html as its text (tags and runs of spaces made one space)."""
    text = re.sub(r"<[^>]+>", " ", (run / "report.html").read_text())
    html = " ".join(unescape(text).split())
    return json.loads((run / "report.json").read_text()), html


def rewrite_report(run: Path) -> None:
    cfg = load_config(run / "config.yaml")
    with TrialStore(run / "trials.db", create=False) as store:
        space = make_space(cfg, None)
        write_report(run, cfg, store, space, make_objective(cfg))


def test_cannot_tell_is_in_the_report_with_its_table_and_hosts_and_survives_a_rewrite(
    real_table: LatencyTable, tmp_path: Path
) -> None:
    table = copy_with(real_table, tmp_path / "old.json", None, build_stability={})
    run = search(tmp_path, table)
    report, html = report_of(run)
    rec = report["latency_table"]
    assert rec["status"] == "cannot tell" and rec["table"] == str(table)
    assert "no held-out score" in rec["label"] and rec["held_out"] is None
    here = device_fingerprint(1)
    assert rec["this_host"]["summary"] == here.summary()
    assert rec["built_on"]["summary"] == here.summary()  # measured on this machine
    assert "Latency table (the search's predictions)" in html
    assert str(table) in html and "cannot tell (no held-out score" in html
    assert "Every latency the search ranked by was predicted from" in html  # the warning
    assert "nasforge latency validate" in html and here.summary() in html
    assert "the table's verdict: cannot tell" in html  # under the leaderboard's latency_ms

    # the table is rewritten with a perfect score, then deleted: the report keeps the verdict
    # the run was judged by, not today's
    copy_with(real_table, table, GOOD)
    rewrite_report(run)
    assert report_of(run)[0]["latency_table"] == rec
    table.unlink()
    rewrite_report(run)
    again, html = report_of(run)
    assert again["latency_table"] == rec and "cannot tell (no held-out score" in html


def test_a_trusted_table_shows_its_figures_and_no_warning(
    real_table: LatencyTable, tmp_path: Path
) -> None:
    run = search(tmp_path, copy_with(real_table, tmp_path / "good.json", GOOD), final=True)
    report, html = report_of(run)
    assert report["final"]  # the best model's table has the verdict beside its latencies
    assert "the latency table's verdict (the search's) held-out at build: 95%" not in html
    assert "the latency table's verdict (the search's) trust (held-out at build: 95%" in html
    rec = report["latency_table"]
    assert rec["status"] == "trust" and rec["verdict"]["source"] == "held-out"
    assert rec["verdict"]["n"] == 20 and rec["verdict"]["within_10pct"] == pytest.approx(0.95)
    assert rec["held_out"]["kendall_tau"] == pytest.approx(0.93)
    assert "95% of 20 models within +-10%" in html and "Kendall tau 0.93" in html
    assert "Every latency the search ranked by" not in html


def test_an_untrusted_table_used_by_override_is_warned_about(
    real_table: LatencyTable, tmp_path: Path
) -> None:
    foreign = device_fingerprint(1).to_dict()
    foreign.update(cpu_model="Some Other CPU 9000", hostname="elsewhere")
    path = copy_with(real_table, tmp_path / "bad.json", POOR, fingerprint=foreign)
    run = search(tmp_path, path, allow=True)
    report, html = report_of(run)
    rec = report["latency_table"]
    assert rec["status"] == "do not trust" and rec["allowed_untrusted"] is True
    assert rec["built_on"]["host"] == "elsewhere" and "Some Other CPU 9000" in html
    assert any("cpu_model" in m for m in rec["verdict"]["mismatches"])
    assert "30% of 20 models within +-10%" in html
    assert "used because latency.allow_untrusted_table is set" in html


def test_the_verdict_recorded_at_the_start_is_the_one_reported(
    real_table: LatencyTable, tmp_path: Path
) -> None:
    """:func:`record_table_verdict` (the search's start) stores the verdict the run's
    ``LatencyModel`` took; the report reads it instead of judging the table again."""
    table = copy_with(real_table, tmp_path / "old.json", None, build_stability={})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "cannot tell" warns; that is tested elsewhere
        model = LatencyModel("predict", table=str(table))
    with TrialStore(tmp_path / "trials.db") as store:
        # a run that measures (or has no latency model) has no table verdict
        assert record_table_verdict(store, LatencyModel("measure"), False) is None
        assert run_table_verdict(store, LatencyConfig(mode="measure")) is None
        assert store.get_meta(TABLE_VERDICT_META) is None
        rec = record_table_verdict(store, model, False)
        assert rec is not None and rec["judged"] == JUDGED_AT_START
        assert store.get_meta(TABLE_VERDICT_META) == rec
        assert any(kind == "latency_table" for _, kind, _ in store.events())
        # the report reads the stored one, even once the table judges differently
        copy_with(real_table, table, GOOD)
        assert run_table_verdict(store, LatencyConfig(mode="predict", table=str(table))) == rec
    assert table_verdict_text(rec).startswith(f"latency table {table}: cannot tell")
    assert JUDGED_AT_REPORT != JUDGED_AT_START
