"""Cell operations and cell networks of NAS-Bench-201 and DARTS (plain PyTorch, no search logic).

Every op can be built standalone (:func:`make_op`, :func:`make_darts_op`) so that a latency
table can time it in isolation, and the cells keep their ops in ``nn.ModuleDict`` s named
``edge_<dst>_<src>`` (NB201) or ``node<dst>_in<k>`` (DARTS), so per-op cost can be traced
back to the architecture.

The NB201 modules follow the NAS-Bench-201 reference network (``TinyNetwork`` / ``InferCell``):
ReLU-Conv-BN ops, a residual basic block between stages, BN-ReLU before the pooled head. The
DARTS modules follow DARTS' ``NetworkCIFAR`` (without the auxiliary head and drop-path).
Factorized reduction pads odd feature maps so that both also run on 7x7 or 5x5 maps.

Branch parallelism: a cell with ``fork_branches = True`` (see :func:`enable_branch_forks`)
launches every op as a ``torch.jit.fork`` task as soon as its input node is ready and waits
for a node only when something reads it. In eager mode a fork runs at once (same result, no
overlap); in a ``torch.jit.trace`` d model the forks run on torch's inter-op thread pool, so
independent ops of a cell run side by side (the ``torch:parallel`` latency backend).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasforge.errors import SpaceError

NB201_OPS: tuple[str, ...] = (
    "none",
    "skip_connect",
    "nor_conv_1x1",
    "nor_conv_3x3",
    "avg_pool_3x3",
)
DARTS_OPS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

Edge = tuple[int, int, str]  # (src, dst, op)


# -- branch parallelism -----------------------------------------------------------------------
def run_dag(
    values: list[torch.Tensor | None],
    edges: Sequence[tuple[int, int, nn.Module]],
    fork: bool,
    like: torch.Tensor,
) -> list[torch.Tensor | None]:
    """Evaluate a cell DAG: node ``d`` is the sum of ``op(node s)`` over its edges (s, d, op).

    ``values`` holds the input nodes (the rest ``None``); ``edges`` are sorted by source, and
    every edge goes forward (``s < d``). A node without incoming edges stays ``None`` and reads
    as ``like * 0``. Sums run in edge order, so forked and sequential evaluation give the same
    numbers.

    With ``fork``, each op is launched with ``torch.jit.fork`` in edge order, so every op whose
    source is ready is running before the caller waits for the next node: a node's futures are
    waited for when an edge first reads it (greedy list scheduling on the inter-op pool).
    """
    values = list(values)
    pending: list[list[torch.jit.Future[torch.Tensor]]] = [[] for _ in values]

    def read(i: int) -> torch.Tensor:
        acc = values[i]
        if pending[i]:
            for fut in pending[i]:
                y = torch.jit.wait(fut)
                acc = y if acc is None else acc + y
            values[i], pending[i] = acc, []
        return like.mul(0.0) if acc is None else acc

    for s, d, op in edges:
        if fork:
            pending[d].append(torch.jit.fork(op, read(s)))
            continue
        y = op(read(s))
        prev = values[d]
        values[d] = y if prev is None else prev + y
    for i in range(len(values)):
        if pending[i]:
            read(i)
    return values


def enable_branch_forks(model: nn.Module, on: bool = True) -> int:
    """Switch every cell of ``model`` that supports it to forked branches; returns how many."""
    count = 0
    for m in model.modules():
        if hasattr(m, "fork_branches"):
            setattr(m, "fork_branches", on)  # noqa: B010
            count += 1
    return count


# -- shared ops -------------------------------------------------------------------------------
class ReLUConvBN(nn.Sequential):
    """ReLU, convolution (no bias), batch norm: the NB201 / DARTS conv op and preprocessing."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out),
        )


