"""The report's AutoML sections (issue 15): *Multi-fidelity* (per rung: trials, budget, best
value; each configuration's value against its budget; the best full-fidelity value over wall
time) and *Winning recipe* (the training recipe a joint search chose, and the final's).

Both are absent for a run that has neither budgets in its trials nor ``recipe/...`` labels,
so other reports are unchanged.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

from nasforge.experiment.fidelity_view import (
    BRACKET,
    BUDGET_EPOCHS,
    BUDGET_FRACTION,
    CONFIG_ID,
    RUNG,
    budget_of,
    full_fidelity,
)
from nasforge.experiment.store import TrialRecord
from nasforge.space.joint import split_values
from nasforge.strategies.base import scalar

Table = Callable[[list[list[Any]], list[str]], str]


def _value(t: TrialRecord, metric: str) -> float:
    v = t.metrics.get(metric)
    return float(v) if isinstance(v, (int, float)) else float("nan")


def fidelity_section(trials: list[TrialRecord], metric: str) -> dict[str, Any] | None:
    """The numbers of the *Multi-fidelity* section, ``None`` for a run without budgets.

    ``rungs``: one row per (rung, budget): trials, failed, the best score and ``metric``;
    ``configs``: per configuration (bracket, config id) its ``[budget, metric]`` points in
    epoch-equivalents (epochs x data fraction); ``progress``: ``[seconds, best score at full
    fidelity, best score at any budget]`` after each finished trial."""
    rows = [t for t in trials if t.state in ("complete", "failed") and budget_of(t.metrics)]
    if not rows:
        return None
    groups: dict[tuple[int, float, float], list[TrialRecord]] = {}
    for t in rows:
        key = (int(t.metrics.get(RUNG, 0)), *_budget(t))
        groups.setdefault(key, []).append(t)
    rungs = []
    for (rung, epochs, fraction), members in sorted(
        groups.items(), key=lambda kv: (kv[0][1] * kv[0][2], kv[0][0])
    ):
        done = [t for t in members if t.state == "complete" and t.score is not None]
        best = max(done, key=lambda t: scalar(t.score), default=None)
        rungs.append(
            {
                "rung": rung,
                "epochs": epochs,
                "data_fraction": fraction,
                "trials": len(members),
                "failed": len(members) - len(done),
                "best_score": scalar(best.score) if best is not None else None,
                f"best_{metric}": max((_value(t, metric) for t in done), default=None),
                "best_trial": best.id if best is not None else None,
            }
        )
    configs: dict[str, list[list[float]]] = {}
    for t in sorted(rows, key=lambda t: _budget(t)[0] * _budget(t)[1]):
        if t.state != "complete":
            continue
        name = f"b{int(t.metrics.get(BRACKET, 0))}/c{int(t.metrics.get(CONFIG_ID, 0))}"
        epochs, fraction = _budget(t)
        configs.setdefault(name, []).append([epochs * fraction, _value(t, metric)])
    complete = [t for t in rows if t.state == "complete" and t.score is not None]
    top = {t.id for t in full_fidelity(complete)}
    t0 = min((t.created for t in trials), default=0.0)
    progress, best_full, best_any = [], -math.inf, -math.inf
    for t in sorted(complete, key=lambda t: t.finished or 0.0):
        best_any = max(best_any, scalar(t.score))
        if t.id in top:
            best_full = max(best_full, scalar(t.score))
        progress.append(
            [
                (t.finished or t0) - t0,
                best_full if best_full > -math.inf else None,
                best_any,
            ]
        )
    full_budget = max((_budget(t) for t in complete), default=None)
    return {
        "metric": metric,
        "rungs": rungs,
        "configs": configs,
        "progress": progress,
        "full_budget": {"epochs": full_budget[0], "data_fraction": full_budget[1]}
        if full_budget
        else None,
        "full_fidelity_trials": len(top),
    }


def _budget(t: TrialRecord) -> tuple[float, float]:
    return float(t.metrics.get(BUDGET_EPOCHS, math.nan)), float(t.metrics.get(BUDGET_FRACTION, 1.0))


def recipe_section(
    trials: list[TrialRecord], final: list[dict[str, Any]] | None
) -> dict[str, Any] | None:
    """The *Winning recipe* section of a joint (architecture x recipe) search: the recipe
    labels of the best full-fidelity trial (``searched``) and the final card's full recipe
    (``final``, when the final step ran); ``None`` when no trial has recipe labels."""
    complete = [t for t in trials if t.state == "complete" and t.score is not None]
    if not any(split_values(t.arch)[1] for t in complete):
        return None
    best = max(full_fidelity(complete), key=lambda t: scalar(t.score), default=None)
    card = (final or [{}])[0] if final else {}
    return {
        "trial": best.id if best is not None else None,
        "searched": split_values(best.arch)[1] if best is not None else {},
        "final": card.get("recipe"),
    }


def automl_section(
    trials: list[TrialRecord], metric: str, final: list[dict[str, Any]] | None
) -> dict[str, Any] | None:
    """``{"fidelity": ..., "recipe": ...}`` (either may be ``None``), ``None`` when both are."""
    fidelity = fidelity_section(trials, metric)
    recipe = recipe_section(trials, final)
    if fidelity is None and recipe is None:
        return None
    return {"fidelity": fidelity, "recipe": recipe}


def automl_plots(section: dict[str, Any] | None, png: Callable[[Any], str]) -> dict[str, str]:
    """``fidelity_budget`` (each configuration's value against its budget) and
    ``fidelity_progress`` (best full-fidelity score over wall time) as PNG data URLs."""
    fid = (section or {}).get("fidelity")
    if not fid or not fid["configs"]:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for points in fid["configs"].values():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, "-o", ms=3, lw=1, alpha=0.6)
    budgets = sorted({p[0] for pts in fid["configs"].values() for p in pts})
    if len(budgets) > 1 and budgets[0] > 0:
        ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("budget (epochs x data fraction)")
    ax.set_ylabel(fid["metric"])
    ax.set_title("each configuration's value at each budget")
    out["fidelity_budget"] = png(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    secs = [p[0] for p in fid["progress"]]
    full = [math.nan if p[1] is None else p[1] for p in fid["progress"]]
    ax.step(secs, full, where="post", c="r", label="best at full fidelity")
    anyb = [p[2] for p in fid["progress"]]
    ax.step(secs, anyb, where="post", c="gray", ls="--", label="best at any budget")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    ax.set_title("best full-fidelity score over wall time")
    out["fidelity_progress"] = png(fig)
    return out


def render_automl(section: dict[str, Any] | None, plots: dict[str, str], table: Table) -> str:
    """The sections' HTML ('' when there is nothing to show)."""
    if not section:
        return ""
    parts: list[str] = []
    fid = section.get("fidelity")
    if fid:
        metric = fid["metric"]
        full = fid.get("full_budget") or {}
        parts.append("<h2>Multi-fidelity</h2>")
        parts.append(
            f"<p>{fid['full_fidelity_trials']} trial(s) reached the full budget "
            f"({_n(full.get('epochs'), 'g')} epochs, data fraction "
            f"{_n(full.get('data_fraction'), 'g')}); the best model and the leaderboard come "
            "from those, never from a cheaper rung.</p>"
        )
        rows = [
            [
                r["rung"],
                _n(r["epochs"], "g"),
                _n(r["data_fraction"], "g"),
                r["trials"],
                r["failed"],
                _n(r["best_score"]),
                _n(r[f"best_{metric}"]),
            ]
            for r in fid["rungs"]
        ]
        header = ["rung", "epochs", "data fraction", "trials", "failed", "best score"]
        parts.append(table(rows, [*header, f"best {metric}"]))
        for key, title in (
            ("fidelity_budget", "Value against budget, per configuration"),
            ("fidelity_progress", "Best full-fidelity score over wall time"),
        ):
            if key in plots:
                parts.append(f"<h3>{title}</h3><img src='{plots[key]}'/>")
    rec = section.get("recipe")
    if rec:
        parts.append("<h2>Winning recipe</h2>")
        final = rec.get("final") or {}
        names = list(rec["searched"]) + [k for k in final if k not in rec["searched"]]
        rows = [[k, _show(rec["searched"].get(k, "-")), _show(final.get(k, "-"))] for k in names]
        parts.append(
            f"<p>Searched: the recipe of trial {html.escape(str(rec['trial']))}, the best at "
            "full fidelity; final: the recipe the final model was retrained with.</p>"
        )
        parts.append(table(rows, ["train field", "searched", "final"]))
    return "".join(parts)


def _n(v: Any, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _show(v: Any) -> str:
    return format(v, ".4g") if isinstance(v, float) else str(v)
