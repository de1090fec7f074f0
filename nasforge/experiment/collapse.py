"""The collapse verdict of a DARTS search, from its per-epoch records alone.

:func:`collapse_verdict` is the one rule the report and ``nasforge show`` print; its
docstring is the contract. :func:`skip_cell_edges` and :func:`op_count` count a derived arch's
collapse cell from the recorded arch (the counts ``CellLayout.op_counts`` of
:mod:`nasforge.oneshot.derive` gives, without building the space).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nasforge.errors import NasforgeError

#: collapse thresholds (see :func:`collapse_verdict`)
EIGEN_GROWTH_LIMIT = 1.0 / 0.75  # RobustDARTS stops when lambda(t - k) / lambda(t) < 0.75
SKIP_NONE_SHARE = 0.5  # a rising skip+none count that reaches half the cell's edges

COLLAPSED = "collapsed"
SIGNAL = "collapse signal"
CLEAR = "no collapse signal"


def skip_cell_edges(arch: Mapping[str, Any]) -> int:
    """How many edges of a derived arch's collapse cell its ``skip_count``/``none_count`` are
    counted over: for a ``darts`` arch (it has a ``normal`` cell) the ``normal/.../op`` labels,
    otherwise (``nb201``) every label. This mirrors ``CellLayout.op_counts`` of
    :mod:`nasforge.oneshot.derive` from the recorded arch alone."""
    return len(_cell_labels(arch))


def op_count(arch: Mapping[str, Any], op: str) -> int:
    """How many edges of a derived arch's collapse cell (see :func:`skip_cell_edges`) use
    ``op``."""
    return sum(1 for k in _cell_labels(arch) if arch[k] == op)


def _cell_labels(arch: Mapping[str, Any]) -> list[str]:
    normal = [k for k in arch if k.startswith("normal/") and k.endswith("/op")]
    return normal if normal else list(arch)


@dataclass(frozen=True)
class CollapseVerdict:
    """The collapse verdict of a DARTS search (see :func:`collapse_verdict`).

    Attributes:
        verdict: ``collapsed``, ``collapse signal`` or ``no collapse signal``.
        reasons: each signal that fired, in words.
        edges: edges of the derived collapse cell (its skip/none count is out of these).
        skip_none_first, skip_none_last: skip + none count of the first and last derived cell.
        eigen_ratio: mean |eigenvalue| of the late window over the early window (``None``
            with fewer than two eigenvalues or an early mean of 0).
        entropy_first, entropy_last: mean entropy of the architecture weights.
        entropy_max: the entropy of uniform weights, ``log(#ops)`` (``None`` when unknown).
        stopped: the search's own early stop message, if any.
    """

    verdict: str
    reasons: tuple[str, ...]
    edges: int
    skip_none_first: int
    skip_none_last: int
    eigen_ratio: float | None
    entropy_first: float | None
    entropy_last: float | None
    entropy_max: float | None
    stopped: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


def eigen_growth(values: Sequence[float | None]) -> float | None:
    """Growth of the dominant Hessian eigenvalue: the mean ``|lambda|`` of the last ``k``
    recorded values over the mean of the first ``k``, ``k = max(1, n // 3)`` of the ``n``
    epochs that have one (RobustDARTS' early-stop signal compares late to early eigenvalues).
    ``None`` with fewer than two values or an early mean of 0."""
    vals = [abs(float(v)) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(vals) < 2:
        return None
    k = max(1, len(vals) // 3)
    early, late = sum(vals[:k]) / k, sum(vals[-k:]) / k
    return late / early if early > 0 else None


def collapse_verdict(
    records: Sequence[Mapping[str, Any]], derived: Mapping[str, Any] | None = None
) -> CollapseVerdict:
    """The collapse verdict of DARTS records (in epoch order; at least one) and, when given,
    of the arch the run derived at the end (``derived``, e.g. by perturbation).

    The rule, on the derived cell's collapse cell (``nb201``: the cell; ``darts``: the normal
    cell) with ``E`` edges (:func:`skip_cell_edges`):

    * ``collapsed``: the last epoch's derived cell, or ``derived``, is all skip/none
      (``skip_count + none_count == E``): the published failure of plain DARTS (an all-skip
      NB201 cell, 54.30 on CIFAR-10).
    * ``collapse signal`` when, without that, any of these fired: the skip + none count rose
      from the first to the last epoch and reached at least ``SKIP_NONE_SHARE * E``; the
      dominant Hessian eigenvalue grew by more than ``EIGEN_GROWTH_LIMIT``
      (:func:`eigen_growth`; RobustDARTS' stop criterion ``lambda(t-k)/lambda(t) < 0.75``);
      the search stopped itself on its skip count (DARTS+'s early stop acted on the signal).
    * ``no collapse signal`` otherwise.

    ``reasons`` lists every rule that fired (the all-skip ones first). The entropy of the
    architecture weights is reported beside it (first, last and the uniform maximum) but
    decides nothing: it falls in every converging search, collapsed or not.

    Raises:
        NasforgeError: no records.
    """
    if not records:
        raise NasforgeError("collapse verdict: no DARTS epoch records")
    first, last = records[0], records[-1]
    edges = skip_cell_edges(last.get("arch") or {})

    def skip_none(r: Mapping[str, Any]) -> int:
        return int(r.get("skip_count") or 0) + int(r.get("none_count") or 0)

    sn_first, sn_last = skip_none(first), skip_none(last)
    ratio = eigen_growth([r.get("hessian_eigenvalue") for r in records])
    stopped = last.get("stopped")
    reasons: list[str] = []
    if edges and sn_last >= edges:
        reasons.append(f"the derived cell is all skip/none ({sn_last} of {edges} edges)")
    if derived:
        d_edges = skip_cell_edges(derived)
        d_sn = op_count(derived, "skip_connect") + op_count(derived, "none")
        if d_edges and d_sn >= d_edges:
            reasons.append(f"the final derived cell is all skip/none ({d_sn} of {d_edges} edges)")
    collapsed = bool(reasons)
    if sn_last > sn_first and sn_last >= SKIP_NONE_SHARE * edges:
        reasons.append(f"skip/none count rose from {sn_first} to {sn_last} of {edges} edges")
    if ratio is not None and ratio > EIGEN_GROWTH_LIMIT:
        reasons.append(
            f"dominant Hessian eigenvalue grew {ratio:.2f}x (limit {EIGEN_GROWTH_LIMIT:.2f}x)"
        )
    if isinstance(stopped, str) and stopped:
        reasons.append(f"the search stopped itself: {stopped}")
    verdict = COLLAPSED if collapsed else SIGNAL if reasons else CLEAR
    cells = last.get("cells") or {}
    ops = next((c.get("ops") for c in cells.values() if c.get("ops")), None)
    return CollapseVerdict(
        verdict=verdict,
        reasons=tuple(reasons),
        edges=edges,
        skip_none_first=sn_first,
        skip_none_last=sn_last,
        eigen_ratio=ratio,
        entropy_first=_float(first.get("entropy")),
        entropy_last=_float(last.get("entropy")),
        entropy_max=math.log(len(ops)) if ops else None,
        stopped=stopped if isinstance(stopped, str) else None,
    )


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) else None


__all__ = [
    "CLEAR",
    "COLLAPSED",
    "EIGEN_GROWTH_LIMIT",
    "SIGNAL",
    "SKIP_NONE_SHARE",
    "CollapseVerdict",
    "collapse_verdict",
    "eigen_growth",
    "op_count",
    "skip_cell_edges",
]
