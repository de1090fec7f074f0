"""Hardware-aware pruning ratios: meet a latency target with the least importance removed.

A :class:`ChannelLatencyTable` records, for each prunable group and a few keep levels, the
latency of the whole model with only that group pruned (everything else intact), as
hardware's latency-table records (:class:`~nasforge.hardware.entries.TableEntry`: median,
IQR, p10, min). The variants are measured by hardware's timing harness on the target backend,
all of them interleaved (:func:`~nasforge.hardware.timing.time_models`), so a burst on a busy
host spreads over all of them instead of ruining one level. Latency of a full choice is
predicted additively from the table (base + sum of per-group deltas); a greedy search then
takes, step by step, the cut that removes the least importance per millisecond saved until
the predicted latency meets the target. The result is an ordinary PruningPlan, so the caller
measures the pruned model on the target to confirm.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nasforge.compression.errors import CompressionError
from nasforge.compression.pruning.graph import ChannelGroup, DependencyGraph
from nasforge.compression.pruning.importance import Importance
from nasforge.compression.pruning.plan import GroupCut, PruningPlan
from nasforge.compression.pruning.pruner import ChannelPruner, ChannelPruningConfig, apply_plan
from nasforge.hardware.backend_base import BackendSpec, as_backend
from nasforge.hardware.entries import ENTRY_TIMING, TableEntry
from nasforge.hardware.timing import STATISTICS, TimingConfig, time_models

MeasureFn = Callable[[nn.Module], float]
"""``measure(model) -> cost`` in the table's unit: a stand-in for measured latency (FLOPs,
an analytic model) where no timing is wanted."""


def _exact(value: float) -> TableEntry:
    """An entry for a value that was computed, not timed (no spread, one sample)."""
    v = float(value)
    return TableEntry(v, 0.0, v, v, 1)


def _entry(value: Any) -> TableEntry:
    if isinstance(value, int | float):  # tables written before entries were records
        return _exact(value)
    return TableEntry.from_list(value)


@dataclass(frozen=True)
class ChannelLatencyTable:
    """Whole-model latency with one group pruned to ``keep`` channels, all else intact.

    Args:
        base: the unpruned model's entry.
        entries: ``(group id, keep, entry)`` per measured level.
        backend: the backend label the entries were measured on (empty for computed costs).
        statistic: which statistic of the entries predictions use (``median``, ``p10``,
            ``min``).
    """

    base: TableEntry
    entries: tuple[tuple[str, int, TableEntry], ...]
    backend: str = ""
    statistic: str = "median"

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise CompressionError(
                f"prune.statistic: {self.statistic!r} is not one of {', '.join(STATISTICS)}"
            )

    @property
    def base_ms(self) -> float:
        """The unpruned model's latency under :attr:`statistic`."""
        return self.base.value_ms(self.statistic)

    def delta(self, group: str, keep: int, size: int) -> float:
        """Latency change (ms, <= 0 when faster) of keeping ``keep`` of ``size`` channels,
        interpolated linearly between measured levels (full size = 0)."""
        measured = [
            (k, e.value_ms(self.statistic) - self.base_ms) for g, k, e in self.entries if g == group
        ]
        pts = sorted([(size, 0.0), *measured])
        if keep >= size:
            return 0.0
        for (k0, d0), (k1, d1) in itertools.pairwise(pts):
            if k0 <= keep <= k1:
                return d0 + (d1 - d0) * (keep - k0) / max(k1 - k0, 1)
        k0, d0 = pts[0]
        return d0 * keep / max(k0, 1) if k0 else d0  # below the lowest level: extrapolate

    def predict_ms(self, keep: dict[str, int], sizes: dict[str, int]) -> float:
        return self.base_ms + sum(self.delta(g, k, sizes[g]) for g, k in keep.items())

    def to_json(self) -> str:
        return json.dumps(
            {
                "base": self.base.to_list(),
                "entries": [[g, k, e.to_list()] for g, k, e in self.entries],
                "backend": self.backend,
                "statistic": self.statistic,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ChannelLatencyTable:
        """Read :meth:`to_json` output (also the older format with plain ms values)."""
        d = json.loads(text)
        base = _entry(d["base"]) if "base" in d else _exact(d["base_ms"])
        entries = tuple((str(g), int(k), _entry(v)) for g, k, v in d["entries"])
        return cls(base, entries, str(d.get("backend", "")), str(d.get("statistic", "median")))


def _levels(g: ChannelGroup, fractions: Sequence[float], round_to: int, min_keep: int) -> list[int]:
    cfg = ChannelPruningConfig(round_to=round_to, min_keep=min_keep)
    pruner = ChannelPruner(_NullImportance(), cfg)
    ks = sorted({pruner._round(g, g.size * f) for f in fractions}, reverse=True)
    return [k for k in ks if k < g.size]


class _NullImportance:
    name = "none"

    def scores(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        return torch.zeros(group.size)


def _single_group_plan(
    g: ChannelGroup, keep_idx: Sequence[int], input_shape: Sequence[int]
) -> PruningPlan:
    cut = GroupCut(
        g.id, g.size, tuple(sorted(int(i) for i in keep_idx)), tuple(m.spec() for m in g.members)
    )
    return PruningPlan((cut,), tuple(input_shape))


def build_latency_table(
    model: nn.Module,
    input_shape: Sequence[int],
    measure: str | BackendSpec | MeasureFn,
    importance: Importance,
    fractions: Sequence[float] = (0.75, 0.5, 0.25),
    round_to: int = 8,
    min_keep: int = 8,
    backend: str = "",
    *,
    batch_size: int = 1,
    timing: TimingConfig = ENTRY_TIMING,
    statistic: str = "median",
) -> ChannelLatencyTable:
    """Measure the model with each prunable group cut to each level (``len(groups) * levels``
    variants plus the base); ``model`` is not modified.

    Args:
        model: the model to prune.
        input_shape: per-sample input shape.
        measure: where to measure: a backend name or :class:`BackendSpec` (every variant
            timed by hardware's harness, interleaved, ``batch_size`` inputs; a name gets one
            thread), or a function ``model -> cost`` for a computed stand-in (FLOPs).
        importance: orders channels, so each level keeps the most important ones.
        fractions: keep levels as fractions of each group's size (rounded like the pruner).
        round_to: channel multiple kept (see :class:`ChannelPruningConfig`).
        min_keep: fewest channels kept per group.
        backend: label stored in the table (default: the measuring backend's label).
        batch_size: leading input dimension of the timed calls.
        timing: the harness settings (default: those of hardware's latency-table entries).
        statistic: what predictions from the table use (``median``, ``p10`` or ``min``).
    """
    graph = DependencyGraph.build(model, input_shape)
    levels: list[tuple[str, int]] = []
    variants: list[nn.Module] = [model]
    for g in graph.prunable:
        order = torch.argsort(importance.scores(model, g), descending=True, stable=True)
        for k in _levels(g, fractions, round_to, min_keep):
            one = _single_group_plan(g, order[:k].tolist(), input_shape)
            variants.append(apply_plan(copy.deepcopy(model), one))
            levels.append((g.id, k))
    if isinstance(measure, str | BackendSpec):
        spec = as_backend(measure, threads=1)
        stats, _ = time_models(
            [functools.partial(_same, m) for m in variants],
            [tuple(input_shape)] * len(variants),
            batch_size,
            spec,
            timing,
            fresh_runners=False,
        )
        found = [TableEntry.from_stats(s) for s in stats]
        backend = backend or spec.label
    else:
        found = [_exact(measure(m)) for m in variants]
    entries = tuple((g, k, e) for (g, k), e in zip(levels, found[1:]))
    return ChannelLatencyTable(found[0], entries, backend, statistic)


def _same(model: nn.Module) -> nn.Module:
    """The variant itself (built once, up front; the backend prepares its own copy)."""
    return model


def latency_aware_plan(
    model: nn.Module,
    input_shape: Sequence[int],
    importance: Importance,
    table: ChannelLatencyTable,
    target_ms: float,
    config: ChannelPruningConfig | None = None,
) -> PruningPlan:
    """Per-group keep counts that meet ``target_ms`` (predicted from ``table``), removing the
    least normalised importance per millisecond saved; ``config`` gives rounding, floors and
    ``ignore`` (its ratio/target are not used).

    Raises:
        CompressionError: the target cannot be met even at the lowest measured levels.
    """
    cfg = config or ChannelPruningConfig()
    graph = DependencyGraph.build(model, input_shape)
    groups = [
        g
        for g in graph.prunable
        if not any(m.module.startswith(p) for m in g.members for p in cfg.ignore)
    ]
    sizes = {g.id: g.size for g in groups}
    levels = {
        g.id: sorted({k for gg, k, _ in table.entries if gg == g.id}, reverse=True) for g in groups
    }
    order, cum = {}, {}
    for g in groups:
        s = importance.scores(model, g).float()
        s = s / s.mean() if float(s.mean()) > 0 else s
        srt, idx = torch.sort(s, descending=True, stable=True)
        order[g.id] = idx
        # cum[k] = importance of the top k channels
        cum[g.id] = torch.cat([torch.zeros(1), torch.cumsum(srt, 0)])
    keep = {g.id: g.size for g in groups}
    pred = table.predict_ms(keep, sizes)
    while pred > target_ms:
        best: tuple[float, str, int] | None = None
        for gid, k in keep.items():
            nxt = [lv for lv in levels[gid] if lv < k]
            if not nxt:
                continue
            k2 = nxt[0]
            saved = table.delta(gid, k, sizes[gid]) - table.delta(gid, k2, sizes[gid])
            if saved <= 0:
                continue
            lost = float(cum[gid][k] - cum[gid][k2])
            cost = lost / saved
            if best is None or cost < best[0]:
                best = (cost, gid, k2)
        if best is None:
            raise CompressionError(
                f"prune.latency_target_ms: {target_ms:.3f} ms cannot be met; the lowest "
                f"predicted latency is {pred:.3f} ms (base {table.base_ms:.3f} ms)"
            )
        keep[best[1]] = best[2]
        pred = table.predict_ms(keep, sizes)
    cuts = tuple(
        GroupCut(
            g.id,
            g.size,
            tuple(sorted(order[g.id][: keep[g.id]].tolist())),
            tuple(m.spec() for m in g.members),
        )
        for g in groups
    )
    return PruningPlan(
        cuts,
        tuple(input_shape),
        importance.name,
        "latency",
        "latency_ms",
        target_ms,
        graph.estimate_macs(),
        graph.estimate_macs(keep),
        (
            (
                f"predicted {pred:.3f} ms from table (base {table.base_ms:.3f} ms, "
                f"backend {table.backend or 'unspecified'})"
            ),
        ),
    )
