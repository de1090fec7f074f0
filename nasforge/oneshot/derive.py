"""How DARTS sees a space (:class:`CellLayout`) and how a discrete arch is derived from the
architecture weights: by argmax and by perturbation (DARTS-PT).

A layout names the searched cells, their mixed edges ``(src, dst)`` in supernet order, the
edges that meet in each node, how many inputs a derived node keeps (``None``: every edge is
kept, as in NB201; 2 in DARTS), builds the supernet, and turns a *choice* (per cell, the kept
edges and the op index of each) into a valid :class:`~nasforge.space.Arch` of the space. It
also lays the space's own layer plan over the mixed edges for the latency penalty
(:meth:`CellLayout.latency_segments`).

Derivation rules (the papers'):

* ``nb201``: every edge takes its highest-weight op, ``none`` included (NB201's DARTS
  baselines; a collapsed search shows up as skip/none cells).
* ``darts``: every edge's best op other than ``none``; each node keeps the two edges whose
  best op weighs most (DARTS' genotype rule).
* Perturbation (Wang et al. 2021, DARTS-PT): edges in a seeded random order; on each, each
  candidate op is removed in turn (its weight zeroed) and the supernet's validation accuracy
  measured; the op whose removal costs the most accuracy is chosen and the edge fixed to it.
  In DARTS cells each node then keeps the edges whose removal costs the most.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.oneshot.mixed import ArchWeights, MixedDartsNetwork, MixedNB201Network
from nasforge.space import Arch, SearchSpace
from nasforge.space.plan import Cell, LayerSpec
from nasforge.spaces.darts import DartsSpace, gene_labels
from nasforge.spaces.nb201 import EDGES as NB201_EDGES
from nasforge.spaces.nb201 import NB201Space, edge_label

#: per cell: (edge index, op index) of every kept edge
Choice = dict[str, list[tuple[int, int]]]


@dataclass(frozen=True)
class MixedSegment:
    """One cell of the space's layer plan with the mixed edges laid over it.

    ``fixed`` edges (preprocessing) cost the same for every arch; ``mixed[i]`` is
    ``(src, dst, edge index, per-op layer)`` with ``None`` for an op that costs nothing
    (``none`` where the plan drops the edge). ``template`` gives nodes, outputs, merges, join.
    """

    cell: str
    repeat: int
    template: Cell
    fixed: tuple[tuple[int, int, LayerSpec], ...]
    mixed: tuple[tuple[int, int, int, tuple[LayerSpec | None, ...]], ...]


Segment = MixedSegment | tuple[LayerSpec | Cell, int]


class CellLayout(abc.ABC):
    """The DARTS view of one space; see the module docstring."""

    #: searched cells, in the order their weights are kept
    cells: tuple[str, ...]
    #: the cell whose skip/none count is the collapse signal
    skip_cell: str
    #: inputs a derived node keeps (None: every edge)
    keep: int | None

    def __init__(self, space: SearchSpace, ops: Sequence[str]) -> None:
        self.space = space
        self.ops = tuple(ops)

    @abc.abstractmethod
    def edges(self, cell: str) -> list[tuple[int, int]]:
        """Mixed edges ``(src, dst)`` of ``cell`` in supernet order."""

    def groups(self, cell: str) -> list[list[int]]:
        """Edge indices per destination node (edge normalisation, topology selection)."""
        by_dst: dict[int, list[int]] = {}
        for e, (_, d) in enumerate(self.edges(cell)):
            by_dst.setdefault(d, []).append(e)
        return [by_dst[d] for d in sorted(by_dst)]

    def shapes(self) -> dict[str, tuple[int, int]]:
        """``(edges, ops)`` of each cell's weights."""
        return {c: (len(self.edges(c)), len(self.ops)) for c in self.cells}

    @abc.abstractmethod
    def build_supernet(self, channels: int, cells_per_stage: int, partial: int) -> nn.Module:
        """The mixed network; ``forward(x, ArchWeights)`` returns logits."""

    @abc.abstractmethod
    def to_arch(self, choice: Choice) -> Arch:
        """The space's arch for ``choice`` (validated)."""

    @abc.abstractmethod
    def latency_segments(self) -> list[Segment]:
        """The space's layer plan with the mixed edges laid over its cells (see
        :class:`MixedSegment`); other segments are the plan's ``(segment, repeat)``."""

    # -- derived cells ----------------------------------------------------------------------
    def op_counts(self, arch: Mapping[str, object], op: str) -> int:
        """How many edges of the :attr:`skip_cell` of ``arch`` use ``op``."""
        return sum(1 for label, v in arch.items() if self._in_skip_cell(label) and v == op)

    def _in_skip_cell(self, label: str) -> bool:
        return True

    def argmax(
        self, probs: Mapping[str, torch.Tensor], edge_w: Mapping[str, torch.Tensor] | None = None
    ) -> Arch:
        """DARTS' derivation (see the module docstring)."""
        return self.to_arch(self.argmax_choice(probs, edge_w))

    def argmax_choice(
        self, probs: Mapping[str, torch.Tensor], edge_w: Mapping[str, torch.Tensor] | None = None
    ) -> Choice:
        choice: Choice = {}
        for cell in self.cells:
            p = probs[cell].detach().double().cpu()
            if self.keep is None:
                choice[cell] = [(e, int(p[e].argmax())) for e in range(p.shape[0])]
                continue
            masked = p.clone()
            for i, name in enumerate(self.ops):
                if name == "none" and len(self.ops) > 1:
                    masked[:, i] = -1.0
            best, idx = masked.max(dim=1)
            if edge_w is not None:
                best = best * edge_w[cell].detach().double().cpu()
            kept: list[tuple[int, int]] = []
            for group in self.groups(cell):
                order = sorted(group, key=lambda e: (-float(best[e]), e))[: self.keep]
                while len(order) < self.keep:  # a node with fewer edges reads one twice
                    order.append(order[-1])
                kept.extend((e, int(idx[e])) for e in order)
            choice[cell] = kept
        return choice


