"""HTML report of a compression run: the stage table, warnings, and inline PNG plots.

Speed-ups are shown as measured: ``2.63x [2.51, 2.76]`` (the 95% interval of the paired
rounds), or in red ``unstable: host busy (<reasons>)`` when the host was too busy to trust
them; the verdict line says when "faster than the original" could not be decided.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from nasforge.compression.results import CompressionReport, StageResult


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
        f"{head}<th>notes</th></tr>{''.join(rows)}</table>{imgs}</body></html>"
    )


def write_html(report: CompressionReport, path: str | Path) -> Path:
    """Write :func:`render_html` of ``report`` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(render_html(report))
    return path
