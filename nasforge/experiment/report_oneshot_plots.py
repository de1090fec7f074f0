"""The plots of the report's ``oneshot`` section (:mod:`nasforge.experiment.report_oneshot`
builds the section; ``oneshot_plots`` is re-exported there): DARTS' architecture weights per
cell (one panel per edge, titled by its nodes, "node 0 -> node 1"), its collapse diagnostics,
and the single-path supernet's training loss. matplotlib is imported only when a plot is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any


def oneshot_plots(section: Mapping[str, Any] | None, png: Callable[[Any], str]) -> dict[str, str]:
    """PNG data URLs (``png`` turns a matplotlib figure into one) of the section: per cell
    ``weights:<cell>`` (one panel per edge, op probability vs epoch), ``collapse`` (skip/none
    count, entropy, dominant Hessian eigenvalue, supernet validation accuracy, and latency
    when recorded) and ``supernet_loss``."""
    if not section:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out: dict[str, str] = {}
    darts = section.get("darts")
    if darts:
        for cell, t in darts["trajectories"].items():
            n_edges = max((len(w) for w in t["weights"]), default=0)
            if not n_edges:
                continue
            cols = min(4, n_edges)
            rows = math.ceil(n_edges / cols)
            fig, axes = plt.subplots(
                rows,
                cols,
                figsize=(3 * cols, 2.4 * rows),
                squeeze=False,
                sharey=True,
                layout="constrained",
            )
            for e in range(rows * cols):
                ax = axes[e // cols][e % cols]
                if e >= n_edges:
                    ax.axis("off")
                    continue
                for o, op in enumerate(t["ops"]):
                    ys = [w[e][o] if e < len(w) else float("nan") for w in t["weights"]]
                    ax.plot(t["epochs"], ys, marker=".", label=op)
                names = t.get("edge_names") or []
                ax.set_title(names[e] if e < len(names) else f"edge {e}", fontsize=9)
                ax.set_xlabel("epoch", fontsize=8)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes[0][0].set_ylabel("op probability")
            axes[0][0].legend(fontsize=7)
            fig.suptitle(f"architecture weights ({cell}): op probability per edge (src -> dst)")
            out[f"weights:{cell}"] = png(fig)
        ep = [r["epoch"] for r in darts["epochs"]]

        def series(name: str) -> list[float]:
            return [_nan(r.get(name)) for r in darts["epochs"]]

        panels: list[tuple[str, list[tuple[str, list[float]]]]] = [
            (
                "derived cell: skip / none count",
                [("skip", series("skip_count")), ("none", series("none_count"))],
            ),
            ("entropy of the architecture weights", [("entropy", series("entropy"))]),
            (
                "dominant Hessian eigenvalue"
                + (
                    ""
                    if any(r.get("hessian_eigenvalue") is not None for r in darts["epochs"])
                    else " (not computed)"
                ),
                [("eigenvalue", series("hessian_eigenvalue"))],
            ),
            ("supernet validation accuracy", [("val_acc", series("val_acc"))]),
        ]
        if any("expected_latency_ms" in r for r in darts["epochs"]):
            panels.append(
                (
                    "latency (ms)",
                    [
                        ("expected", series("expected_latency_ms")),
                        ("derived", series("derived_latency_ms")),
                    ],
                )
            )
        fig, axes = plt.subplots(
            1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False, layout="constrained"
        )
        for ax, (title, lines) in zip(axes[0], panels):
            for label, ys in lines:
                ax.plot(ep, ys, marker="o", ms=3, label=label)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.ticklabel_format(axis="y", useOffset=False, style="plain")
            if title.startswith("derived cell"):  # the collapse line: every edge skip/none
                edges = darts["collapse"]["edges"]
                ax.axhline(edges, ls="--", c="gray", label=f"all {edges} edges")
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            if len(lines) > 1 or title.startswith("derived cell"):
                ax.legend(fontsize=7)
        fig.suptitle(f"collapse diagnostics: {darts['collapse']['verdict']}")
        out["collapse"] = png(fig)
    sn = section.get("supernet")
    if sn:
        ep = [r["epoch"] for r in sn["epochs"]]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(ep, [_nan(r.get("loss")) for r in sn["epochs"]], "o-", label="training loss")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("training loss (mean over paths)")
        ax2 = ax.twinx()
        ax2.plot(ep, [_nan(r.get("lr")) for r in sn["epochs"]], "--", c="gray", label="lr")
        ax2.set_ylabel("learning rate")
        ax.set_title(f"supernet training ({sn['sampling']} sampling)")
        out["supernet_loss"] = png(fig)
    return out


def _nan(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


__all__ = ["oneshot_plots"]
