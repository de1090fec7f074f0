"""Decompose an architecture into the layers a latency table keys on.

A :class:`LayerSpec` is one distinct (operation, configuration, input shape): enough to build
the layer alone (:func:`build_layer`) and time it. :func:`layers_of` turns an arch of a known
space into a :data:`Plan`: segments run one after the other, each a single layer or a
:class:`Cell` (a DAG of layers, for ``nb201`` and ``darts``), with a repeat count.
:func:`enumerate_layers` lists every layer a space can produce, which is what a table measures.

Spaces without a decomposer raise :class:`NotDecomposable`; callers then measure whole models.
New spaces register with :func:`register_decomposer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from nasforge.errors import NasforgeError
from nasforge.space import Arch, SearchSpace


class NotDecomposable(NasforgeError):
    """The space has no layer decomposition; latency must be measured on whole models."""


class LayerSpec(NamedTuple):
    """One table entry: factory name, factory arguments and per-sample input shape.

    ``op`` names a factory in :data:`LAYER_FACTORIES`; ``args`` are JSON scalars in the
    factory's argument order; ``in_shape`` excludes the batch dimension.
    """

    op: str
    args: tuple[Any, ...]
    in_shape: tuple[int, ...]

    @property
    def key(self) -> str:
        """Stable text key, e.g. ``mobile.ir(16,24,5,2,6,relu,True,2)@16x16x16``."""
        return (
            f"{self.op}({','.join(str(a) for a in self.args)})@{'x'.join(map(str, self.in_shape))}"
        )


@dataclass(frozen=True)
class Cell:
    """A DAG of layers executed as one segment.

    Nodes ``0 .. num_inputs-1`` are ready when the segment starts. ``edges`` are
    ``(src, dst, layer)`` with ``src < dst``; a node is ready when all its incoming edges are
    done and then its ``merges`` layer (the sum of several inputs) has run. The segment ends
    when every node in ``outputs`` is ready and the ``join`` layer (a concatenation) has run.
    """

    num_nodes: int
    edges: tuple[tuple[int, int, LayerSpec], ...]
    outputs: tuple[int, ...]
    merges: tuple[tuple[int, LayerSpec], ...] = ()
    join: LayerSpec | None = None
    num_inputs: int = 1

    def layers(self) -> Iterator[LayerSpec]:
        for _, _, spec in self.edges:
            yield spec
        for _, spec in self.merges:
            yield spec
        if self.join is not None:
            yield self.join


#: ops that run as cell edges: the ``torch:parallel`` backend forks each onto the inter-op pool
#: (see :func:`nasforge.nn.cells.run_dag`), so their table entries are timed forked too
BRANCH_OPS = frozenset({"nb201.op", "darts.op", "darts.pre"})

Segment = LayerSpec | Cell
Plan = tuple[tuple[Segment, int], ...]  # (segment, repeat count), run in order


def plan_layers(plan: Plan) -> Iterator[LayerSpec]:
    """Every layer of ``plan`` once per segment (repeats not expanded)."""
    for seg, _ in plan:
        if isinstance(seg, Cell):
            yield from seg.layers()
        else:
            yield seg


# -- layer factories ----------------------------------------------------------------------------
class _SumOf(nn.Module):
    """``k`` inputs summed (timed on one input added to itself ``k - 1`` times)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(self.k - 1):
            y = y + x
        return y


class _ConcatOf(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] * self.k, dim=1)


class _ZeroCell(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def _mobile_stem(cin: int, cout: int, k: int, stride: int, act: str, nd: int) -> nn.Module:
    from nasforge.nn.blocks import ConvBNAct

    return ConvBNAct(cin, cout, k, stride, act=act, nd=nd)


def _mobile_ir(
    cin: int, cout: int, k: int, stride: int, expand: int, act: str, se: bool, nd: int
) -> nn.Module:
    from nasforge.nn.blocks import InvertedResidual

    return InvertedResidual(
        cin, cout, kernel=k, stride=stride, expand=expand, act=act, se=se, nd=nd
    )


def _mobile_head(cin: int, features: int, num_classes: int, act: str, nd: int) -> nn.Module:
    from nasforge.nn.blocks import ClassifierHead

    return ClassifierHead(cin, features, num_classes, act=act, nd=nd)


def _conv_bn(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))


def _nb201_op(name: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    from nasforge.nn.cells import make_op

    return make_op(name, c_in, c_out, stride)


def _nb201_resblock(c_in: int, c_out: int, stride: int) -> nn.Module:
    from nasforge.nn.cells import ResNetBasicBlock

    return ResNetBasicBlock(c_in, c_out, stride)


def _nb201_head(c: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(c, num_classes),
    )


def _darts_op(name: str, c: int, stride: int) -> nn.Module:
    from nasforge.nn.cells import make_darts_op

    return make_darts_op(name, c, stride)


def _darts_pre(kind: str, c_in: int, c_out: int) -> nn.Module:
    from nasforge.nn.cells import FactorizedReduce, ReLUConvBN

    return FactorizedReduce(c_in, c_out, 2) if kind == "reduce" else ReLUConvBN(c_in, c_out, 1)


def _pool_linear(c: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, num_classes))


