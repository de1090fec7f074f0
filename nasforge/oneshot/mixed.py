"""Mixed operations and the continuous supernets DARTS searches on (``nb201`` and ``darts`` cells).

A :class:`MixedOp` holds every candidate op of one edge and outputs their weighted sum; the
weights are *inputs* of ``forward`` (an :class:`ArchWeights`), not parameters of the module,
so the search owns the architecture parameters (alpha), their parametrisation (softmax,
Dirichlet samples, random smoothing, perturbation masks) and their optimiser, and the network
weights stay plain ``nn.Module`` parameters.

Two options of the mixed op come from the regularisers: partial channels (PC-DARTS: only
``1/partial`` of the channels go through the candidate ops, the rest bypass the edge, then the
channels are shuffled) and an auxiliary skip connection (DARTS-: ``aux * x`` added on every
stride-1 edge, with a weight the search decays to zero). Edge weights (PC-DARTS' edge
normalisation) scale each edge's output before a node sums its inputs.

The networks follow the spaces' own stand-alone networks (:class:`~nasforge.nn.cells.NB201Network`,
:class:`~nasforge.nn.cells.DartsNetwork`) and build their ops with the same factories
(:func:`~nasforge.nn.cells.make_op`, :func:`~nasforge.nn.cells.make_darts_op`), so the op a
derived arch trains stand-alone is the op that was searched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.nn.cells import (
    FactorizedReduce,
    ReLUConvBN,
    ResNetBasicBlock,
    Zero,
    make_darts_op,
    make_op,
)

OpFactory = Callable[[str, int, int], nn.Module]  # (op name, channels, stride) -> module


@dataclass
class ArchWeights:
    """The architecture weights one forward pass of a supernet uses.

    Attributes:
        ops: per searched cell (``"cell"`` for nb201, ``"normal"``/``"reduce"`` for darts), an
            ``(edges, ops)`` tensor: row ``e`` weighs the candidate ops of edge ``e`` (rows
            usually sum to one; a perturbation mask may zero entries).
        edges: per cell an ``(edges,)`` tensor scaling each edge's output (PC-DARTS edge
            normalisation), or ``None`` for no edge weights.
        aux_skip: weight of the DARTS- auxiliary skip connection on stride-1 edges (0: off).
    """

    ops: dict[str, torch.Tensor]
    edges: dict[str, torch.Tensor] | None = None
    aux_skip: float = 0.0


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet), as PC-DARTS does after a partial edge."""
    n, c = x.shape[:2]
    return x.view(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def nb201_factory(name: str, channels: int, stride: int) -> nn.Module:
    """An NB201 candidate op (channels in = out), as :func:`~nasforge.nn.cells.make_op`."""
    return make_op(name, channels, channels, stride)


class MixedOp(nn.Module):
    """All candidate ops of one edge; output ``sum_i w[i] * op_i(x)`` (+ ``aux * x``).

    Args:
        ops: candidate op names, in the order of the weight rows.
        factory: builds one op from (name, channels, stride).
        channels: channels of the edge's input and output.
        stride: 1, or 2 on the input edges of a reduction cell.
        partial: PC-DARTS' K: the ops see ``channels // partial`` channels (1: all).

    The ``none`` op is never run: it outputs zero, so it only enters through the weights.
    """

    def __init__(
        self,
        ops: Sequence[str],
        factory: OpFactory,
        channels: int,
        stride: int = 1,
        partial: int = 1,
    ) -> None:
        super().__init__()
        if partial < 1 or channels % partial:
            raise ConfigError(
                f"darts.partial_channels: {partial} must divide the supernet's channels "
                f"({channels} on this edge)"
            )
        self.names = tuple(ops)
        self.stride, self.partial = stride, partial
        c = channels // partial
        self.ops = nn.ModuleList(factory(name, c, stride) for name in self.names)
        self.run = [name != "none" for name in self.names]
        self.zero = Zero(c, c, stride)
        self.bypass: nn.Module = (
            nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        )

    def forward(self, x: torch.Tensor, w: torch.Tensor, aux: float = 0.0) -> torch.Tensor:
        """Weighted sum of the ops on ``x`` with weights ``w`` (shape ``(len(ops),)``)."""
        xa = x[:, : x.shape[1] // self.partial] if self.partial > 1 else x
        skip_zeros = not w.requires_grad
        out: torch.Tensor | None = None
        for i, op in enumerate(self.ops):
            if not self.run[i] or (skip_zeros and float(w[i]) == 0.0):
                continue
            y = w[i] * op(xa)
            out = y if out is None else out + y
        if out is None:  # every runnable op masked out (or only ``none``): zero output
            out = self.zero(xa)
        if self.partial > 1:
            out = channel_shuffle(
                torch.cat([out, self.bypass(x[:, xa.shape[1] :])], 1), self.partial
            )
        if aux and self.stride == 1:
            out = out + aux * x
        return out


class MixedNB201Cell(nn.Module):
    """An NB201 cell with a :class:`MixedOp` on each of its six edges (order of ``edges``)."""

    def __init__(
        self,
        ops: Sequence[str],
        edges: Sequence[tuple[int, int]],
        channels: int,
        partial: int = 1,
    ) -> None:
        super().__init__()
        self.edge_list = [(int(s), int(d)) for s, d in edges]
        self.num_nodes = max(d for _, d in self.edge_list) + 1
        self.mixed = nn.ModuleList(
            MixedOp(ops, nb201_factory, channels, 1, partial) for _ in self.edge_list
        )

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, ew: torch.Tensor | None, aux: float
    ) -> torch.Tensor:
        nodes: list[torch.Tensor | None] = [x] + [None] * (self.num_nodes - 1)
        for e, (s, d) in enumerate(self.edge_list):  # sorted by dst: sources are complete
            src = nodes[s]
            assert src is not None
            y = self.mixed[e](src, w[e], aux)
            if ew is not None:
                y = ew[e] * y
            prev = nodes[d]
            nodes[d] = y if prev is None else prev + y
        out = nodes[-1]
        assert out is not None
        return out


class MixedNB201Network(nn.Module):
    """NB201's network (stem, three stages joined by residual reductions, BN-ReLU-pool head)
    with mixed cells sharing the ``"cell"`` weights of an :class:`ArchWeights`."""

    def __init__(
        self,
        ops: Sequence[str],
        edges: Sequence[tuple[int, int]],
        c: int,
        n: int,
        num_classes: int,
        in_channels: int,
        partial: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        )
        layers: list[nn.Module] = []
        c_prev = c
        for stage, width in enumerate((c, 2 * c, 4 * c)):
            if stage > 0:
                layers.append(ResNetBasicBlock(c_prev, width, 2))
            layers.extend(MixedNB201Cell(ops, edges, width, partial) for _ in range(n))
            c_prev = width
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(
            nn.BatchNorm2d(c_prev),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(c_prev, num_classes),
        )

    def forward(self, x: torch.Tensor, weights: ArchWeights) -> torch.Tensor:
        w = weights.ops["cell"]
        ew = weights.edges["cell"] if weights.edges is not None else None
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x, w, ew, weights.aux_skip) if isinstance(layer, MixedNB201Cell) else layer(x)
        return self.head(x)


