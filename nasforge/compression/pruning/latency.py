"""Hardware-aware pruning ratios: meet a latency target with the least importance removed.

A :class:`ChannelLatencyTable` records, for each prunable group and a few keep levels, the
latency measured with only that group pruned (everything else intact). Latency of a full
choice is predicted additively from the table (base + sum of per-group deltas); a greedy
search then takes, step by step, the cut that removes the least importance per millisecond
saved until the predicted latency meets the target. The result is an ordinary PruningPlan,
so the caller measures the pruned model on the target to confirm.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from nasforge.compression.errors import CompressionError
from nasforge.compression.pruning.graph import ChannelGroup, DependencyGraph
from nasforge.compression.pruning.importance import Importance
from nasforge.compression.pruning.plan import GroupCut, PruningPlan
from nasforge.compression.pruning.pruner import ChannelPruner, ChannelPruningConfig, apply_plan

MeasureFn = Callable[[nn.Module], float]
"""``measure(model) -> latency_ms`` on the target backend (median of repeats)."""


@dataclass(frozen=True)
class ChannelLatencyTable:
    """Measured latency (ms) with one group pruned to ``keep`` channels, all else intact."""

    base_ms: float
    entries: tuple[tuple[str, int, float], ...]
    backend: str = ""

    def delta(self, group: str, keep: int, size: int) -> float:
        """Latency change (ms, <= 0 when faster) of keeping ``keep`` of ``size`` channels,
        interpolated linearly between measured levels (full size = 0)."""
        measured = [(k, ms - self.base_ms) for g, k, ms in self.entries if g == group]
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
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ChannelLatencyTable:
        d = json.loads(text)
        entries = tuple((str(g), int(k), float(v)) for g, k, v in d["entries"])
        return cls(float(d["base_ms"]), entries, str(d.get("backend", "")))


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
    measure: MeasureFn,
    importance: Importance,
    fractions: Sequence[float] = (0.75, 0.5, 0.25),
    round_to: int = 8,
    min_keep: int = 8,
    backend: str = "",
) -> ChannelLatencyTable:
    """Measure the model with each prunable group cut to each level (``len(groups) * levels``
    measurements plus one base); ``model`` is not modified."""
    graph = DependencyGraph.build(model, input_shape)
    base = float(measure(model))
    entries = []
    for g in graph.prunable:
        order = torch.argsort(importance.scores(model, g), descending=True, stable=True)
        for k in _levels(g, fractions, round_to, min_keep):
            one = _single_group_plan(g, order[:k].tolist(), input_shape)
            pruned = apply_plan(copy.deepcopy(model), one)
            entries.append((g.id, k, float(measure(pruned))))
    return ChannelLatencyTable(base, tuple(entries), backend)


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