LAYER_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "mobile.stem": _mobile_stem,
    "mobile.ir": _mobile_ir,
    "mobile.head": _mobile_head,
    "conv3x3_bn": _conv_bn,
    "nb201.op": _nb201_op,
    "nb201.resblock": _nb201_resblock,
    "nb201.head": _nb201_head,
    "darts.op": _darts_op,
    "darts.pre": _darts_pre,
    "pool_linear": _pool_linear,
    "sum": _SumOf,
    "concat": _ConcatOf,
    "zero": _ZeroCell,
}


def build_layer(spec: LayerSpec) -> nn.Module:
    """A fresh module for ``spec`` in eval mode (takes one ``(batch, *spec.in_shape)`` tensor)."""
    try:
        factory = LAYER_FACTORIES[spec.op]
    except KeyError:
        raise NotDecomposable(
            f"layer {spec.key}: no factory for op {spec.op!r}; known: "
            f"{', '.join(sorted(LAYER_FACTORIES))}"
        ) from None
    return factory(*spec.args).eval()


# -- decomposers --------------------------------------------------------------------------------
def _conv_out(size: int, stride: int) -> int:
    """Output size of a 'same'-padded odd-kernel conv (or 3x3 pool / ceil-mode 2x2 pool)."""
    return (size - 1) // stride + 1


def _shape(c: int, spatial: tuple[int, ...]) -> tuple[int, ...]:
    return (c, *spatial)


def _down(spatial: tuple[int, ...], stride: int) -> tuple[int, ...]:
    return tuple(_conv_out(s, stride) for s in spatial)


def _mobile_plan(space: Any, arch: Arch) -> Plan:

    nd = space.nd
    cin0 = space.input_shape[0]
    spatial = tuple(space.input_shape[1:])
    stem = LayerSpec(
        "mobile.stem",
        (cin0, space.stem_channels, 3, space.stem_stride, "hswish", nd),
        space.input_shape,
    )
    out: list[tuple[Segment, int]] = [(stem, 1)]
    spatial = _down(spatial, space.stem_stride)
    ch = space.stem_channels
    for blk in space.blocks(arch):
        spec = LayerSpec(
            "mobile.ir",
            (blk.in_ch, blk.out_ch, blk.kernel, blk.stride, blk.expand, blk.act, blk.se, nd),
            (blk.in_ch, *spatial),
        )
        out.append((spec, 1))
        spatial = _down(spatial, blk.stride)
        ch = blk.out_ch
    out.append(
        (
            LayerSpec(
                "mobile.head",
                (ch, space.head_features, space.num_classes, "hswish", nd),
                (ch, *spatial),
            ),
            1,
        )
    )
    return tuple(out)


def _mobile_layers(space: Any) -> Iterator[LayerSpec]:
    """Every layer any mobile arch can produce: walk the stages, tracking (channels, size) sets."""
    from nasforge.nn.blocks import make_divisible

    nd = space.nd
    spatial = tuple(space.input_shape[1:])
    yield LayerSpec(
        "mobile.stem",
        (space.input_shape[0], space.stem_channels, 3, space.stem_stride, "hswish", nd),
        space.input_shape,
    )
    spatial = _down(spatial, space.stem_stride)
    ins = {space.stem_channels}
    block_dims = {
        d.label.rsplit("/", 1)[-1]: d for d in space.dimensions() if "/block0/" in d.label
    }
    kernels, expands = block_dims["kernel"].choices, block_dims["expand"].choices
    acts, ses = block_dims["act"].choices, block_dims["se"].choices
    for i, st in enumerate(space.stages):
        widths = space.dimension(f"stage{i}/width").choices
        outs = {make_divisible(st.channels * float(w)) for w in widths}
        pairs = {(c_in, c_out, st.stride) for c_in in ins for c_out in outs}
        if st.max_depth > 1:
            pairs |= {(c, c, 1) for c in outs}
        for c_in, c_out, stride in sorted(pairs):
            shape = _shape(c_in, spatial if stride == st.stride else _down(spatial, st.stride))
            for k in kernels:
                for e in expands:
                    for act in acts:
                        for se in ses:
                            yield LayerSpec(
                                "mobile.ir",
                                (c_in, c_out, int(k), stride, int(e), str(act), bool(se), nd),
                                shape,
                            )
        spatial = _down(spatial, st.stride)
        ins = outs
    for c in sorted(ins):
        yield LayerSpec(
            "mobile.head",
            (c, space.head_features, space.num_classes, "hswish", nd),
            _shape(c, spatial),
        )


