"""`darts`: the DARTS cell space (a normal and a reduction cell, each with 4 intermediate nodes).

Each intermediate node ``j`` (numbered 2..5; 0 and 1 are the cell's two inputs) sums two
terms ``op(node src)`` with ``src < j``. Labels: ``normal/node2/in0/op``,
``normal/node2/in0/src``, ... ``reduce/node5/in1/src``. The output concatenates every
intermediate node (``concat = [2, 3, 4, 5]``), as in DARTS. Unlike DARTS' derived genotypes,
``none`` is a choice and the two inputs of a node may be the same node (the space is a
superset of the genotypes DARTS derives).

Archs read and print DARTS' genotype notation (:meth:`DartsSpace.from_string`,
:meth:`DartsSpace.to_string`)::

    Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5],
             reduce=[...], reduce_concat=[2, 3, 4, 5])

``range(2, 6)`` is accepted for the concats (that is how DARTS' logs print them).

Canonical keys are exact: the two terms of a node commute, the source of a ``none`` term is
irrelevant, and intermediate nodes may be renumbered in any order that keeps the DAG
computable (the output concatenation is then permuted in channels, which the next cell's 1x1
preprocessing or the classifier absorbs). Zeros are *not* propagated through convolutions:
a conv on an all-zero node outputs its BN's learned constant, so that would not be exact.

Layer plan (for latency tables): stem, one cell per layer (its two ``darts.pre``
preprocessings and ``darts.op`` edges into ``sum`` merges, joined by a ``concat``), then
``pool_linear``; the factories are registered when this module is imported.
"""

from __future__ import annotations

import ast
import itertools
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from nasforge.errors import ConfigError, SpaceError
from nasforge.nn.cells import (
    DARTS_OPS,
    DartsNetwork,
    Edge,
    FactorizedReduce,
    ReLUConvBN,
    make_darts_op,
)
from nasforge.nn.layers import register_layer
from nasforge.space import Arch, Categorical, SearchSpace
from nasforge.space.arch import Value
from nasforge.space.plan import Cell, LayerSpec, Plan, PlanCache, Segment, downsample

CELLS = ("normal", "reduce")
Gene = tuple[str, int]


def gene_labels(cell: str, node: int, k: int) -> tuple[str, str]:
    """(op label, src label) of input ``k`` (0 or 1) of intermediate ``node`` in ``cell``."""
    return f"{cell}/node{node}/in{k}/op", f"{cell}/node{node}/in{k}/src"


