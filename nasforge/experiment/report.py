"""`report.json` (numbers for machines) and `report.html` (standalone: plots as inline PNGs).

Latencies the host was too busy to trust are marked, never shown as plain facts: the report's
``latency_stability`` says how many trials' measured latencies stayed unstable (and why) and
gives the final latency's verdict; the HTML shows a warning and marks those figures
``unstable: host busy``.

A search that predicted latency from a table shows the table's verdict beside the latency
figures (``latency_table``: the table, trust / do not trust / cannot tell and why, the
held-out figures, the machine it was built on and this one;
:func:`~nasforge.experiment.latency_verdict.run_table_verdict`), with a warning when the verdict
is not "trust": every latency the search ranked by came from that table.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nasforge.data import RESIZED
from nasforge.errors import NasforgeError
from nasforge.experiment.config import ExperimentConfig
from nasforge.experiment.fidelity_view import full_fidelity
from nasforge.experiment.latency_verdict import (
    UNSTABLE_TRIALS_META,
    card_stability,
    is_unstable,
    run_table_verdict,
    search_summary,
    summary_text,
    table_evidence_text,
    table_is_trusted,
    table_verdict_text,
)
from nasforge.experiment.report_automl import automl_plots, automl_section, render_automl
from nasforge.experiment.report_ofa import OFA_PHASE, ofa_plots, ofa_section, render_ofa
from nasforge.experiment.report_oneshot import (
    oneshot_plots,
    oneshot_section,
    render_oneshot,
    search_cost_seconds,
)
from nasforge.experiment.store import TrialRecord, TrialStore
from nasforge.hardware.noise import UNSTABLE
from nasforge.objectives import Objective, pareto_front
from nasforge.space import SearchSpace
from nasforge.strategies.base import scalar


def leaderboard(store: TrialStore, top: int = 20) -> list[TrialRecord]:
    """The best ``top`` complete trials by score (a multi-fidelity run's at the highest budget
    reached: a cheaper rung's score is not comparable)."""
    complete = full_fidelity([t for t in store.trials(("complete",)) if t.score is not None])
    complete.sort(key=lambda t: -scalar(t.score))
    return complete[:top]


def build_report(
    run_dir: Path, cfg: ExperimentConfig, store: TrialStore, objective: Objective
) -> dict[str, Any]:
    trials = store.trials()
    complete = [t for t in trials if t.state == "complete" and t.score is not None]
    acc_lat = [
        (
            t.metrics.get(objective.metric, float("nan")),
            t.metrics.get(objective.cost_metric, float("nan")),
        )
        for t in complete
    ]
    front = (
        [complete[i].id for i in pareto_front([[a, -c] for a, c in acc_lat])] if complete else []
    )
    final = store.get_meta("final")
    report: dict[str, Any] = {
        "name": cfg.name,
        "config": _config_as_used(cfg),
        "input": store.get_meta("input"),
        "objective": asdict(objective),
        "hardware": store.get_meta("hardware"),
        "dataset": store.get_meta("dataset"),
        "latency_sources": latency_sources(cfg),
        "latency_stability": latency_stability(store, trials, final),
        "latency_table": latency_table(store, cfg),
        "search_cost": {
            "device_seconds": round(search_cost_seconds(store), 1),
            "wall_seconds": round(float(store.get_meta("search_seconds", 0.0) or 0.0), 1),
            "candidates_evaluated": len([t for t in trials if t.state in ("complete", "failed")]),
            "complete": len(complete),
            "failed": len([t for t in trials if t.state == "failed"]),
            "interrupted": len([t for t in trials if t.state == "interrupted"]),
            "executor": cfg.search.executor,
            "workers": cfg.search.workers,
        },
        "leaderboard": [t.to_dict() for t in leaderboard(store)],
        "pareto_front_ids": front,
        "final": final,
        "failed": [
            {"id": t.id, "error": (t.error or "").splitlines()[0] if t.error else ""}
            for t in trials
            if t.state == "failed"
        ],
        "events": [{"time": e[0], "kind": e[1], "message": e[2]} for e in store.events()],
        "trials": [t.to_dict() for t in trials],
    }
    oneshot = oneshot_section(store, cfg)  # weight-sharing runs only: others are unchanged
    if oneshot is not None and set(oneshot["phases"]) != {OFA_PHASE}:  # OFA: its own section
        report["oneshot"] = oneshot
    ofa = ofa_section(run_dir, store, cfg)  # Once-for-All runs only
    if ofa is not None:
        report["ofa"] = ofa
    automl = automl_section(trials, objective.metric, final)  # budgets or a searched recipe
    if automl is not None:
        report["automl"] = automl
    return report


def latency_stability(
    store: TrialStore, trials: list[TrialRecord], final: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """The noise verdicts of the run's measured latencies: ``search`` (how many trials'
    latencies were measured, how many stayed unstable, their ids and reasons; see
    :func:`~nasforge.experiment.latency_verdict.search_summary`) and ``final`` (the best
    model's verdict, ``Stability.to_dict()``, or ``None`` when it has none)."""
    search = search_summary(trials, store.get_meta(UNSTABLE_TRIALS_META))
    f0 = final[0] if final else {}
    return {"search": search, "final": f0.get("latency_stability")}


def latency_table(store: TrialStore, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The verdict of the latency table the search predicted from (``None``: it predicted
    nothing; an OFA run's specialisations carry their own table on their cards)."""
    if not cfg.evaluator.needs_data or cfg.ofa is not None:
        return None
    return run_table_verdict(store, cfg.latency)


def latency_sources(cfg: ExperimentConfig) -> dict[str, str]:
    """Where each latency the report shows comes from, in words: ``search`` (the
    leaderboard's ``latency_ms``, one value per trial, taken during the search) and ``final``
    (the best model's, measured once after retraining)."""
    lat = cfg.latency
    if not cfg.evaluator.needs_data:
        search = f"from the benchmark table ({cfg.evaluator.kind} evaluator's latency column)"
    elif lat.mode == "predict":
        search = (
            f"predicted from the latency table {lat.table} ({lat.statistic or 'its'} statistic)"
        )
    elif lat.mode == "flops":
        search = "not measured (latency.mode: flops; trials report mflops)"
    else:
        search = (
            f"{lat.statistic or 'median'} of {lat.repeats} runs on {lat.backend}, batch "
            f"{lat.batch_size}, {lat.threads} thread(s), measured once per trial during the "
            "search, while other trials may have been training"
        )
    final = (
        f"{lat.statistic or 'median'} of {lat.repeats} runs on {lat.backend}, batch "
        f"{lat.batch_size}, {lat.threads} thread(s), measured once after the final retraining"
        if cfg.evaluator.needs_data
        else search
    )
    if cfg.evaluator.kind == "compressed":  # its trials and its card time the exported model
        from nasforge.evaluators.compressed import timed_backend_name

        try:
            where = timed_backend_name(cfg.evaluator.options.get("backend"), lat.backend)
        except NasforgeError:
            where = "onnxruntime"
        how = (
            f"{lat.statistic or 'median'} of {lat.repeats} runs on {where}, batch "
            f"{lat.batch_size}, {lat.threads} thread(s)"
        )
        search = (
            f"the compressed, exported ONNX model of each trial: {how}, measured once per "
            "trial during the search"
        )
        final = (
            f"the compressed, exported winner: {how}, measured once after the final "
            f"retraining and compression (the float model's on {lat.backend}: "
            "latency_float_ms on the card)"
        )
    return {"search": search, "final": final}


def _config_as_used(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as JSON, without ``data.image_size``/``data.channels`` where the dataset
    ignores them (bundled data and CIFAR-10 have their own shape; only image folders are
    resized), so the report never states an input the networks did not see. The real input
    shape is the report's ``input``."""
    data = cfg.model_dump(mode="json")
    if cfg.data.name not in RESIZED:
        for key in ("image_size", "channels"):
            data["data"].pop(key, None)
    return data


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(store: TrialStore, objective: Objective) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = [t for t in store.trials(("complete",), order="finished") if t.score is not None]
    complete = full_fidelity(complete)  # a multi-fidelity run: the Multi-fidelity section has all
    if not complete:
        return {}
    out = {}
    accs = [t.metrics.get(objective.metric, float("nan")) for t in complete]
    lats = [t.metrics.get(objective.cost_metric, float("nan")) for t in complete]
    front = pareto_front([[a, -c] for a, c in zip(accs, lats)])
    best = max(range(len(complete)), key=lambda i: scalar(complete[i].score))
    fig, ax = plt.subplots(figsize=(6, 4))
    shaky = [i for i, t in enumerate(complete) if is_unstable(t.metrics)]
    steady = [i for i, t in enumerate(complete) if not is_unstable(t.metrics)]
    ax.scatter(
        [lats[i] for i in steady], [accs[i] for i in steady], s=18, alpha=0.6, label="trials"
    )
    if shaky:  # their latency is not a trustworthy figure: drawn apart, never as plain dots
        ax.scatter(
            [lats[i] for i in shaky],
            [accs[i] for i in shaky],
            s=30,
            marker="x",
            c="tab:red",
            label=f"trials, latency {UNSTABLE}",
        )
    fr = sorted(front, key=lambda i: lats[i])
    ax.plot([lats[i] for i in fr], [accs[i] for i in fr], "r-o", ms=4, label="Pareto front")
    ax.scatter(
        [lats[best]],
        [accs[best]],
        marker="*",
        s=200,
        c="gold",
        edgecolors="k",
        label="best",
        zorder=5,
    )
    if objective.target:
        ax.axvline(objective.target, ls="--", c="gray", label=f"target {objective.target:g}")
    ax.set_xlabel(objective.cost_metric)
    ax.set_ylabel(objective.metric)
    ax.legend(fontsize=8)
    ax.set_title("accuracy vs latency")
    out["scatter"] = _png(fig)

    t0 = min(t.created for t in store.trials())
    times = [(t.finished or t0) - t0 for t in complete]
    scores = [scalar(t.score) for t in complete]
    running, cur = [], float("-inf")
    for s in scores:
        cur = max(cur, s)
        running.append(cur)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(times, scores, s=12, alpha=0.5, label="trial score")
    ax.step(times, running, where="post", c="r", label="best so far")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    ax.set_title("search progress")
    out["progress"] = _png(fig)
    return out


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(v: Any, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def _final_latency_label(card: dict[str, Any], sources: dict[str, str]) -> str:
    """How the best model's latency was measured, from its card (else the config)."""
    lat = card.get("latency") or {}
    if not lat:
        return sources.get("final", "")
    return (
        f"{lat.get('statistic')} of {lat.get('repeats')} runs on {lat.get('backend')}, batch "
        f"{lat.get('batch_size')}, {lat.get('threads')} thread(s), measured once after the "
        "final retraining"
    )


def _latency_cell(metrics: dict[str, Any]) -> str:
    """A trial's ``latency_ms`` for a table, marked when its measurement stayed unstable."""
    text = _num(metrics.get("latency_ms"), ".3f")
    return f"{text} ({UNSTABLE})" if is_unstable(metrics) else text


def _final_mark(card: dict[str, Any]) -> str:
    stability = card_stability(card)
    return "" if stability is None or stability.stable else f" ({stability.label})"


def _stability_warnings(report: dict[str, Any]) -> list[str]:
    """Warning paragraphs for unstable latencies (none when every measurement was stable)."""
    verdicts = report.get("latency_stability") or {}
    out = []
    final = card_stability({"latency_stability": verdicts.get("final")})
    if final is not None and not final.stable:
        out.append(
            "<p class='warn'>The best model's final latency is "
            f"{html.escape(final.label)}: it is not a trustworthy figure; measure the model "
            "again on a quiet host.</p>"
        )
    search = summary_text(verdicts.get("search") or {})
    if search:
        out.append(f"<p class='warn'>{html.escape(search)}.</p>")
    table = report.get("latency_table")
    if table is not None and not table_is_trusted(table):
        out.append(
            "<p class='warn'>Every latency the search ranked by was predicted from "
            f"{html.escape(table_verdict_text(table))}: the search's latencies, and the ranking "
            "they gave, may be off by more than +-10% (the best model's final latency is "
            "measured).</p>"
        )
    return out


def _table_verdict_html(record: dict[str, Any] | None) -> str:
    """The "Latency table" section: the table's verdict and what it rests on."""
    if record is None:
        return ""
    v = record.get("verdict") or {}
    built, here = record.get("built_on") or {}, record.get("this_host") or {}
    held = record.get("held_out") or {}
    rows: list[list[Any]] = [
        ["file", record.get("table")],
        ["verdict", record.get("label")],
    ]
    rows += [["note", n] for n in v.get("notes") or ()]
    if "verdict" in record:
        stable = v.get("build_stable")
        build_noise = "not recorded" if stable is None else "stable" if stable else "unstable"
        rows += [
            ["figures the verdict rests on", table_evidence_text(record)],
            [
                "held-out accuracy at build",
                (
                    f"{_num(held.get('within_10pct'), '.0%')} of {held.get('n')} models within "
                    f"+-10%, MAPE {_num(held.get('mape'), '.1f')}%, Kendall tau "
                    f"{_num(held.get('kendall_tau'), '.2f')}"
                )
                if held
                else "none recorded",
            ],
            ["built on", f"{built.get('host') or '?'}: {built.get('summary')}"],
            ["this host", f"{here.get('host') or '?'}: {here.get('summary')}"],
            ["differences", "; ".join(v.get("mismatches") or ()) or "none"],
            ["build measurements", build_noise],
            ["built", record.get("table_created") or "-"],
            ["verdict taken", f"{record.get('judged')} ({record.get('judged_time')})"],
        ]
    return "<h2>Latency table (the search's predictions)</h2>" + _table(rows, ["", "value"])


def render_html(report: dict[str, Any], plots: dict[str, str], space: SearchSpace) -> str:
    cost = report["search_cost"]
    hw = report.get("hardware") or {}
    parts = [
        f"<h1>nasforge run: {html.escape(report['name'])}</h1>",
        f"<p>{html.escape(str(report.get('dataset')))}; objective "
        f"{html.escape(report['objective']['kind'])}</p>",
    ]
    parts += _stability_warnings(report)
    final = report.get("final") or []
    sources = report.get("latency_sources") or {}
    if final:
        f0 = final[0]
        parts.append("<h2>Best model</h2>")
        rows: list[list[Any]] = [
            ["test accuracy (once, on the test split)", _num(f0.get("test_acc"))],
            ["search validation accuracy", _num(f0["search_metrics"].get("val_acc"))],
            [
                f"latency (ms): {_final_latency_label(f0, sources)}",
                _num(f0.get("latency_ms"), ".3f") + _final_mark(f0),
            ],
            [
                f"latency in the search (ms, the leaderboard's): {sources.get('search', '')}",
                _latency_cell(f0["search_metrics"]),
            ],
        ]
        table = report.get("latency_table")
        if table is not None:
            rows.append(["the latency table's verdict (the search's)", table.get("label")])
        if f0.get("latency_ms_predicted") is not None:
            rows.append(
                [
                    "prediction error: latency predicted in search vs measured at the end (%)",
                    _num((f0.get("latency_check") or {}).get("latency_error_pct"), ".1f")
                    + _final_mark(f0),
                ]
            )
        rows += [
            ["ONNX max abs diff vs PyTorch", _num(f0.get("onnx_max_abs_diff"), ".2e")],
            ["params", f0.get("params")],
            ["FLOPs", f0.get("flops")],
            ["size (bytes, BN folded)", f0.get("size_bytes")],
        ]
        parts.append(_table(rows, ["", "value"]))
        parts.append(
            "<p>The two latencies differ because they are two measurements under different "
            "conditions: the search's, once per trial while the search ran; the final one, "
            "of the retrained model on a quiet process. The final one is the model's.</p>"
        )
        parts.append(f"<pre>{html.escape(f0.get('arch_description', ''))}</pre>")
    parts.append(_table_verdict_html(report.get("latency_table")))
    for key, title in (("scatter", "Accuracy vs latency"), ("progress", "Search progress")):
        if key in plots:
            parts.append(f"<h2>{title}</h2><img src='{plots[key]}'/>")
    parts.append(render_oneshot(report.get("oneshot"), plots, _table))
    parts.append(render_ofa(report.get("ofa"), plots, _table))
    parts.append(render_automl(report.get("automl"), plots, _table))
    parts.append("<h2>Leaderboard</h2>")
    rows = [
        [
            t["id"],
            _num(t["score"] if not isinstance(t["score"], list) else t["score"][0]),
            _num(t["metrics"].get("val_acc")),
            _latency_cell(t["metrics"]),
            int(t["metrics"].get("params", 0)),
            _num(t["cost_seconds"], ".1f"),
            t["key"],
        ]
        for t in report["leaderboard"]
    ]
    parts.append(
        _table(rows, ["trial", "score", "val_acc", "latency_ms", "params", "cost s", "key"])
    )
    if sources.get("search"):
        table = report.get("latency_table")
        said = f"; the table's verdict: {table.get('label')}" if table is not None else ""
        parts.append(f"<p>latency_ms: {html.escape(sources['search'] + said)}</p>")
    parts.append("<h2>Search cost</h2>")
    parts.append(
        _table(
            [[k, _num(v, ".1f") if k.endswith("seconds") else v] for k, v in cost.items()]
            + [[f"hardware.{k}", v] for k, v in hw.items()],
            ["", "value"],
        )
    )
    if report["failed"]:
        parts.append("<h2>Failed trials</h2>")
        parts.append(_table([[f["id"], f["error"]] for f in report["failed"]], ["trial", "error"]))
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto}"
        "table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
        "pre{background:#f4f4f4;padding:8px}"
        ".warn{color:#a00;font-weight:bold;border:2px solid #a00;padding:6px}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(report['name'])}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )


def write_report(
    run_dir: Path,
    cfg: ExperimentConfig,
    store: TrialStore,
    space: SearchSpace,
    objective: Objective,
) -> Path:
    report = build_report(run_dir, cfg, store, objective)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    out = run_dir / "report.html"
    plots = {**_plots(store, objective), **oneshot_plots(report.get("oneshot"), _png)}
    plots.update(ofa_plots(report.get("ofa"), _png))
    plots.update(automl_plots(report.get("automl"), _png))
    out.write_text(render_html(report, plots, space))
    return out