class Zero(nn.Module):
    """The ``none`` op: zeros with ``c_out`` channels and the op's stride applied."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.c_in == self.c_out:
            return x.mul(0.0)
        shape = list(x.shape)
        shape[1] = self.c_out
        return x.new_zeros(shape)


class FactorizedReduce(nn.Module):
    """ReLU, two stride-2 1x1 convs on shifted grids, concatenated, BN (stride 1: one 1x1 conv).

    The shifted branch pads by one on the bottom/right, so odd inputs (7x7) give the same
    size as the unshifted branch; on even inputs this equals the DARTS / NB201 original.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 2) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise SpaceError(f"FactorizedReduce: stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.relu = nn.ReLU(inplace=False)
        if stride == 2:
            halves = (c_out // 2, c_out - c_out // 2)
            self.convs = nn.ModuleList(nn.Conv2d(c_in, h, 1, stride=2, bias=False) for h in halves)
        else:
            self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        if self.stride == 2:
            shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
            out = torch.cat([self.convs[0](x), self.convs[1](shifted)], dim=1)
        else:
            out = self.conv(x)
        return self.bn(out)


# -- NAS-Bench-201 ----------------------------------------------------------------------------
class Pool(nn.Module):
    """3x3 pooling (average excludes padding); a ReLU-Conv1x1-BN first when channels change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, mode: str = "avg") -> None:
        super().__init__()
        self.preprocess = ReLUConvBN(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        if mode == "avg":
            self.pool: nn.Module = nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        elif mode == "max":
            self.pool = nn.MaxPool2d(3, stride, 1)
        else:
            raise SpaceError(f"Pool: mode must be 'avg' or 'max', got {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.preprocess(x))


def make_op(name: str, c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    """One NAS-Bench-201 op as a standalone module (for cells and for per-op latency tables).

    Args:
        name: one of :data:`NB201_OPS`.
        c_in, c_out: channels; ``skip_connect`` becomes a factorized reduction when they
            differ or ``stride`` is 2, ``avg_pool_3x3`` gets a 1x1 projection when they differ.
        stride: 1 or 2.

    Raises:
        SpaceError: unknown op name (the message lists the allowed ones).
    """
    if name == "none":
        return Zero(c_in, c_out, stride)
    if name == "skip_connect":
        if stride == 1 and c_in == c_out:
            return nn.Identity()
        return FactorizedReduce(c_in, c_out, stride)
    if name == "nor_conv_1x1":
        return ReLUConvBN(c_in, c_out, 1, stride, 0)
    if name == "nor_conv_3x3":
        return ReLUConvBN(c_in, c_out, 3, stride, 1)
    if name == "avg_pool_3x3":
        return Pool(c_in, c_out, stride, "avg")
    raise SpaceError(f"nb201 op: unknown op {name!r}; expected one of {', '.join(NB201_OPS)}")


class ResNetBasicBlock(nn.Module):
    """NB201's reduction block: two ReLU-Conv3x3-BN, residual via avg-pool + 1x1 conv (stride 2)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride, 1)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1)
        if stride == 2:
            self.downsample: nn.Module = nn.Sequential(
                nn.AvgPool2d(2, 2, ceil_mode=True), nn.Conv2d(c_in, c_out, 1, bias=False)
            )
        elif c_in != c_out:
            self.downsample = ReLUConvBN(c_in, c_out, 1)
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class NB201Cell(nn.Module):
    """A DAG cell: node 0 is the input, node ``d`` sums ``op(node s)`` over its edges (s, d, op).

    Args:
        edges: ``(src, dst, op)`` triples; edges may be missing (a pruned cell), a node with
            no incoming edge is zero.
        channels: channels of every node (NB201 cells keep channels and resolution).
        num_nodes: nodes including input and output; the last node is the output.

    Op modules live in ``self.edges`` under ``edge_<dst>_<src>``.
    """

    def __init__(self, edges: Sequence[Edge], channels: int, num_nodes: int = 4) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.edge_list = sorted((int(s), int(d), str(op)) for s, d, op in edges)
        for s, d, _ in self.edge_list:
            if not 0 <= s < d < num_nodes:
                raise SpaceError(
                    f"NB201Cell: edge {s}->{d} is not a forward edge among {num_nodes} nodes"
                )
        self.edges = nn.ModuleDict(
            {f"edge_{d}_{s}": make_op(op, channels, channels, 1) for s, d, op in self.edge_list}
        )

    fork_branches = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        edges = [(s, d, self.edges[f"edge_{d}_{s}"]) for s, d, _ in self.edge_list]
        nodes = run_dag([x] + [None] * (self.num_nodes - 1), edges, self.fork_branches, x)
        out = nodes[-1]
        return x.mul(0.0) if out is None else out


class NB201Network(nn.Module):
    """The NAS-Bench-201 network: stem, 3 stages of ``n`` cells (``c``, 2c, 4c channels) joined
    by residual reduction blocks, then BN-ReLU, global average pool and a linear classifier.

    Args:
        edges: the cell's ``(src, dst, op)`` edges (shared by every cell).
        c: channels of the first stage (NB201: 16).
        n: cells per stage (NB201: 5).
        num_classes: classifier outputs.
        in_channels: channels of the input image.
    """

    def __init__(
        self,
        edges: Sequence[Edge],
        c: int = 16,
        n: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        )
        cells: list[nn.Module] = []
        c_prev = c
        for stage, width in enumerate((c, 2 * c, 4 * c)):
            if stage > 0:
                cells.append(ResNetBasicBlock(c_prev, width, 2))
            cells.extend(NB201Cell(edges, width) for _ in range(n))
            c_prev = width
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        x = self.global_pooling(self.lastact(x)).flatten(1)
        return self.classifier(x)


# -- DARTS ------------------------------------------------------------------------------------
class DilConv(nn.Sequential):
    """ReLU, dilated depthwise k x k conv, pointwise conv, BN."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False
            ),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )


class SepConv(nn.Sequential):
    """Two stacked (ReLU, depthwise k x k, pointwise, BN) units; only the first is strided."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, 1, padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )


def make_darts_op(name: str, channels: int, stride: int = 1) -> nn.Module:
    """One DARTS op as a standalone module (channels in = out, stride 1 or 2).

    Raises:
        SpaceError: unknown op name (the message lists the allowed ones).
    """
    c = channels
    if name == "none":
        return Zero(c, c, stride)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, stride)
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1)
    if name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2)
    if name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2)
    raise SpaceError(f"darts op: unknown op {name!r}; expected one of {', '.join(DARTS_OPS)}")