def _nb201_cell(edges: Iterable[tuple[int, int, str]], c: int, spatial: tuple[int, ...]) -> Cell:
    shape = _shape(c, spatial)
    edge_specs = tuple((s, d, LayerSpec("nb201.op", (op, c, c, 1), shape)) for s, d, op in edges)
    if not edge_specs:
        return Cell(num_nodes=2, edges=((0, 1, LayerSpec("zero", (), shape)),), outputs=(1,))
    fan_in: dict[int, int] = {}
    for _, d, _ in edge_specs:
        fan_in[d] = fan_in.get(d, 0) + 1
    merges = tuple((d, LayerSpec("sum", (k,), shape)) for d, k in sorted(fan_in.items()) if k > 1)
    num_nodes = max(d for _, d, _ in edge_specs) + 1
    return Cell(num_nodes=num_nodes, edges=edge_specs, outputs=(num_nodes - 1,), merges=merges)


def _nb201_stages(space: Any) -> Iterator[tuple[int, int, tuple[int, ...], tuple[int, ...]]]:
    """(stage, width, spatial before the stage's reduction block, spatial of its cells)."""
    spatial = tuple(space.input_shape[1:])
    for stage, width in enumerate((space.C, 2 * space.C, 4 * space.C)):
        before = spatial
        if stage > 0:
            spatial = _down(spatial, 2)
        yield stage, width, before, spatial


def _nb201_plan(space: Any, arch: Arch) -> Plan:
    from nasforge.spaces.nb201 import EDGES, edge_label, live_edges

    if space.prune_dead_edges:
        edges = live_edges(arch)
    else:
        edges = [(s, d, str(arch[edge_label(d, s)])) for d, s in EDGES]
    cin = space.input_shape[0]
    out: list[tuple[Segment, int]] = [
        (LayerSpec("conv3x3_bn", (cin, space.C), space.input_shape), 1)
    ]
    c_prev = space.C
    for stage, width, before, spatial in _nb201_stages(space):
        if stage > 0:
            out.append((LayerSpec("nb201.resblock", (c_prev, width, 2), _shape(c_prev, before)), 1))
        out.append((_nb201_cell(edges, width, spatial), space.N))
        c_prev = width
    out.append((LayerSpec("nb201.head", (c_prev, space.num_classes), _shape(c_prev, spatial)), 1))
    return tuple(out)


def _nb201_layers(space: Any) -> Iterator[LayerSpec]:
    cin = space.input_shape[0]
    yield LayerSpec("conv3x3_bn", (cin, space.C), space.input_shape)
    c_prev = space.C
    for stage, width, before, spatial in _nb201_stages(space):
        shape = _shape(width, spatial)
        if stage > 0:
            yield LayerSpec("nb201.resblock", (c_prev, width, 2), _shape(c_prev, before))
        for op in space.ops:
            yield LayerSpec("nb201.op", (op, width, width, 1), shape)
        yield LayerSpec("sum", (2,), shape)
        yield LayerSpec("sum", (3,), shape)
        yield LayerSpec("zero", (), shape)
        c_prev = width
    yield LayerSpec("nb201.head", (c_prev, space.num_classes), _shape(c_prev, spatial))


@dataclass(frozen=True)
class _DartsCellShape:
    reduction: bool
    c: int
    pre0: LayerSpec
    pre1: LayerSpec
    spatial_in: tuple[int, ...]
    spatial_out: tuple[int, ...]


