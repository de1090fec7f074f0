"""Hardware checks for `nasforge doctor CONFIG`: proxies used as latency, tables that do not
belong to this machine, space or settings.

:func:`latency_findings` reads the experiment config's ``objective``, ``latency`` and
``space`` sections (pydantic models or mappings) and returns ``(level, field, message)``
triples; the experiment's doctor turns them into its findings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nasforge.errors import NasforgeError
from nasforge.hardware.table import LatencyTable, check_table
from nasforge.hardware.trust import table_verdict, trust_finding
from nasforge.spaces import create_space

PROXIES = ("flops", "mflops", "params", "size_bytes", "macs")


def _get(section: Any, key: str, default: Any = None) -> Any:
    if section is None:
        return default
    if isinstance(section, Mapping):
        return section.get(key, default)
    return getattr(section, key, default)


def latency_findings(cfg: Any) -> list[tuple[str, str, str]]:
    """Findings about how a config obtains latency.

    Warns when FLOPs or params stand in for latency (as the cost metric, or
    ``latency.mode: flops``) and when a parallel backend gets one thread (notes that
    onnxruntime's parallel mode does not overlap branches on CPU); for ``latency.mode:
    predict``, an error when the table is missing or the space describes no layer plan, the
    table's verdict (:func:`~nasforge.hardware.trust.trust_finding`: an error for "do not
    trust" unless ``latency.allow_untrusted_table``, a warning for "cannot tell"), and a
    warning for every other :func:`check_table` problem (other backend / batch size /
    threads, missing layers, no calibration, noisy entries; a fingerprint from another
    machine when the verdict does not already say so).
    """
    objective, latency, space = _get(cfg, "objective"), _get(cfg, "latency"), _get(cfg, "space")
    out: list[tuple[str, str, str]] = []
    cost = str(_get(objective, "cost_metric", "latency_ms"))
    kind = str(_get(objective, "kind", "accuracy"))
    if cost in PROXIES and kind != "accuracy":
        out.append(
            (
                "warning",
                "objective.cost_metric",
                (
                    f"{cost} is optimised as a latency proxy; FLOPs and params rank latency poorly "
                    "(`nasforge latency validate` prints their Kendall tau beside the table's); "
                    "use latency_ms measured or predicted from a table"
                ),
            )
        )
    backend = str(_get(latency, "backend", "torch"))
    threads = int(_get(latency, "threads", 1) or 1)
    if backend.endswith(":parallel") and threads == 1:
        out.append(
            (
                "warning",
                "latency.threads",
                (
                    f"{backend} with 1 thread runs a cell's branches one at a time; set "
                    "latency.threads to the cores the deployment uses"
                ),
            )
        )
    if backend == "onnxruntime:parallel":
        out.append(
            (
                "info",
                "latency.backend",
                (
                    "onnxruntime's parallel mode runs CPU branches one after another (since 1.14, "
                    "microsoft/onnxruntime#16158), so it times like the sequential mode; "
                    "torch:parallel really overlaps a cell's branches"
                ),
            )
        )
    mode = str(_get(latency, "mode", "measure"))
    if mode in PROXIES:
        out.append(
            (
                "warning",
                "latency.mode",
                f"latency.mode {mode!r} reports a proxy as latency, not a measurement",
            )
        )
    if mode != "predict":
        return out
    table = _get(latency, "table")
    if not table:
        out.append(
            (
                "error",
                "latency.table",
                ("latency.mode 'predict' needs a table (`nasforge latency build --out TABLE`)"),
            )
        )
        return out
    if not Path(str(table)).is_file():
        out.append(("error", "latency.table", f"{table} does not exist"))
        return out
    sp = None
    name = _get(space, "name")
    said_machine = False
    try:
        tab = LatencyTable.load(str(table), warn=False)
        verdict = table_verdict(tab, statistic=_get(latency, "statistic"))
        found = trust_finding(  # the path as the run's LatencyModel names it
            verdict, str(Path(str(table))), bool(_get(latency, "allow_untrusted_table", False))
        )
        if found is not None:
            out.append(found)
        said_machine = bool(verdict.mismatches) and verdict.trusted is not True
    except NasforgeError:
        pass  # check_table reports the unreadable table
    if name is not None:
        try:
            tab = LatencyTable.load(str(table), warn=False)
            sp = create_space(
                str(name),
                tab.input_shape,
                int(tab.space.get("num_classes", 10)),
                **dict(_get(space, "options", {}) or {}),
            )
            if not sp.has_plan:
                out.append(
                    (
                        "error",
                        "space.name",
                        (
                            f"space {name!r} describes no layer plan (SearchSpace.plan); use "
                            "latency.mode: measure"
                        ),
                    )
                )
                sp = None
        except NasforgeError:
            sp = None  # check_table reports the unreadable table
    for msg in check_table(
        str(table),
        space=sp,
        backend=_get(latency, "backend"),
        batch_size=_get(latency, "batch_size"),
        threads=_get(latency, "threads"),
    ):
        if not (said_machine and "measured on another machine" in msg):
            out.append(("warning", "latency.table", msg))
    return out
