"""`nb201`: the NAS-Bench-201 cell space (4 nodes, 6 edges, 5 ops, 15,625 cells).

Labels are ``edge_<dst>_<src>``: the op on the edge from node ``src`` to node ``dst``
(``edge_1_0``, ``edge_2_0``, ``edge_2_1``, ``edge_3_0``, ``edge_3_1``, ``edge_3_2``), the same
edges as the benchmark table's ``op_<dst>_<src>`` columns. Archs read and print the official
string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (:meth:`NB201Space.from_string`,
:meth:`NB201Space.to_string`).

Canonical keys (:func:`canonical_cell`): two cells share a key when their live DAGs compute
the same function for every value of the weights, up to renaming the weights. Dead edges
(``none``, fed only by zero, not reaching the output) drop out, ``skip_connect`` is the
identity, sums commute, nodes 1 and 2 swap when no edge joins them, and ``avg_pool_3x3`` (no
weights, linear) distributes over sums. Over all 15,625 cells this gives 5,044 keys. The
NB201 paper's 6,466 "unique topologies" use a string rule that keeps ``+ 0`` terms (``x + 0``
differs from ``x``) and does not tell a conv used twice from two convs. One approximation,
shared with NB201: a conv fed only by zeros outputs its BN's learned per-channel shift, not
exactly zero; such edges are treated as zero and pruned.

Layer plan (for latency tables): stem, three stages of ``N`` cells (a DAG of ``nb201.op``
edges with ``sum`` merges) joined by ``nb201.resblock`` reductions, then ``nb201.head``; the
factories are registered when this module is imported.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from nasforge.errors import ConfigError, SpaceError
from nasforge.nn.cells import NB201_OPS, Edge, NB201Network, ResNetBasicBlock, make_op
from nasforge.nn.layers import register_layer
from nasforge.space import Arch, Categorical, SearchSpace
from nasforge.space.arch import Value
from nasforge.space.plan import Cell, LayerSpec, Plan, PlanCache, Segment, downsample

NUM_NODES = 4
#: (dst, src) of the six edges, in the order of the official arch string.
EDGES: tuple[tuple[int, int], ...] = tuple((d, s) for d in range(1, NUM_NODES) for s in range(d))
ZERO = "#"


def edge_label(dst: int, src: int) -> str:
    """The arch label of the edge from node ``src`` to node ``dst``: ``edge_<dst>_<src>``."""
    return f"edge_{dst}_{src}"


LABELS: tuple[str, ...] = tuple(edge_label(d, s) for d, s in EDGES)


def _node_reach(values: Mapping[str, Any]) -> tuple[list[bool], list[bool]]:
    """(nonzero, reaches_output) per node, following non-``none`` edges only."""
    nonzero = [True] + [False] * (NUM_NODES - 1)
    for d, s in EDGES:  # EDGES is ordered by dst, so sources are final when read
        if values[edge_label(d, s)] != "none" and nonzero[s]:
            nonzero[d] = True
    reaches = [False] * (NUM_NODES - 1) + [True]
    for d, s in sorted(EDGES, reverse=True):
        if values[edge_label(d, s)] != "none" and reaches[d]:
            reaches[s] = True
    return nonzero, reaches


def live_edges(values: Mapping[str, Any]) -> list[Edge]:
    """``(src, dst, op)`` of the edges that carry a nonzero signal from input to output.

    An edge is live when its op is not ``none``, its source is reachable from the input through
    non-``none`` edges and its destination reaches the output node. Sorted by (dst, src).
    """
    nonzero, reaches = _node_reach(values)
    out = []
    for d, s in EDGES:
        op = str(values[edge_label(d, s)])
        if op != "none" and nonzero[s] and reaches[d]:
            out.append((s, d, op))
    return out


_FORWARD = tuple((d, s, i) for i, (d, s) in enumerate(EDGES))
_BACKWARD = _FORWARD[::-1]  # EDGES is sorted by (dst, src)


def _live_ops(ops: tuple[Any, ...]) -> tuple[Edge, ...]:
    """:func:`live_edges` of the ops of :data:`LABELS` (in that order), as a tuple."""
    nonzero = [True, False, False, False]
    for d, s, i in _FORWARD:
        if nonzero[s] and ops[i] != "none":
            nonzero[d] = True
    reaches = [False, False, False, True]
    for d, s, i in _BACKWARD:
        if reaches[d] and ops[i] != "none":
            reaches[s] = True
    return tuple(
        [
            (s, d, str(ops[i]))
            for d, s, i in _FORWARD
            if nonzero[s] and reaches[d] and ops[i] != "none"
        ]
    )


def _all_ops(ops: tuple[Any, ...]) -> tuple[Edge, ...]:
    """Every edge ``(src, dst, op)`` of the ops of :data:`LABELS` (in that order)."""
    return tuple([(s, d, str(ops[i])) for d, s, i in _FORWARD])


#: ops without parameters whose output is a linear function of the input (sums distribute).
LINEAR_PARAMETER_FREE = frozenset({"avg_pool_3x3"})


def canonical_cell(values: Mapping[str, Any]) -> tuple[str, dict[str, int]]:
    """The cell's canonical signature and, for each live conv edge, its canonical position.

    The output is a sum of *terms*: the input ``x`` or the output of an op instance. Each
    conv edge is its own instance (own weights) fed by the sum of terms of its source node;
    ``skip_connect`` passes its source's terms on; ``avg_pool_3x3`` has no weights and is
    linear, so ``pool(a + b)`` becomes the terms ``pool(a) + pool(b)`` and equal pool terms
    are one instance. The signature is the smallest encoding of this instance graph over all
    labellings of look-alike instances (same op on the same expanded expression), so a conv
    used twice (through skips) differs from two convs on the same input.

    Two cells with one signature compute the same function once their convs are matched by
    the returned positions (``{edge label: position}``); ``#`` is the all-zero cell.
    """
    inst_op: dict[str, str] = {}
    inst_in: dict[str, tuple[str, ...]] = {}
    node_terms: dict[int, list[str]] = {d: [] for d in range(NUM_NODES)}
    node_terms[0] = ["x"]
    for s, d, op in live_edges(values):  # sorted by dst: sources are complete when read
        if op == "skip_connect":
            node_terms[d].extend(node_terms[s])
        elif op in LINEAR_PARAMETER_FREE:
            for t in node_terms[s]:
                tid = f"{op}[{t}]"
                inst_op[tid], inst_in[tid] = op, (t,)
                node_terms[d].append(tid)
        else:
            tid = edge_label(d, s)
            inst_op[tid], inst_in[tid] = op, tuple(node_terms[s])
            node_terms[d].append(tid)
    output = node_terms[NUM_NODES - 1]
    if not output:
        return ZERO, {}

    expanded: dict[str, str] = {"x": "x"}

    def expand(t: str) -> str:
        if t not in expanded:
            expanded[t] = f"{inst_op[t]}({'+'.join(sorted(expand(u) for u in inst_in[t]))})"
        return expanded[t]

    insts = sorted(inst_op, key=lambda t: (expand(t), t))
    groups = [list(g) for _, g in itertools.groupby(insts, key=expand)]
    best: tuple[Any, ...] | None = None
    best_order: list[str] = []
    for perms in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = [t for perm in perms for t in perm]
        label = {t: i for i, t in enumerate(order)}
        label["x"] = -1
        code = (
            tuple((expand(t), tuple(sorted(label[u] for u in inst_in[t]))) for t in order),
            tuple(sorted(label[t] for t in output)),
        )
        if best is None or code < best:
            best, best_order = code, order
    positions = {t: i for i, t in enumerate(best_order) if t.startswith("edge_")}
    return repr(best), positions


class NB201Space(SearchSpace):
    """The NAS-Bench-201 cell space and network.

    Args:
        input_shape: (C, H, W) of the dataset; the stem reads C channels.
        num_classes: classifier outputs.
        C: channels of the first stage (NB201: 16; 2C and 4C follow).
        N: cells per stage (NB201: 5).
        ops: the op choices, a subset of ``none, skip_connect, nor_conv_1x1, nor_conv_3x3,
            avg_pool_3x3`` (default: all five, as in the benchmark).
        prune_dead_edges: :meth:`build` leaves out edges that cannot affect the output (see
            :func:`live_edges`), so archs with one key build the same network. ``False``
            builds every edge as the NB201 reference does (parameter counts then match the
            benchmark's, dead convs included).

    Raises:
        ConfigError: an option is out of range (the message names it).
    """

    name = "nb201"

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        C: int = 16,
        N: int = 5,
        ops: Sequence[str] = NB201_OPS,
        prune_dead_edges: bool = True,
    ) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise ConfigError(
                f"nb201: input_shape must be (C, H, W) images, got {self.input_shape}"
            )
        for field, value in (("num_classes", num_classes), ("C", C), ("N", N)):
            if int(value) < 1:
                raise ConfigError(f"nb201.{field}: must be >= 1, got {value}")
        bad = [op for op in ops if op not in NB201_OPS]
        if bad or not ops:
            raise ConfigError(
                f"nb201.ops: unknown op(s) {bad}; expected a non-empty subset of "
                f"{', '.join(NB201_OPS)}"
            )
        self.num_classes = int(num_classes)
        self.C, self.N = int(C), int(N)
        self.ops = tuple(dict.fromkeys(ops))
        self.prune_dead_edges = bool(prune_dead_edges)
        super().__init__([Categorical(label, choices=self.ops) for label in LABELS])
        self._compile_plan()

    # -- keys -----------------------------------------------------------------------------------
    def canonical_form(self, values: Mapping[str, Value]) -> str | None:
        """The cell's canonical signature (:func:`canonical_cell`); equal for equivalent cells."""
        if any(label not in values for label in LABELS):
            return None
        return "nb201:" + canonical_cell(values)[0]

    # -- strings --------------------------------------------------------------------------------
    def from_string(self, text: str) -> Arch:
        """Parse the official arch string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.

        Whitespace around the string is ignored; within a node the edges may come in any order
        but each source must appear exactly once.

        Raises:
            SpaceError: the message says which node / edge is malformed and what is allowed.
        """
        if not isinstance(text, str):
            raise SpaceError(f"nb201: arch string must be a str, got {type(text).__name__}")
        s = text.strip()
        parts = s.split("+")
        if len(parts) != NUM_NODES - 1:
            raise SpaceError(
                f"nb201: arch string {text!r} has {len(parts)} node group(s) "
                f"separated by '+', expected {NUM_NODES - 1} like "
                f"'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'"
            )
        values: dict[str, str] = {}
        for dst, part in enumerate(parts, start=1):
            part = part.strip()
            if len(part) < 2 or not (part.startswith("|") and part.endswith("|")):
                raise SpaceError(
                    f"nb201: node {dst} group {part!r} must be enclosed in '|', e.g. '|op~0|op~1|'"
                )
            entries = part[1:-1].split("|")
            if len(entries) != dst:
                raise SpaceError(
                    f"nb201: node {dst} group {part!r} has {len(entries)} edge(s), "
                    f"expected {dst} (one from each of nodes 0..{dst - 1})"
                )
            for entry in entries:
                op, sep, src_text = entry.strip().partition("~")
                if not sep or not src_text.strip().isdigit():
                    raise SpaceError(
                        f"nb201: node {dst} edge {entry!r} must read 'op~<source node>'"
                    )
                src = int(src_text)
                if src >= dst:
                    raise SpaceError(
                        f"nb201: node {dst} edge {entry!r} reads node {src}; "
                        f"sources must be in 0..{dst - 1}"
                    )
                label = edge_label(dst, src)
                if label in values:
                    raise SpaceError(f"nb201: node {dst} has two edges from node {src} in {part!r}")
                op = op.strip()
                if op not in self.ops:
                    raise SpaceError(
                        f"nb201: node {dst} edge {entry!r}: unknown op {op!r}; "
                        f"expected one of {', '.join(self.ops)}"
                    )
                values[label] = op
        return self.make(values)

    def to_string(self, arch: Mapping[str, Any]) -> str:
        """The official arch string of ``arch`` (validated first)."""
        self.validate(arch)
        groups = []
        for d in range(1, NUM_NODES):
            groups.append("|" + "|".join(f"{arch[edge_label(d, s)]}~{s}" for s in range(d)) + "|")
        return "+".join(groups)

    def describe(self, arch: Mapping[str, Any]) -> str:
        return self.to_string(arch)

    # -- structure ------------------------------------------------------------------------------
    def cell_edges(self, arch: Mapping[str, Any]) -> list[Edge]:
        """The cell's live DAG as ``(src, dst, op)``, sorted by (dst, src).

        Dead edges (``none``, fed only by zero, or not reaching the output node 3) are left
        out; ``skip_connect`` edges stay (they cost nothing but shape the critical path).
        An empty list means the cell outputs zero.
        """
        self.validate(arch)
        return live_edges(arch)

    def all_archs(self) -> Iterator[Arch]:
        """Every cell of the space in the table's ``op_<dst>_<src>`` order (15,625 for 5 ops)."""
        for ops in itertools.product(self.ops, repeat=len(LABELS)):
            yield self.make(dict(zip(LABELS, ops)))

    def build(self, arch: Arch) -> nn.Module:
        """The NB201 network for ``arch`` (see :class:`~nasforge.nn.cells.NB201Network`).

        Raises:
            SpaceError: ``arch`` is not in the space.
        """
        self.validate(arch)
        if self.prune_dead_edges:
            edges = live_edges(arch)
        else:
            edges = [(s, d, str(arch[edge_label(d, s)])) for d, s in EDGES]
        return NB201Network(
            edges, c=self.C, n=self.N, num_classes=self.num_classes, in_channels=self.input_shape[0]
        )

    # -- layer plan -----------------------------------------------------------------------------
    def _compile_plan(self) -> None:
        cin = self.input_shape[0]
        spatial = tuple(self.input_shape[1:])
        self._stem = LayerSpec("conv3x3_bn", (cin, self.C), self.input_shape)
        #: per stage: (reduction block before it or None, cell width, cell input shape)
        self._stages: list[tuple[LayerSpec | None, int, tuple[int, ...]]] = []
        c_prev = self.C
        for stage, width in enumerate((self.C, 2 * self.C, 4 * self.C)):
            reduce = None
            if stage > 0:
                reduce = LayerSpec("nb201.resblock", (c_prev, width, 2), (c_prev, *spatial))
                spatial = downsample(spatial, 2)
            self._stages.append((reduce, width, (width, *spatial)))
            c_prev = width
        self._head = LayerSpec("nb201.head", (c_prev, self.num_classes), (c_prev, *spatial))
        #: per stage: (src, dst, op) -> its edge triple, fan-ins -> merges, the zero cell
        self._stage_specs: list[
            tuple[dict[Edge, tuple[int, int, LayerSpec]], dict[Any, Any], Cell]
        ] = []
        for _, w, shape in self._stages:
            ops = {op: LayerSpec("nb201.op", (op, w, w, 1), shape) for op in self.ops}
            triples = {(s, d, op): (s, d, ops[op]) for d, s in EDGES for op in self.ops}
            zero = Cell(num_nodes=2, edges=((0, 1, LayerSpec("zero", (), shape)),), outputs=(1,))
            self._stage_specs.append((triples, {}, zero))
        # stem, the two reduction blocks, head: segments every plan shares
        reduces = [(r, 1) for r, _, _ in self._stages if r is not None]
        self._fixed = ((self._stem, 1), reduces[0], reduces[1], (self._head, 1))
        self._plans: PlanCache[tuple[Any, ...], Plan] = PlanCache()
        self._cells: PlanCache[tuple[Edge, ...], tuple[tuple[Segment, int], ...]] = PlanCache()

    def _stage_cells(self, edges: tuple[Edge, ...]) -> tuple[tuple[Segment, int], ...]:
        """(cell, N) of ``edges`` at each stage's width (shared by archs with these edges).

        Edge triples and merge tuples come from per-stage tables, so a new edge set allocates
        little (fewer long-lived objects for the garbage collector to walk).
        """
        fan_in = [0] * NUM_NODES
        for _, d, _ in edges:
            fan_in[d] += 1
        merge_key = tuple(fan_in)
        n = max((d for _, d, _ in edges), default=1) + 1
        out = []
        for triples, merges, zero in self._stage_specs:
            if not edges:
                out.append((zero, self.N))
                continue
            m = merges.get(merge_key)
            if m is None:
                m = merges[merge_key] = tuple(
                    (d, LayerSpec("sum", (k,), zero.edges[0][2].in_shape))
                    for d, k in enumerate(fan_in)
                    if k > 1
                )
            cell = Cell(n, tuple([triples[e] for e in edges]), (n - 1,), m)
            out.append((cell, self.N))
        return self._cells.put(edges, tuple(out))

    def plan(self, arch: Mapping[str, Any]) -> Plan:
        """Stem, per stage a reduction block and ``N`` repeats of the cell, head.

        The cell is the live DAG (:func:`live_edges`) when ``prune_dead_edges``, else all six
        edges; plans are cached per genotype and cells per edge set.
        """
        v = arch.to_dict() if isinstance(arch, Arch) else arch
        ops = tuple(map(v.__getitem__, LABELS))
        hit = self._plans.get(ops)
        if hit is not None:
            return hit
        edges = _live_ops(ops) if self.prune_dead_edges else _all_ops(ops)
        a, b, c = self._cells.get(edges) or self._stage_cells(edges)
        return self._plans.put(
            ops, (self._fixed[0], a, self._fixed[1], b, self._fixed[2], c, self._fixed[3])
        )

    def all_layers(self) -> list[LayerSpec]:
        """Stem, reductions, every op, 2- and 3-input sums and the zero cell per stage, head."""
        out = [self._stem]
        for reduce, w, shape in self._stages:
            if reduce is not None:
                out.append(reduce)
            out.extend(LayerSpec("nb201.op", (op, w, w, 1), shape) for op in self.ops)
            out.extend(LayerSpec("sum", (k,), shape) for k in (2, 3))
            out.append(LayerSpec("zero", (), shape))
        out.append(self._head)
        return list(dict.fromkeys(out))


# -- layer factories (the ops of NB201Space.plan) ---------------------------------------------
def _op_layer(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    name, c_in, c_out, stride = args
    return make_op(name, c_in, c_out, stride)


def _resblock_layer(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    c_in, c_out, stride = args
    return ResNetBasicBlock(c_in, c_out, stride)


def _head_layer(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    c, num_classes = args
    return nn.Sequential(
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(c, num_classes),
    )


register_layer("nb201.op", _op_layer, forked=True)
register_layer("nb201.resblock", _resblock_layer)
register_layer("nb201.head", _head_layer)