class MixedDartsCell(nn.Module):
    """A DARTS search cell: preprocessed inputs (nodes 0, 1), each intermediate node sums a
    :class:`MixedOp` from every earlier node, the output concatenates the intermediate nodes.

    Edges are ordered node by node, sources ascending (DARTS' order): node 2 reads 0, 1;
    node 3 reads 0, 1, 2; ... In a reduction cell the edges from nodes 0 and 1 have stride 2.
    """

    def __init__(
        self,
        ops: Sequence[str],
        steps: int,
        c_prev_prev: int,
        c_prev: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        partial: int = 1,
    ) -> None:
        super().__init__()
        self.reduction, self.steps = reduction, steps
        self.preprocess0: nn.Module = (
            FactorizedReduce(c_prev_prev, c, 2) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1)
        )
        self.preprocess1 = ReLUConvBN(c_prev, c, 1)
        self.edge_list = [(s, 2 + i) for i in range(steps) for s in range(2 + i)]
        self.mixed = nn.ModuleList(
            MixedOp(ops, make_darts_op_factory, c, 2 if reduction and s < 2 else 1, partial)
            for s, _ in self.edge_list
        )

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        w: torch.Tensor,
        ew: torch.Tensor | None,
        aux: float,
    ) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for i in range(self.steps):
            acc: torch.Tensor | None = None
            for s in range(2 + i):
                y = self.mixed[e](states[s], w[e], aux)
                if ew is not None:
                    y = ew[e] * y
                acc = y if acc is None else acc + y
                e += 1
            assert acc is not None
            states.append(acc)
        return torch.cat(states[2:], dim=1)


def make_darts_op_factory(name: str, channels: int, stride: int) -> nn.Module:
    """A DARTS candidate op, as :func:`~nasforge.nn.cells.make_darts_op`."""
    return make_darts_op(name, channels, stride)


class MixedDartsNetwork(nn.Module):
    """DARTS' search network: stem, ``layers`` mixed cells (reductions at ``layers // 3`` and
    ``2 * layers // 3`` use the ``"reduce"`` weights, the others ``"normal"``), pool, linear."""

    def __init__(
        self,
        ops: Sequence[str],
        steps: int,
        c: int,
        layers: int,
        num_classes: int,
        in_channels: int,
        stem_multiplier: int = 3,
        partial: int = 1,
    ) -> None:
        super().__init__()
        c_curr = stem_multiplier * c
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_pp, c_p, c_curr = c_curr, c_curr, c
        cells = []
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            cells.append(
                MixedDartsCell(ops, steps, c_pp, c_p, c_curr, reduction, reduction_prev, partial)
            )
            reduction_prev = reduction
            c_pp, c_p = c_p, steps * c_curr
        self.cells = nn.ModuleList(cells)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor, weights: ArchWeights) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            name = "reduce" if cell.reduction else "normal"
            ew = weights.edges[name] if weights.edges is not None else None
            s0, s1 = s1, cell(s0, s1, weights.ops[name], ew, weights.aux_skip)
        return self.classifier(self.pool(s1).flatten(1))


def uniform_weights(shapes: Mapping[str, tuple[int, int]]) -> ArchWeights:
    """Uniform op weights for cells of the given ``(edges, ops)`` shapes (no edge weights)."""
    return ArchWeights({k: torch.full(s, 1.0 / s[1]) for k, s in shapes.items()})


__all__ = [
    "ArchWeights",
    "MixedDartsCell",
    "MixedDartsNetwork",
    "MixedNB201Cell",
    "MixedNB201Network",
    "MixedOp",
    "channel_shuffle",
    "uniform_weights",
]
