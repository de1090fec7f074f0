"""Hardware-aware DARTS: the expected latency of the mixed network from a measured latency
table, as a differentiable penalty (FBNet / ProxylessNAS), and a hard limit on the derived arch.

The space's own layer plan (:meth:`SearchSpace.plan`) is laid over the mixed cells
(:meth:`CellLayout.latency_segments`): every mixed edge gets, per candidate op, the table
entry of the layer that op would be in the derived network (the space's final size, not the
CPU-sized supernet). An edge's expected latency is ``sum_o p_o * ms_o``; cells aggregate as
the predictor does (:mod:`nasforge.hardware.predictor`): ``sum`` of every layer, or the
``critical_path`` through the DAG (the predictor's ``schedule`` mode on several workers is
approximated by the critical path, on one worker it is the sum). The backend's call overhead
is counted once and the table's calibration (or its learned per-layer correction, where the
predictor applies one) is applied, so the penalty's scale is the predictor's. In DARTS cells a
node keeps two of its inputs: edge costs are weighted by the chance of being kept (2 / inputs,
or ``min(1, 2 * edge weight)`` with PC-DARTS' edge normalisation) in the sum; the critical
path takes every input as possible (conservative).

The hard limit is checked with :meth:`LatencyPredictor.predict` on the derived arch itself.

With a limit, the penalty is :meth:`MixedLatency.hinge_ms`: ``max(E[latency] - limit, 0)``
only while the arch the search would derive now (its argmax) is predicted over the limit.
The expected latency moves slowly (a mixture of near-uniform weights), while the argmax
flips to the cheapest ops long before: a hinge on the expectation alone kept pulling every
edge towards ``none`` after the derived arch was far under the limit (mnist5k, nb201 at a
limit 25% up the space's range: the expectation went 4.9 -> 4.2 ms against a 3.1 ms limit in
100 steps while the argmax was the empty cell, 0.57 ms, from the second epoch on). And a
limit is not met by deleting the cell: :meth:`MixedLatency.derive_under_limit` skips archs
whose cell computes nothing (no live edge, where the space can tell: ``cell_edges``) while
an arch with a live cell is under the limit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping

import numpy as np
import torch

from nasforge.errors import NasforgeError
from nasforge.hardware.calibration import layer_kind
from nasforge.hardware.predictor import (
    LatencyPredictor,
    cell_critical_path,
    cell_sum,
    summed_layers,
)
from nasforge.oneshot.derive import CellLayout, Choice, MixedSegment
from nasforge.space import Arch
from nasforge.space.plan import Cell, LayerSpec

#: spaces with at most this many archs are searched exhaustively under a hard limit
ENUMERATE_LIMIT = 50_000


class _CellCost:
    """One mixed segment with its table costs as tensors.

    ``extra`` gives what a learned correction adds per layer on top of ``scale`` times the
    aggregation (:class:`~nasforge.hardware.calibration.Correction`); without one it is 0.
    """

    def __init__(
        self,
        seg: MixedSegment,
        ms: dict[object, float],
        extra: Callable[[LayerSpec], float],
        num_ops: int,
    ) -> None:
        self.cell, self.repeat = seg.cell, seg.repeat
        t = seg.template
        self.num_nodes, self.num_inputs, self.outputs = t.num_nodes, t.num_inputs, t.outputs
        self.merge = [0.0] * t.num_nodes
        for node, spec in t.merges:
            self.merge[node] = ms[spec]
        self.join = ms[t.join] if t.join is not None else 0.0
        self.fixed = [(s, d, ms[spec]) for s, d, spec in seg.fixed]
        self.mixed = [(s, d, e) for s, d, e, _ in seg.mixed]
        self.op_ms = torch.tensor(
            [
                [0.0 if spec is None else ms[spec] for spec in per_op]
                for _, _, _, per_op in seg.mixed
            ],
            dtype=torch.float64,
        ).reshape(len(seg.mixed), num_ops)
        self.op_extra = torch.tensor(
            [[0.0 if spec is None else extra(spec) for spec in per_op] for *_, per_op in seg.mixed],
            dtype=torch.float64,
        ).reshape(len(seg.mixed), num_ops)
        fed = {d for _, d, _ in self.fixed} | {d for _, d, _ in self.mixed}
        fed_merges = [spec for node, spec in t.merges if node in fed and node >= self.num_inputs]
        self.merge_total = sum(ms[spec] for spec in fed_merges)
        self.fixed_extra = sum(extra(spec) for spec in fed_merges)
        self.fixed_extra += sum(extra(spec) for _, _, spec in seg.fixed)
        self.fixed_extra += extra(t.join) if t.join is not None else 0.0

    def expected(
        self, probs: torch.Tensor, keep: torch.Tensor, critical: bool, scale: float
    ) -> torch.Tensor:
        """``scale`` times the expected aggregation plus the expected correction extras."""
        idx = torch.tensor([e for _, _, e in self.mixed], dtype=torch.long)
        p, k = probs[idx].double(), keep[idx].double()
        extra = (k * (p * self.op_extra).sum(dim=1)).sum() + self.fixed_extra
        return scale * self._aggregate(p, k, critical) + extra

    def _aggregate(self, p: torch.Tensor, keep: torch.Tensor, critical: bool) -> torch.Tensor:
        cost = (p * self.op_ms).sum(dim=1)
        if not critical:
            fixed = sum(m for _, _, m in self.fixed)
            return (keep * cost).sum() + fixed + self.merge_total + self.join
        zero = torch.zeros((), dtype=torch.float64)
        arrive: list[torch.Tensor | None] = [None] * self.num_nodes
        edges = [(s, d, torch.as_tensor(m, dtype=torch.float64)) for s, d, m in self.fixed]
        edges += [(s, d, cost[i]) for i, (s, d, _) in enumerate(self.mixed)]
        for s, d, m in sorted(edges, key=lambda x: x[0]):
            a = arrive[s]
            t = (a + self.merge[s] if a is not None else zero) + m
            prev = arrive[d]
            arrive[d] = t if prev is None else torch.maximum(prev, t)
        ends = [
            a + self.merge[o] for o, a in ((o, arrive[o]) for o in self.outputs) if a is not None
        ]
        crit = torch.stack(ends).max() if ends else zero
        return crit + self.join


class MixedLatency:
    """Expected latency (ms) of the mixed network and the hard-limit derivation.

    Args:
        layout: the space's DARTS layout.
        predictor: a :class:`LatencyPredictor` for the same space (its table, statistic,
            aggregation and calibration are used).

    Raises:
        TableError: a layer some candidate op needs is not in the table (names it).
    """

    def __init__(self, layout: CellLayout, predictor: LatencyPredictor) -> None:
        self.layout, self.predictor = layout, predictor
        self.critical = predictor.mode == "critical_path" or (
            predictor.mode == "schedule" and predictor.workers > 1
        )
        cal = predictor.calibration
        self.slope = cal.slope if cal is not None else 1.0
        self.intercept = cal.intercept_ms if cal is not None else 0.0
        self.overhead = predictor.table.call_overhead_ms.get(predictor.statistic, 0.0)
        ms = _Costs(predictor)
        cor = predictor.correction
        self.scale = 1.0
        extra: Callable[[LayerSpec], float] = _no_extra
        if cor is not None:  # as the predictor: slope 1, the overhead folded into the intercept
            self.scale, self.slope = cor.scale, 1.0
            self.intercept = cor.intercept_ms + cor.scale * self.overhead
            self.overhead = 0.0

            def extra(spec: LayerSpec) -> float:
                return cor.kind_delta.get(layer_kind(spec), 0.0) * ms[spec] + cor.per_layer_ms

        self.fixed_ms = 0.0
        self.cells: list[_CellCost] = []
        for seg in layout.latency_segments():
            if isinstance(seg, MixedSegment):
                self.cells.append(_CellCost(seg, ms, extra, len(layout.ops)))
                continue
            part, rep = seg
            agg = cell_critical_path if self.critical else cell_sum
            raw = agg(part, ms.__getitem__) if isinstance(part, Cell) else ms[part]
            self.fixed_ms += rep * (self.scale * raw + sum(map(extra, summed_layers(part))))

    def keep_weights(self, edge_w: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Per cell, each edge's chance of being kept in the derived cell (see module doc)."""
        out = {}
        for cell in self.layout.cells:
            n = len(self.layout.edges(cell))
            keep = self.layout.keep
            if keep is None:
                out[cell] = torch.ones(n, dtype=torch.float64)
                continue
            if edge_w is not None:
                out[cell] = (keep * edge_w[cell].double()).clamp(max=1.0)
                continue
            w = torch.empty(n, dtype=torch.float64)
            for group in self.layout.groups(cell):
                w[list(group)] = min(1.0, keep / len(group))
            out[cell] = w
        return out

    def expected_ms(
        self,
        probs: Mapping[str, torch.Tensor],
        edge_w: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Calibrated expected latency in ms, differentiable in ``probs`` (and ``edge_w``)."""
        keep = self.keep_weights(edge_w)
        total = torch.as_tensor(self.overhead + self.fixed_ms, dtype=torch.float64)
        for c in self.cells:
            total = total + c.repeat * c.expected(
                probs[c.cell], keep[c.cell], self.critical, self.scale
            )
        return self.slope * total + self.intercept

    def predict(self, arch: Arch) -> float:
        """The predictor's latency of a derived arch in ms."""
        return float(self.predictor.predict(arch))

    def hinge_ms(
        self,
        probs: Mapping[str, torch.Tensor],
        edge_w: Mapping[str, torch.Tensor] | None,
        limit_ms: float,
        derived: Arch,
    ) -> torch.Tensor:
        """``max(E[latency] - limit_ms, 0)`` (differentiable in ``probs`` and ``edge_w``) while
        ``derived``, the arch the search would derive now without the limit (its argmax), is
        predicted over ``limit_ms``; 0 once it is under (see the module docstring)."""
        if self.predict(derived) <= limit_ms:
            return torch.zeros((), dtype=torch.float64)
        return torch.relu(self.expected_ms(probs, edge_w) - limit_ms)

    def derive_under_limit(
        self,
        probs: Mapping[str, torch.Tensor],
        limit_ms: float,
        edge_w: Mapping[str, torch.Tensor] | None = None,
    ) -> Arch:
        """The most likely arch whose predicted latency is at most ``limit_ms``.

        Likelihood is ``sum log p`` of the chosen ops. Spaces with at most
        :data:`ENUMERATE_LIMIT` archs (nb201) are searched exhaustively, best first, skipping
        archs whose cell has no live edge (the space's ``cell_edges`` is empty: the cell
        outputs zero) unless no arch with a live cell is under the limit; others start from
        the argmax arch and greedily swap the op (never to ``none``) that saves the most
        latency per unit of log-likelihood lost until under the limit.

        Raises:
            NasforgeError: no arch reachable is under the limit (names the fastest found).
        """
        layout = self.layout
        logp = {c: probs[c].detach().double().clamp_min(1e-12).log().numpy() for c in layout.cells}
        shapes = layout.shapes()
        total = 1
        for e, o in shapes.values():
            total *= o**e
        if layout.keep is None and len(layout.cells) == 1 and total <= ENUMERATE_LIMIT:
            return self._enumerate(logp, limit_ms)
        return self._greedy(layout.argmax_choice(probs, edge_w), logp, limit_ms)

    def _enumerate(self, logp: Mapping[str, np.ndarray], limit_ms: float) -> Arch:
        """Best-first over every choice of the one searched cell (nb201)."""
        (cell,) = self.layout.cells
        lp = logp[cell]
        grid = np.array(list(itertools.product(range(lp.shape[1]), repeat=lp.shape[0])))
        scores = lp[np.arange(lp.shape[0])[None, :], grid].sum(axis=1)
        live = getattr(self.layout.space, "cell_edges", None)
        best_ms = float("inf")
        empty: Arch | None = None
        for i in np.argsort(-scores, kind="stable"):
            arch = self.layout.to_arch({cell: [(e, int(o)) for e, o in enumerate(grid[i])]})
            ms = self.predict(arch)
            if ms <= limit_ms:
                if live is None or live(arch):
                    return arch
                empty = empty or arch
            best_ms = min(best_ms, ms)
        if empty is not None:  # only empty cells are under the limit
            return empty
        raise NasforgeError(
            f"darts.latency_limit_ms: no arch of the space is predicted under {limit_ms} ms "
            f"(the fastest is {best_ms:.4g} ms)"
        )

    def _greedy(self, choice: Choice, logp: Mapping[str, np.ndarray], limit_ms: float) -> Arch:
        layout = self.layout
        arch = layout.to_arch(choice)
        ms = self.predict(arch)
        allowed = [o for o, n in enumerate(layout.ops) if n != "none"] or [0]
        while ms > limit_ms:
            best: tuple[float, Choice, Arch, float] | None = None
            for cell in layout.cells:
                for slot, (e, cur) in enumerate(choice[cell]):
                    for o in allowed:
                        if o == cur:
                            continue
                        trial = {c: list(v) for c, v in choice.items()}
                        trial[cell][slot] = (e, o)
                        cand = layout.to_arch(trial)
                        cand_ms = self.predict(cand)
                        saved = ms - cand_ms
                        if saved <= 0:
                            continue
                        lost = max(float(logp[cell][e, cur] - logp[cell][e, o]), 0.0)
                        rate = saved / (lost + 1e-9)
                        if best is None or rate > best[0]:
                            best = (rate, trial, cand, cand_ms)
            if best is None:
                raise NasforgeError(
                    f"darts.latency_limit_ms: no op swap brings the derived arch under "
                    f"{limit_ms} ms (it stays at {ms:.4g} ms)"
                )
            _, choice, arch, ms = best
        return arch


def _no_extra(spec: LayerSpec) -> float:
    return 0.0


class _Costs(dict[object, float]):
    """LayerSpec -> the predictor's cost in ms (read once)."""

    def __init__(self, predictor: LatencyPredictor) -> None:
        super().__init__()
        self._predictor = predictor

    def __missing__(self, spec: object) -> float:
        m = self._predictor.layer_ms(spec)  # type: ignore[arg-type]
        self[spec] = m
        return m


__all__ = ["ENUMERATE_LIMIT", "MixedLatency"]