class NB201Layout(CellLayout):
    """``nb201``: one searched cell (``"cell"``), six mixed edges, every edge kept."""

    cells = ("cell",)
    skip_cell = "cell"
    keep = None

    def __init__(self, space: NB201Space) -> None:
        super().__init__(space, space.ops)
        self.nb201 = space

    def edges(self, cell: str) -> list[tuple[int, int]]:
        return [(s, d) for d, s in NB201_EDGES]

    def build_supernet(self, channels: int, cells_per_stage: int, partial: int) -> nn.Module:
        sp = self.nb201
        return MixedNB201Network(
            self.ops,
            self.edges("cell"),
            channels,
            cells_per_stage,
            sp.num_classes,
            sp.input_shape[0],
            partial,
        )

    def to_arch(self, choice: Choice) -> Arch:
        edges = self.edges("cell")
        values = {edge_label(edges[e][1], edges[e][0]): self.ops[o] for e, o in choice["cell"]}
        return self.space.make(values)

    def latency_segments(self) -> list[Segment]:
        live = [o for o in self.ops if o != "none"]
        if not live:
            raise ConfigError("darts.latency: the nb201 space has no op other than 'none'")
        probe = "nor_conv_3x3" if "nor_conv_3x3" in live else live[0]
        labels = [edge_label(d, s) for s, d in self.edges("cell")]
        plans = {o: self.space.plan(self.space.make(dict.fromkeys(labels, o))) for o in live}
        base = plans[probe]
        index = {(s, d): e for e, (s, d) in enumerate(self.edges("cell"))}
        out: list[Segment] = []
        for i, (seg, rep) in enumerate(base):
            if not isinstance(seg, Cell):
                out.append((seg, rep))
                continue
            mixed = []
            for j, (s, d, _) in enumerate(seg.edges):
                per_op = tuple(
                    None if o == "none" else plans[o][i][0].edges[j][2]  # type: ignore[union-attr]
                    for o in self.ops
                )
                mixed.append((s, d, index[(s, d)], per_op))
            out.append(MixedSegment("cell", rep, seg, (), tuple(mixed)))
        return out


class DartsLayout(CellLayout):
    """``darts``: ``normal`` and ``reduce`` cells, every earlier node feeds every intermediate
    node through a mixed edge, each derived node keeps two inputs."""

    cells = ("normal", "reduce")
    skip_cell = "normal"
    keep = 2

    def __init__(self, space: DartsSpace) -> None:
        super().__init__(space, space.ops)
        self.darts = space

    def edges(self, cell: str) -> list[tuple[int, int]]:
        return [(s, 2 + i) for i in range(self.darts.steps) for s in range(2 + i)]

    def _in_skip_cell(self, label: str) -> bool:
        return label.startswith("normal/") and label.endswith("/op")

    def build_supernet(self, channels: int, cells_per_stage: int, partial: int) -> nn.Module:
        sp = self.darts
        return MixedDartsNetwork(
            self.ops,
            sp.steps,
            channels,
            3 * cells_per_stage + 2,
            sp.num_classes,
            sp.input_shape[0],
            sp.stem_multiplier,
            partial,
        )

    def to_arch(self, choice: Choice) -> Arch:
        values: dict[str, object] = {}
        for cell in self.cells:
            edges = self.edges(cell)
            slots: dict[int, int] = {}
            for e, o in choice[cell]:
                s, node = edges[e]
                k = slots.get(node, 0)
                slots[node] = k + 1
                op_label, src_label = gene_labels(cell, node, k)
                values[op_label], values[src_label] = self.ops[o], s
        return self.space.make(values)

    def latency_segments(self) -> list[Segment]:
        sp = self.darts
        concat = sp.concat

        def probe(op: str, src: int) -> Arch:
            values: dict[str, object] = {}
            for cell in self.cells:
                for node in concat:
                    for k in (0, 1):
                        op_label, src_label = gene_labels(cell, node, k)
                        values[op_label] = op
                        values[src_label] = min(src, node - 1) if k == 0 else 0
            return sp.make(values)

        base = sp.plan(probe(self.ops[0], 0))
        plans = {(o, s): sp.plan(probe(o, s)) for o in self.ops for s in range(max(concat))}
        out: list[Segment] = []
        pos = 0
        for i, (seg, rep) in enumerate(base):
            if not isinstance(seg, Cell):
                out.append((seg, rep))
                continue
            cell = "reduce" if sp.cell_shapes[pos].reduction else "normal"
            pos += 1
            mixed = []
            for e, (s, node) in enumerate(self.edges(cell)):
                slot = 2 + 2 * (node - 2)  # in0 of ``node`` (after the two preprocessings)
                per_op = []
                for o in self.ops:
                    c = plans[(o, s)][i][0]
                    assert isinstance(c, Cell)
                    src, dst, spec = c.edges[slot]
                    if (src, dst) != (s + 2, node + 2):
                        raise AssertionError(f"darts plan layout changed at edge {s}->{node}")
                    per_op.append(spec)
                mixed.append((s + 2, node + 2, e, tuple(per_op)))
            out.append(MixedSegment(cell, rep, seg, seg.edges[:2], tuple(mixed)))
        return out