def _literal(node: ast.expr, field: str) -> Any:
    """A Python literal, or ``range(a, b)`` as a list."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "range"
        and not node.keywords
    ):
        args = [_literal(a, field) for a in node.args]
        if not 1 <= len(args) <= 3 or not all(isinstance(a, int) for a in args):
            raise SpaceError(f"darts: {field} has a malformed range(...)")
        return list(range(*args))
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise SpaceError(
            f"darts: {field} must be a literal list, got {ast.unparse(node)!r}"
        ) from None


@dataclass(frozen=True)
class CellShape:
    """Where one cell of the stacked network sits: its channels, preprocessing and sizes."""

    reduction: bool
    c: int
    pre0: LayerSpec
    pre1: LayerSpec
    spatial_in: tuple[int, ...]
    spatial_out: tuple[int, ...]


class DartsSpace(SearchSpace):
    """The DARTS cell space and its stacked CIFAR-style network.

    Args:
        input_shape: (C, H, W) of the dataset (32x32, 28x28 and 8x8 all work).
        num_classes: classifier outputs.
        C: initial channels (DARTS' evaluation uses 36; the default 8 keeps CPU runs short).
        layers: number of cells; reduction cells sit at ``layers // 3`` and ``2 * layers // 3``.
        steps: intermediate nodes per cell (DARTS: 4).
        ops: op choices, a subset of :data:`~nasforge.nn.cells.DARTS_OPS`.
        stem_multiplier: stem channels are ``stem_multiplier * C``.

    Raises:
        ConfigError: an option is out of range (the message names it).
    """

    name = "darts"

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        C: int = 8,
        layers: int = 5,
        steps: int = 4,
        ops: Sequence[str] = DARTS_OPS,
        stem_multiplier: int = 3,
    ) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise ConfigError(
                f"darts: input_shape must be (C, H, W) images, got {self.input_shape}"
            )
        for field, value in (
            ("num_classes", num_classes),
            ("C", C),
            ("layers", layers),
            ("steps", steps),
            ("stem_multiplier", stem_multiplier),
        ):
            if int(value) < 1:
                raise ConfigError(f"darts.{field}: must be >= 1, got {value}")
        if steps > 6:  # canonical keys try every renumbering of the nodes (steps! of them)
            raise ConfigError(
                f"darts.steps: at most 6 intermediate nodes are supported, got {steps}"
            )
        bad = [op for op in ops if op not in DARTS_OPS]
        if bad or not ops:
            raise ConfigError(
                f"darts.ops: unknown op(s) {bad}; expected a non-empty subset of "
                f"{', '.join(DARTS_OPS)}"
            )
        self.num_classes = int(num_classes)
        self.C, self.layers, self.steps = int(C), int(layers), int(steps)
        self.stem_multiplier = int(stem_multiplier)
        self.ops = tuple(dict.fromkeys(ops))
        self.concat = list(range(2, 2 + self.steps))
        dims = []
        for cell in CELLS:
            for node in self.concat:
                for k in (0, 1):
                    op_label, src_label = gene_labels(cell, node, k)
                    dims.append(Categorical(op_label, choices=self.ops))
                    dims.append(Categorical(src_label, choices=tuple(range(node))))
        super().__init__(dims)
        self._compile_plan()

    # -- genotype views -------------------------------------------------------------------------
    def genes(self, arch: Mapping[str, Any], cell: str) -> list[Gene]:
        """DARTS' ``[(op, src), ...]`` list of ``cell`` ('normal' or 'reduce'), two per node."""
        if cell not in CELLS:
            raise SpaceError(f"darts: cell must be one of {', '.join(CELLS)}, got {cell!r}")
        out = []
        for node in self.concat:
            for k in (0, 1):
                op_label, src_label = gene_labels(cell, node, k)
                out.append((str(arch[op_label]), int(arch[src_label])))
        return out

    def from_genes(self, normal: Sequence[Gene], reduce: Sequence[Gene]) -> Arch:
        """The arch with these gene lists (validated, :class:`SpaceError` names the bad gene)."""
        values: dict[str, Value] = {}
        for cell, genes in (("normal", normal), ("reduce", reduce)):
            genes = list(genes)
            if len(genes) != 2 * self.steps:
                raise SpaceError(
                    f"darts: {cell} has {len(genes)} genes, expected {2 * self.steps} "
                    f"(two (op, input) pairs for each of nodes {self.concat})"
                )
            for i, gene in enumerate(genes):
                node, k = 2 + i // 2, i % 2
                if (
                    not isinstance(gene, (tuple, list))
                    or len(gene) != 2
                    or not isinstance(gene[0], str)
                    or isinstance(gene[1], bool)
                    or not isinstance(gene[1], numbers.Integral)
                ):
                    raise SpaceError(
                        f"darts: {cell}[{i}] = {gene!r} must be an (op, input) pair "
                        f"like ('sep_conv_3x3', 0)"
                    )
                op, src = gene[0], int(gene[1])
                if op not in self.ops:
                    raise SpaceError(
                        f"darts: {cell}[{i}] (node {node}): unknown op {op!r}; "
                        f"expected one of {', '.join(self.ops)}"
                    )
                if not 0 <= src < node:
                    raise SpaceError(
                        f"darts: {cell}[{i}] (node {node}) reads node {src}; "
                        f"inputs must be in 0..{node - 1}"
                    )
                op_label, src_label = gene_labels(cell, node, k)
                values[op_label], values[src_label] = op, src
        return self.make(values)

    def from_string(self, text: str) -> Arch:
        """Parse ``Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])``.

        Positional arguments in that order are accepted too. The concats must be every
        intermediate node (``[2, 3, 4, 5]`` or ``range(2, 6)``).

        Raises:
            SpaceError: the message names the malformed field.
        """
        if not isinstance(text, str):
            raise SpaceError(f"darts: genotype must be a str, got {type(text).__name__}")
        try:
            tree = ast.parse(text.strip(), mode="eval").body
        except SyntaxError as exc:
            raise SpaceError(
                f"darts: genotype {text!r} is not valid Python syntax ({exc.msg})"
            ) from None
        if not (
            isinstance(tree, ast.Call)
            and isinstance(tree.func, ast.Name)
            and tree.func.id == "Genotype"
        ):
            raise SpaceError(
                f"darts: expected 'Genotype(normal=[...], normal_concat=[...], "
                f"reduce=[...], reduce_concat=[...])', got {text!r}"
            )
        names = ("normal", "normal_concat", "reduce", "reduce_concat")
        if len(tree.args) > len(names):
            raise SpaceError(
                f"darts: Genotype takes at most {len(names)} fields, got {len(tree.args)}"
            )
        fields: dict[str, Any] = {}
        for name, node in zip(names, tree.args):
            fields[name] = _literal(node, name)
        for kw in tree.keywords:
            if kw.arg not in names:
                raise SpaceError(
                    f"darts: unknown Genotype field {kw.arg!r}; expected {', '.join(names)}"
                )
            if kw.arg in fields:
                raise SpaceError(f"darts: Genotype field {kw.arg!r} given twice")
            fields[kw.arg] = _literal(kw.value, kw.arg)
        missing = [n for n in names if n not in fields]
        if missing:
            raise SpaceError(f"darts: Genotype is missing field(s) {', '.join(missing)}")
        for name in ("normal_concat", "reduce_concat"):
            if list(fields[name]) != self.concat:
                raise SpaceError(
                    f"darts: {name} must be {self.concat} (every intermediate node; "
                    f"other concats are not in this space), got {fields[name]!r}"
                )
        for name in ("normal", "reduce"):
            if not isinstance(fields[name], (list, tuple)):
                raise SpaceError(f"darts: {name} must be a list of (op, input) pairs")
        return self.from_genes(fields["normal"], fields["reduce"])

    def to_string(self, arch: Mapping[str, Any]) -> str:
        """DARTS' genotype notation of ``arch`` (validated first)."""
        self.validate(arch)
        return (
            f"Genotype(normal={self.genes(arch, 'normal')!r}, normal_concat={self.concat!r}, "
            f"reduce={self.genes(arch, 'reduce')!r}, reduce_concat={self.concat!r})"
        )

    def describe(self, arch: Mapping[str, Any]) -> str:
        return self.to_string(arch)

    # -- keys -----------------------------------------------------------------------------------
    def _canonical_cell(self, genes: Sequence[Gene]) -> tuple[tuple[Gene, ...], ...]:
        # 'none' ignores its input: give it a fixed source so it neither splits keys nor
        # constrains the renumbering of nodes.
        nodes = [
            [(op, -1 if op == "none" else src) for op, src in genes[2 * i : 2 * i + 2]]
            for i in range(self.steps)
        ]
        best: tuple[tuple[Gene, ...], ...] | None = None
        for perm in itertools.permutations(range(self.steps)):
            new = {0: 0, 1: 1, -1: -1, **{2 + i: 2 + p for i, p in enumerate(perm)}}
            if any(new[src] >= new[2 + i] for i, terms in enumerate(nodes) for _, src in terms):
                continue
            relabeled: list[tuple[Gene, ...]] = [()] * self.steps
            for i, terms in enumerate(nodes):
                relabeled[perm[i]] = tuple(sorted((op, new[src]) for op, src in terms))
            cand = tuple(relabeled)
            if best is None or cand < best:
                best = cand
        assert best is not None  # the identity permutation is always valid
        return best

    def canonical_form(self, values: Mapping[str, Value]) -> str | None:
        """Equal for cells that are the same DAG up to input order and node renumbering."""
        try:
            normal, reduce = self.genes(values, "normal"), self.genes(values, "reduce")
        except KeyError:
            return None
        return f"darts:{self._canonical_cell(normal)!r}|{self._canonical_cell(reduce)!r}"

    # -- structure ------------------------------------------------------------------------------
    def cell_edges(self, arch: Mapping[str, Any], cell: str = "normal") -> list[Edge]:
        """The live edges of ``cell`` as ``(src, dst, op)``, ``none`` left out, sorted by dst.

        Nodes 0 and 1 are the cell inputs (after the 1x1 / factorized preprocessing, whose
        cost belongs to the cell too); the output concatenates nodes ``2..steps+1``, so a
        critical path ends at whichever of them finishes last. In the reduction cell, edges
        from nodes 0 and 1 have stride 2.
        """
        self.validate(arch)
        out = []
        for i, (op, src) in enumerate(self.genes(arch, cell)):
            if op != "none":
                out.append((src, 2 + i // 2, op))
        return sorted(out, key=lambda e: (e[1], e[0], e[2]))

    def build(self, arch: Arch) -> nn.Module:
        """The stacked DARTS network for ``arch`` (see :class:`~nasforge.nn.cells.DartsNetwork`).

        Raises:
            SpaceError: ``arch`` is not in the space.
        """
        self.validate(arch)
        return DartsNetwork(
            self.genes(arch, "normal"),
            self.concat,
            self.genes(arch, "reduce"),
            self.concat,
            c=self.C,
            layers=self.layers,
            num_classes=self.num_classes,
            in_channels=self.input_shape[0],
            stem_multiplier=self.stem_multiplier,
        )

    # -- layer plan -----------------------------------------------------------------------------
    def _compile_plan(self) -> None:
        cin = self.input_shape[0]
        spatial = tuple(self.input_shape[1:])
        c_curr = self.stem_multiplier * self.C
        self._stem = LayerSpec("conv3x3_bn", (cin, c_curr), self.input_shape)
        c_pp, c_p, c_curr = c_curr, c_curr, self.C
        sp_pp, sp_p = spatial, spatial
        reduction_prev = False
        shapes = []
        for i in range(self.layers):
            reduction = i in (self.layers // 3, 2 * self.layers // 3)
            if reduction:
                c_curr *= 2
            kind = "reduce" if reduction_prev else "plain"
            pre0 = LayerSpec("darts.pre", (kind, c_pp, c_curr), (c_pp, *sp_pp))
            pre1 = LayerSpec("darts.pre", ("plain", c_p, c_curr), (c_p, *sp_p))
            out_sp = downsample(sp_p, 2) if reduction else sp_p
            shapes.append(CellShape(reduction, c_curr, pre0, pre1, sp_p, out_sp))
            reduction_prev = reduction
            c_pp, c_p = c_p, len(self.concat) * c_curr
            sp_pp, sp_p = sp_p, out_sp
        self.cell_shapes: tuple[CellShape, ...] = tuple(shapes)
        self._head = LayerSpec("pool_linear", (c_p, self.num_classes), (c_p, *sp_p))
        #: (op labels, src labels) of the normal then the reduction genes
        pairs = [
            gene_labels(cell, node, k) for cell in CELLS for node in self.concat for k in (0, 1)
        ]
        self._gene_labels = (tuple(o for o, _ in pairs), tuple(s for _, s in pairs))
        self._plans: PlanCache[tuple[Any, ...], Plan] = PlanCache()
        #: the stem and head items every plan shares
        self._stem_seg: tuple[Segment, int] = (self._stem, 1)
        self._head_seg: tuple[Segment, int] = (self._head, 1)
        #: per cell shape, (op, reads a cell input) -> the op's layer
        self._op_specs: list[dict[tuple[str, bool], LayerSpec]] = []
        for sh in shapes:
            specs = {}
            for op in self.ops:
                stride_in = 2 if sh.reduction else 1
                specs[(op, True)] = LayerSpec(
                    "darts.op", (op, sh.c, stride_in), (sh.c, *sh.spatial_in)
                )
                specs[(op, False)] = LayerSpec("darts.op", (op, sh.c, 1), (sh.c, *sh.spatial_out))
            self._op_specs.append(specs)
        #: per cell shape: the preprocessing edges and (outputs, merges, join, num_inputs)
        self._cell_parts: list[tuple[Any, Any]] = []
        for sh in shapes:
            out = (sh.c, *sh.spatial_out)
            add = LayerSpec("sum", (2,), out)
            rest = (
                tuple(range(4, 4 + self.steps)),
                tuple((node + 4, add) for node in range(self.steps)),
                LayerSpec("concat", (self.steps,), out),
                2,
            )
            self._cell_parts.append((((0, 2, sh.pre0), (1, 3, sh.pre1)), rest))
        #: per cell shape, per gene slot: op -> src -> the edge triple (shared by all cells)
        self._slots = [
            [
                {
                    op: [(src + 2, 4 + i // 2, specs[(op, src < 2)]) for src in range(i // 2 + 2)]
                    for op in self.ops
                }
                for i in range(2 * self.steps)
            ]
            for specs in self._op_specs
        ]

        #: per cell position: its gene slots, preprocessing edges, the rest of its Cell, and
        #: whether it takes the reduction genes
        self._plan_cells = [
            (slots, pre, rest, int(sh.reduction))
            for slots, (pre, rest), sh in zip(self._slots, self._cell_parts, self.cell_shapes)
        ]

    def _cell(self, pos: int, genes: Sequence[Gene]) -> Cell:
        # Virtual nodes: 0, 1 the raw inputs; 2, 3 the preprocessed states; 4.. intermediate nodes.
        slots, pre, rest = self._slots[pos], *self._cell_parts[pos]
        edges = (*pre, *[slot[op][src] for slot, (op, src) in zip(slots, genes)])
        return Cell(self.steps + 4, edges, *rest)

    def plan(self, arch: Mapping[str, Any]) -> Plan:
        """Stem, one cell per layer (normal or reduction genes), classifier; cached per genotype.

        Cells are made as :meth:`_cell` makes them, inlined (a new genotype makes one per
        layer, on the latency predictor's first-pass hot path).
        """
        v = arch.to_dict() if isinstance(arch, Arch) else arch
        get = v.__getitem__
        ops, srcs = self._gene_labels
        key = tuple(zip(map(get, ops), map(get, srcs)))
        hit = self._plans.get(key)
        if hit is not None:
            return hit
        half = len(key) // 2
        genes = (key[:half], key[half:])
        n = self.steps + 4
        new = tuple.__new__
        out: list[tuple[Segment, int]] = [self._stem_seg]
        for slots, pre, rest, reduction in self._plan_cells:
            own = [slot[op][src] for slot, (op, src) in zip(slots, genes[reduction])]
            out.append((new(Cell, (n, pre + tuple(own), *rest)), 1))
        out.append(self._head_seg)
        return self._plans.put(key, tuple(out))

    def all_layers(self) -> list[LayerSpec]:
        """Stem; per cell its preprocessing, every op at both strides, sum and concat; head."""
        out = [self._stem]
        for sh, specs in zip(self.cell_shapes, self._op_specs):
            out += [sh.pre0, sh.pre1]
            for op in self.ops:
                out += [specs[(op, False)], specs[(op, True)]]
            out.append(LayerSpec("sum", (2,), (sh.c, *sh.spatial_out)))
            out.append(LayerSpec("concat", (self.steps,), (sh.c, *sh.spatial_out)))
        out.append(self._head)
        return list(dict.fromkeys(out))


# -- layer factories (the ops of DartsSpace.plan) ---------------------------------------------
def _op_layer(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    name, c, stride = args
    return make_darts_op(name, c, stride)


def _pre_layer(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    kind, c_in, c_out = args
    return FactorizedReduce(c_in, c_out, 2) if kind == "reduce" else ReLUConvBN(c_in, c_out, 1)


register_layer("darts.op", _op_layer, forked=True)
register_layer("darts.pre", _pre_layer, forked=True)
