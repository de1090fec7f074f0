"""HTML report of a compression run: the stage table, warnings, and inline PNG plots.

Speed-ups are shown as measured: ``2.63x [2.51, 2.76]`` (the 95% interval of the paired
rounds), or in red ``unstable: host busy (<reasons>)`` when the host was too busy to trust
them; the verdict line says when "faster than the original" could not be decided.

Below the table: which artifact was shipped (``model.deploy.onnx``) and why, every stage
against every earlier stage (paired speed-up and verdict: faster / slower / no measurable
difference / undecided), and the per-layer INT8 decisions (:func:`layer_decisions`: which
layers stayed float and why).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from nasforge.compression.results import CompressionReport, StageResult

#: keys under which a stage's ``details()`` may list its per-layer INT8 decisions
DECISION_KEYS = ("int8_layers", "layer_decisions", "int8_decisions", "layers")


def _decision(raw: object) -> dict[str, str] | None:
    """One decision normalised to name, op, precision (``int8``/``float``), reason,
    measured; ``None`` when ``raw`` is not a decision record."""
    if not isinstance(raw, dict):
        return None
    name = raw.get("name", raw.get("layer"))
    if name is None:
        return None
    prec = raw.get("precision", raw.get("decision", raw.get("quantized", raw.get("int8"))))
    if isinstance(prec, bool):
        prec = "int8" if prec else "float"
    measured = raw.get("measured", "")
    if isinstance(measured, float):
        measured = f"{measured:.4g}"
    elif isinstance(measured, dict):
        measured = ", ".join(f"{k}: {v}" for k, v in measured.items())
    return {
        "name": str(name),
        "op": str(raw.get("op", raw.get("op_kind", raw.get("kind", "")))),
        "precision": "" if prec is None else str(prec),
        "reason": str(raw.get("reason", "")),
        "measured": "" if measured is None else str(measured),
    }


def layer_decisions(report: CompressionReport) -> list[dict[str, str]]:
    """The per-layer INT8 decisions of the (last) INT8 stage: name, op, precision
    (``int8``/``float``), reason and what was measured, from the stage result's
    ``details()`` (the first of :data:`DECISION_KEYS` holding a list of records)."""
    for o in reversed(report.outputs):
        found = o.details()
        for key in DECISION_KEYS:
            raw = found.get(key)
            if isinstance(raw, (list, tuple)) and raw:
                rows = [d for d in (_decision(r) for r in raw) if d is not None]
                if rows:
                    return rows
    raw = report.details.get(DECISION_KEYS[0])
    if isinstance(raw, list):
        return [d for d in (_decision(r) for r in raw) if d is not None]
    return []


def float_layers_text(report: CompressionReport) -> list[str]:
    """One line per layer that stayed float, with its reason (for the console)."""
    return [
        f"{d['name']} ({d['op']}): float, {d['reason'] or 'no reason given'}"
        for d in layer_decisions(report)
        if d["precision"].lower() not in ("int8", "quantized", "true")
    ]


def _png(fig: object) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")  # type: ignore[attr-defined]
    return base64.b64encode(buf.getvalue()).decode()


def _plots(report: CompressionReport) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = []
    timed = [s for s in report.stages if s.latency_ms]
    if timed:
        batch_sizes = sorted({bs for s in timed for bs in s.latency_ms})
        fig, axes = plt.subplots(1, len(batch_sizes), figsize=(4 * len(batch_sizes), 3))
        axes = axes if len(batch_sizes) > 1 else [axes]
        for ax, bs in zip(axes, batch_sizes):
            ax.bar([s.name for s in timed], [s.latency_ms.get(bs, 0.0) for s in timed])
            ax.set_title(f"latency, batch {bs} (ms)")
            ax.tick_params(axis="x", rotation=30)
        imgs.append(_png(fig))
        plt.close(fig)
    sized = [s for s in report.stages if s.size_bytes > 0]
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.scatter([s.size_bytes / 1024 for s in sized], [s.test_accuracy * 100 for s in sized])
    for s in sized:
        ax.annotate(s.name, (s.size_bytes / 1024, s.test_accuracy * 100), fontsize=7)
    ax.set_xlabel("size (KiB)")
    ax.set_ylabel("test top-1 (%)")
    imgs.append(_png(fig))
    plt.close(fig)
    curve = report.details.get("imp_curve")
    if isinstance(curve, list) and curve:
        fig, ax = plt.subplots(figsize=(4.5, 3))
        ax.plot(
            [r["sparsity"] * 100 for r in curve], [r["val_acc"] * 100 for r in curve], marker="o"
        )
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("val top-1 (%)")
        ax.set_title("iterative magnitude pruning")
        imgs.append(_png(fig))
        plt.close(fig)
    return imgs


def _speedup_cell(s: StageResult, bs: int) -> str:
    label = s.speedup_label.get(bs)
    if label is None:  # a report written before intervals existed
        return f"<td>{s.speedup.get(bs, 0):.2f}x</td>"
    if s.speedup_stable.get(bs, False):
        return f"<td>{html.escape(label)}</td>"
    return f"<td><b style='color:#b00'>{html.escape(label)}</b></td>"


def render_html(report: CompressionReport) -> str:
    """The report page: verdict, warnings, the stage table (latency and speed-up with its
    95% interval per batch size, or the unstable verdict) and the plots."""
    batch_sizes = sorted({bs for s in report.stages for bs in s.latency_ms})
    head = "".join(
        f"<th>latency b{bs} (ms)</th><th>speed-up b{bs} [95% interval]</th>" for bs in batch_sizes
    )
    rows = []
    for s in report.stages:
        cells = "".join(
            f"<td>{s.latency_ms[bs]:.3f}</td>{_speedup_cell(s, bs)}"
            if bs in s.latency_ms
            else "<td>-</td><td>-</td>"
            for bs in batch_sizes
        )
        rows.append(
            f"<tr><td>{html.escape(s.name)}</td><td>{s.test_accuracy * 100:.2f}</td>"
            f"<td>{s.size_bytes / 1024:.1f}</td>{cells}"
            f"<td>{html.escape('; '.join(s.notes))}</td></tr>"
        )
    warn = "".join(f"<li><b>{html.escape(w)}</b></li>" for w in report.warnings)
    shipped = (
        f"<p>shipped: <b>{html.escape(report.shipped)}</b> as "
        f"{html.escape(report.shipped_artifact)} ({html.escape(report.shipped_reason)})</p>"
        if report.shipped
        else ""
    )
    imgs = "".join(f'<img src="data:image/png;base64,{b}"/>' for b in _plots(report))
    verdict = (
        html.escape(report.verdict)
        if report.deployable
        else f"<b style='color:#b00'>{html.escape(report.verdict)}</b>"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>nasforge compression</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:3px 6px}"
        "table{border-collapse:collapse}</style></head><body>"
        f"<h1>Compression report</h1><p>{verdict}</p>"
        + (f"<h2>Warnings</h2><ul>{warn}</ul>" if warn else "")
        + "<table><tr><th>stage</th><th>test top-1 (%)</th><th>size (KiB)</th>"
        f"{head}<th>notes</th></tr>{''.join(rows)}</table>{shipped}"
        f"{_comparisons_html(report)}{_decisions_html(report)}{imgs}</body></html>"
    )


def _comparisons_html(report: CompressionReport) -> str:
    """Every stage against every earlier stage, per batch size (same interleaved pass)."""
    if not report.comparisons:
        return ""
    rows = []
    for c in report.comparisons:
        style = " style='color:#b00'" if c.verdict in ("slower", "undecided") else ""
        rows.append(
            f"<tr><td>{html.escape(c.stage)}</td><td>{html.escape(c.earlier)}</td>"
            f"<td>{c.batch_size}</td><td>{html.escape(c.label)}</td>"
            f"<td{style}>{html.escape(c.verdict)}</td></tr>"
        )
    return (
        "<h2>Every stage against every earlier stage</h2><p>speed-up = earlier / this, "
        "paired over the rounds of one interleaved pass, with its 95% interval</p>"
        "<table><tr><th>stage</th><th>vs earlier</th><th>batch</th>"
        f"<th>speed-up [95% interval]</th><th>verdict</th></tr>{''.join(rows)}</table>"
    )


def _decisions_html(report: CompressionReport) -> str:
    """The per-layer INT8 decisions (which layers stayed float and why)."""
    decisions = layer_decisions(report)
    if not decisions:
        return ""
    n_float = sum(d["precision"].lower() not in ("int8", "quantized", "true") for d in decisions)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(d[k])}</td>" for k in DECISION_COLUMNS) + "</tr>"
        for d in decisions
    )
    return (
        f"<h2>INT8 decisions per layer</h2><p>{n_float} of {len(decisions)} layers stayed "
        "float</p><table><tr>"
        + "".join(f"<th>{k}</th>" for k in DECISION_COLUMNS)
        + f"</tr>{rows}</table>"
    )


DECISION_COLUMNS = ("name", "op", "precision", "reason", "measured")


def write_html(report: CompressionReport, path: str | Path) -> Path:
    """Write :func:`render_html` of ``report`` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(render_html(report))
    return path
