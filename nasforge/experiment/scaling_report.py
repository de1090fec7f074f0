"""What ``nasforge scale`` concludes and shows: the dominance check of the compound family
over the single-dimension baselines, and ``scaling.png`` / ``scaling.html``.

The check (:func:`dominance`): at each family point's measured latency, a baseline's
accuracy linearly interpolated between its own measured points must not exceed the family's
(a family point outside a baseline's latency range is not compared, and says so).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: the curves of a results file, in plotting order
CURVES = ("family", "width", "depth", "resolution")
PLOT_NAME = "scaling.png"
HTML_NAME = "scaling.html"


@dataclass(frozen=True)
class Comparison:
    """One family point against one baseline at the family point's latency.

    Attributes:
        label: the family point (``B2``).
        latency_ms: its measured latency.
        family_acc: its accuracy.
        baseline_acc: the baseline's accuracy interpolated at ``latency_ms``; ``None`` when
            the latency is outside the baseline's measured range (not compared).
        ok: the family point is at least as accurate (``None`` when not compared).
    """

    label: str
    latency_ms: float
    family_acc: float
    baseline_acc: float | None
    ok: bool | None


def interpolate(curve: Sequence[tuple[float, float]], x: float) -> float | None:
    """The y of ``curve`` (points ``(x, y)``, any order) at ``x`` by linear interpolation
    between the neighbouring points; ``None`` outside ``[min x, max x]``. Points sharing an x
    are averaged."""
    by_x: dict[float, list[float]] = {}
    for px, py in curve:
        by_x.setdefault(float(px), []).append(float(py))
    pts = sorted((px, sum(ys) / len(ys)) for px, ys in by_x.items())
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]  # a single point at exactly x


def dominance(
    family: Sequence[tuple[str, float, float]],
    baseline: Sequence[tuple[float, float]],
    margin: float = 0.0,
) -> list[Comparison]:
    """Compare each family point ``(label, latency_ms, acc)`` with ``baseline``'s points
    ``(latency_ms, acc)`` interpolated at the same latency: ``ok`` when
    ``family_acc >= baseline_acc - margin``."""
    out = []
    for label, lat, acc in family:
        base = interpolate(baseline, lat)
        ok = None if base is None else acc >= base - margin
        out.append(Comparison(label, float(lat), float(acc), base, ok))
    return out


def dominates(comparisons: Sequence[Comparison]) -> bool:
    """At least one point compared and none worse than the baseline."""
    compared = [c for c in comparisons if c.ok is not None]
    return bool(compared) and all(c.ok for c in compared)


def curves(results: Mapping[str, Any], metric: str = "test_acc") -> dict[str, list[Any]]:
    """Per curve (``family``, and each baseline present), its points ``(label, latency_ms,
    acc)`` sorted by latency, from a results file (points without the metric are left out)."""
    points = results.get("points", {})
    out: dict[str, list[Any]] = {}
    for name in CURVES:
        members = results.get("family", []) if name == "family" else None
        if members is None:
            if name not in results.get("baselines", {}):
                continue
            members = results["baselines"][name]
        rows = []
        for m in members:
            p = points.get(m["key"], {})
            if isinstance(p.get(metric), (int, float)) and isinstance(
                p.get("latency_ms"), (int, float)
            ):
                rows.append((m["label"], float(p["latency_ms"]), float(p[metric])))
        out[name] = sorted(rows, key=lambda r: r[1])
    return out


def dominance_summary(results: Mapping[str, Any], metric: str = "test_acc") -> dict[str, Any]:
    """Per baseline: the comparisons of the family's scaled points (B1..Bk) and whether the
    family dominates it (see :func:`dominance`), from a results file."""
    cs = curves(results, metric)
    # B0 is every baseline's first point too: comparing it with itself proves nothing
    first = (results.get("family") or [{}])[0].get("label")
    family = [row for row in cs.get("family", []) if row[0] != first]
    out: dict[str, Any] = {"metric": metric}
    for name, rows in cs.items():
        if name == "family":
            continue
        comps = dominance(family, [(lat, acc) for _, lat, acc in rows])
        out[name] = {
            "dominated": dominates(comps),
            "compared": sum(c.ok is not None for c in comps),
            "comparisons": [asdict(c) for c in comps],
        }
    return out


def write_plot(results: Mapping[str, Any], out: Path, metric: str = "test_acc") -> Path | None:
    """``scaling.png``: accuracy vs measured latency, the family against the baselines.
    ``None`` when matplotlib is missing (the HTML then has the tables only)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    styles = {"family": ("-o", 2.5), "width": ("--s", 1.2), "depth": ("--^", 1.2)}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, rows in curves(results, metric).items():
        if not rows:
            continue
        style, lw = styles.get(name, ("--v", 1.2))
        xs, ys = [r[1] for r in rows], [100 * r[2] for r in rows]
        ax.plot(xs, ys, style, lw=lw, label="compound (B0..Bk)" if name == "family" else name)
        if name == "family":
            for label, x, y in rows:
                ax.annotate(label, (x, 100 * y), textcoords="offset points", xytext=(4, -10))
    lat = results.get("latency", {})
    ax.set_xlabel(
        f"measured latency, ms ({lat.get('statistic', 'median')} on "
        f"{lat.get('backend', '?')}, batch {lat.get('batch_size', 1)})"
    )
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_title("compound scaling vs single-dimension scaling")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / PLOT_NAME
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def write_html(results: Mapping[str, Any], out: Path, plot: Path | None) -> Path:
    """``scaling.html``: the plot, the grid, the family and baselines, the dominance check."""
    points = results.get("points", {})
    e = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>nasforge scale</title>",
        "<style>body{font-family:sans-serif;max-width:60em}td,th{padding:2px 8px;"
        "text-align:right}</style>",
        f"<h1>Compound scaling: {e(str(results.get('name', '')))}</h1>",
        f"<p>{e(str(results.get('dataset', '')))}; host {e(str(results.get('host', '')))}</p>",
    ]
    if plot is not None:
        parts.append(f"<img src='{e(plot.name)}' alt='accuracy vs latency'>")
    chosen = results.get("chosen")
    if chosen:
        parts.append(
            f"<p>chosen (best validation accuracy at phi=1): alpha {chosen['alpha']}, "
            f"beta {chosen['beta']}, gamma {chosen['gamma']}</p>"
        )

    def table(title: str, rows: list[tuple[str, str]]) -> None:
        parts.append(
            f"<h2>{e(title)}</h2><table><tr><th>point</th><th>depth</th><th>width"
            "</th><th>resolution</th><th>val acc</th><th>test acc</th><th>latency ms"
            "</th><th>stable</th><th>params</th></tr>"
        )
        for label, key in rows:
            p = points.get(key, {})
            parts.append(
                f"<tr><td>{e(label)}</td><td>{_num(p.get('depth'), '.3f')}</td>"
                f"<td>{_num(p.get('width'), '.3f')}</td><td>{_num(p.get('resolution'), '.3f')}"
                f"</td><td>{_num(p.get('val_acc'), '.4f')}</td>"
                f"<td>{_num(p.get('test_acc'), '.4f')}</td>"
                f"<td>{_num(p.get('latency_ms'), '.3f')}</td>"
                f"<td>{e(str(p.get('latency_verdict', '-')))}</td>"
                f"<td>{_num(p.get('params'), '.0f')}</td></tr>"
            )
        parts.append("</table>")

    table("grid (phi = 1)", [(g["label"], g["key"]) for g in results.get("grid", [])])
    table("family", [(f["label"], f["key"]) for f in results.get("family", [])])
    for name, members in results.get("baselines", {}).items():
        table(f"{name}-only", [(m["label"], m["key"]) for m in members])
    dom = results.get("dominance") or {}
    if dom:
        parts.append(f"<h2>dominance ({e(str(dom.get('metric')))} at equal latency)</h2><ul>")
        for name in CURVES[1:]:
            if name in dom:
                d = dom[name]
                parts.append(
                    f"<li>{name}-only: {'dominated' if d['dominated'] else 'NOT dominated'} "
                    f"({d['compared']} family points compared)</li>"
                )
        parts.append("</ul>")
    path = out / HTML_NAME
    path.write_text("\n".join(parts))
    return path