class DartsCell(nn.Module):
    """A DARTS cell: two preprocessed inputs (nodes 0, 1), intermediate nodes each summing two
    ``op(input)`` terms, output the channel concatenation of the ``concat`` nodes.

    Args:
        genes: ``(op, src)`` pairs, two per intermediate node, in node order (DARTS genotype).
        concat: node indices concatenated into the output.
        c_prev_prev, c_prev: channels of the cell's two inputs.
        c: channels of every node.
        reduction: ops reading nodes 0/1 use stride 2.
        reduction_prev: the previous cell halved the resolution, so input 0 is reduced too.

    Op modules live in ``self.ops`` under ``node<dst>_in<k>``.
    """

    def __init__(
        self,
        genes: Sequence[tuple[str, int]],
        concat: Sequence[int],
        c_prev_prev: int,
        c_prev: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        if len(genes) % 2:
            raise SpaceError(f"DartsCell: need two (op, src) genes per node, got {len(genes)}")
        self.reduction = reduction
        self.preprocess0: nn.Module = (
            FactorizedReduce(c_prev_prev, c, 2) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1)
        )
        self.preprocess1 = ReLUConvBN(c_prev, c, 1)
        self.genes = [(str(op), int(src)) for op, src in genes]
        self.concat = [int(i) for i in concat]
        self.steps = len(genes) // 2
        ops: dict[str, nn.Module] = {}
        for i, (op, src) in enumerate(self.genes):
            dst = 2 + i // 2
            if not 0 <= src < dst:
                raise SpaceError(f"DartsCell: node {dst} cannot read node {src}")
            ops[f"node{dst}_in{i % 2}"] = make_darts_op(op, c, 2 if reduction and src < 2 else 1)
        self.ops = nn.ModuleDict(ops)
        self.multiplier = len(self.concat)

    fork_branches = False

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        # nodes 0 and 1 are the preprocessed inputs (edges from the raw inputs -2 and -1)
        edges: list[tuple[int, int, nn.Module]] = [
            (0, 2, self.preprocess0),
            (1, 3, self.preprocess1),
        ]
        for i, (_, src) in enumerate(self.genes):
            dst = 2 + i // 2
            edges.append((src + 2, dst + 2, self.ops[f"node{dst}_in{i % 2}"]))
        edges.sort(key=lambda e: e[0])
        states = run_dag([s0, s1] + [None] * (self.steps + 2), edges, self.fork_branches, s1)
        return torch.cat([states[i + 2] for i in self.concat], dim=1)  # type: ignore[misc]


class DartsNetwork(nn.Module):
    """DARTS' CIFAR network: stem (3x3 conv to ``stem_multiplier * c``), ``layers`` cells with
    reduction cells at ``layers // 3`` and ``2 * layers // 3`` (channels doubled there), global
    average pool, linear classifier.
    """

    def __init__(
        self,
        normal: Sequence[tuple[str, int]],
        normal_concat: Sequence[int],
        reduce: Sequence[tuple[str, int]],
        reduce_concat: Sequence[int],
        c: int = 8,
        layers: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        stem_multiplier: int = 3,
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
            genes, concat = (reduce, reduce_concat) if reduction else (normal, normal_concat)
            cell = DartsCell(genes, concat, c_pp, c_p, c_curr, reduction, reduction_prev)
            cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr
        self.cells = nn.ModuleList(cells)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1))