def _darts_shapes(space: Any) -> tuple[LayerSpec, list[_DartsCellShape], LayerSpec]:
    cin = space.input_shape[0]
    spatial = tuple(space.input_shape[1:])
    c_curr = space.stem_multiplier * space.C
    stem = LayerSpec("conv3x3_bn", (cin, c_curr), space.input_shape)
    c_pp, c_p, c_curr = c_curr, c_curr, space.C
    sp_pp, sp_p = spatial, spatial
    reduction_prev = False
    cells = []
    for i in range(space.layers):
        reduction = i in (space.layers // 3, 2 * space.layers // 3)
        if reduction:
            c_curr *= 2
        pre0 = LayerSpec(
            "darts.pre",
            ("reduce" if reduction_prev else "plain", c_pp, c_curr),
            _shape(c_pp, sp_pp),
        )
        pre1 = LayerSpec("darts.pre", ("plain", c_p, c_curr), _shape(c_p, sp_p))
        out_sp = _down(sp_p, 2) if reduction else sp_p
        cells.append(_DartsCellShape(reduction, c_curr, pre0, pre1, sp_p, out_sp))
        reduction_prev = reduction
        c_pp, c_p = c_p, len(space.concat) * c_curr
        sp_pp, sp_p = sp_p, out_sp
    head = LayerSpec("pool_linear", (c_p, space.num_classes), _shape(c_p, sp_p))
    return stem, cells, head


def _darts_cell(shape: _DartsCellShape, genes: list[tuple[str, int]], steps: int) -> Cell:
    # Virtual nodes: 0, 1 the raw inputs; 2, 3 the preprocessed states; 4.. intermediate nodes.
    c = shape.c
    edges: list[tuple[int, int, LayerSpec]] = [(0, 2, shape.pre0), (1, 3, shape.pre1)]
    merges = []
    for i, (op, src) in enumerate(genes):
        dst = 2 + i // 2
        stride = 2 if shape.reduction and src < 2 else 1
        spatial = shape.spatial_in if src < 2 else shape.spatial_out
        edges.append((src + 2, dst + 2, LayerSpec("darts.op", (op, c, stride), _shape(c, spatial))))
    for node in range(steps):
        merges.append((node + 4, LayerSpec("sum", (2,), _shape(c, shape.spatial_out))))
    return Cell(
        num_nodes=4 + steps,
        edges=tuple(edges),
        outputs=tuple(range(4, 4 + steps)),
        merges=tuple(merges),
        join=LayerSpec("concat", (steps,), _shape(c, shape.spatial_out)),
        num_inputs=2,
    )


def _darts_plan(space: Any, arch: Arch) -> Plan:
    stem, cells, head = _darts_shapes(space)
    genes = {cell: space.genes(arch, cell) for cell in ("normal", "reduce")}
    out: list[tuple[Segment, int]] = [(stem, 1)]
    for shape in cells:
        out.append(
            (_darts_cell(shape, genes["reduce" if shape.reduction else "normal"], space.steps), 1)
        )
    out.append((head, 1))
    return tuple(out)


def _darts_layers(space: Any) -> Iterator[LayerSpec]:
    stem, cells, head = _darts_shapes(space)
    yield stem
    for shape in cells:
        yield shape.pre0
        yield shape.pre1
        for op in space.ops:
            yield LayerSpec("darts.op", (op, shape.c, 1), _shape(shape.c, shape.spatial_out))
            if shape.reduction:
                yield LayerSpec("darts.op", (op, shape.c, 2), _shape(shape.c, shape.spatial_in))
            else:
                yield LayerSpec("darts.op", (op, shape.c, 1), _shape(shape.c, shape.spatial_in))
        yield LayerSpec("sum", (2,), _shape(shape.c, shape.spatial_out))
        yield LayerSpec("concat", (space.steps,), _shape(shape.c, shape.spatial_out))
    yield head


_DECOMPOSERS: dict[
    str, tuple[Callable[[Any, Arch], Plan], Callable[[Any], Iterator[LayerSpec]]]
] = {
    "mobile": (_mobile_plan, _mobile_layers),
    "nb201": (_nb201_plan, _nb201_layers),
    "darts": (_darts_plan, _darts_layers),
}


def register_decomposer(
    space_name: str, plan: Callable[[Any, Arch], Plan], layers: Callable[[Any], Iterator[LayerSpec]]
) -> None:
    """Teach the latency tables a new space: ``plan(space, arch)`` and ``layers(space)``.

    Every :class:`LayerSpec` they produce must name a factory in :data:`LAYER_FACTORIES`
    (add one there for new ops).
    """
    _DECOMPOSERS[space_name] = (plan, layers)


def _entry(
    space: SearchSpace,
) -> tuple[Callable[[Any, Arch], Plan], Callable[[Any], Iterator[LayerSpec]]]:
    try:
        return _DECOMPOSERS[space.name]
    except KeyError:
        raise NotDecomposable(
            f"space {space.name!r} has no layer decomposition (known: "
            f"{', '.join(sorted(_DECOMPOSERS))}); measure whole models instead"
        ) from None


def supports(space: SearchSpace) -> bool:
    """Whether ``space`` can be decomposed into table layers."""
    return space.name in _DECOMPOSERS


def plan_function(space: SearchSpace) -> Callable[[Arch], Plan]:
    """``arch -> Plan`` for ``space`` without validation (the fast path of the predictor)."""
    plan = _entry(space)[0]
    return lambda arch: plan(space, arch)


def layers_of(space: SearchSpace, arch: Arch) -> Plan:
    """The validated :data:`Plan` of ``arch``.

    Raises:
        NotDecomposable: the space has no decomposer.
        SpaceError: ``arch`` is not in ``space``.
    """
    plan = _entry(space)[0]
    space.validate(arch)
    return plan(space, arch)


def enumerate_layers(space: SearchSpace) -> list[LayerSpec]:
    """Every distinct layer ``space`` can produce, deduplicated, in a stable order."""
    return list(dict.fromkeys(_entry(space)[1](space)))