def layout_for(space: SearchSpace) -> CellLayout:
    """The layout of ``space``.

    Raises:
        ConfigError: the space has no cells DARTS can search (names the supported ones).
    """
    if isinstance(space, NB201Space):
        return NB201Layout(space)
    if isinstance(space, DartsSpace):
        return DartsLayout(space)
    raise ConfigError(
        f"darts: space {space.name!r} has no mixed-op cells; DARTS searches the nb201 and darts "
        "spaces (use the single-path supernet or a black-box strategy for others)"
    )


def derive_perturbation(
    layout: CellLayout,
    weights: ArchWeights,
    accuracy: Callable[[ArchWeights], float],
    rng: np.random.Generator,
) -> tuple[Arch, list[dict[str, object]]]:
    """DARTS-PT: choose each edge's op, then (DARTS cells) each node's inputs, by perturbation.

    Args:
        layout: the space's layout.
        weights: the search's op weights (and edge weights); not modified.
        accuracy: validation accuracy of the supernet under given weights.
        rng: orders the edges.

    Returns:
        The derived arch and one record per decision (cell, edge, accuracy per removed op).
    """
    ops = {c: w.detach().clone() for c, w in weights.ops.items()}
    edges = dict(weights.edges) if weights.edges is not None else None
    log: list[dict[str, object]] = []

    def acc_with(cell: str, row: int, w_row: torch.Tensor) -> float:
        trial = dict(ops)
        t = ops[cell].clone()
        t[row] = w_row
        trial[cell] = t
        return accuracy(ArchWeights(trial, edges, weights.aux_skip))

    order = [(c, e) for c in layout.cells for e in range(ops[c].shape[0])]
    for i in rng.permutation(len(order)):
        cell, e = order[int(i)]
        candidates = [
            o
            for o, name in enumerate(layout.ops)
            if layout.keep is None or name != "none" or len(layout.ops) == 1
        ]
        scores = {}
        for o in candidates:
            row = ops[cell][e].clone()
            row[o] = 0.0
            scores[o] = acc_with(cell, e, row)
        chosen = min(candidates, key=lambda o: (scores[o], o))
        onehot = torch.zeros_like(ops[cell][e])
        onehot[chosen] = 1.0
        ops[cell][e] = onehot
        log.append(
            {
                "cell": cell,
                "edge": e,
                "op": layout.ops[chosen],
                "accuracy_without": {layout.ops[o]: scores[o] for o in candidates},
            }
        )
    choice: Choice = {}
    for cell in layout.cells:
        picks = [int(ops[cell][e].argmax()) for e in range(ops[cell].shape[0])]
        if layout.keep is None:
            choice[cell] = list(enumerate(picks))
            continue
        kept: list[tuple[int, int]] = []
        for group in layout.groups(cell):
            drop = {e: acc_with(cell, e, torch.zeros_like(ops[cell][e])) for e in group}
            best = sorted(group, key=lambda e: (drop[e], e))[: layout.keep]
            while len(best) < layout.keep:
                best.append(best[-1])
            kept.extend((e, picks[e]) for e in best)
            log.append({"cell": cell, "node_edges": group, "accuracy_without_edge": drop})
        choice[cell] = kept
    return layout.to_arch(choice), log


__all__ = [
    "CellLayout",
    "Choice",
    "DartsLayout",
    "MixedSegment",
    "NB201Layout",
    "derive_perturbation",
    "layout_for",
]
