"""Layer plans: how a space describes the structure of an arch to the latency predictor.

A :class:`LayerSpec` is one distinct (operation, arguments, input shape): enough to build the
layer alone (with the factory registered under its ``op``, see :mod:`nasforge.nn.layers`) and
time it. A :data:`Plan` is the arch as segments run one after the other, each a single layer
or a :class:`Cell` (a small DAG of layers), with a repeat count.

Spaces return plans from :meth:`SearchSpace.plan <nasforge.space.SearchSpace.plan>`; the
latency tables measure every layer a space can produce and the predictor compiles any plan
(sum, critical path, schedule) with no knowledge of the space. Data only: no torch here.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any, NamedTuple, TypeVar

from nasforge.errors import NasforgeError


class NotDecomposable(NasforgeError):
    """The space describes no layer plan; latency must be measured on whole models."""


class LayerSpec(NamedTuple):
    """One table entry: factory name, factory arguments and per-sample input shape.

    ``op`` names a registered layer factory; ``args`` are JSON scalars in the factory's
    argument order; ``in_shape`` excludes the batch dimension.
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


class Cell(NamedTuple):
    """A DAG of layers executed as one segment.

    Nodes ``0 .. num_inputs-1`` are ready when the segment starts. ``edges`` are
    ``(src, dst, layer)`` with ``src < dst``, in the order the cell launches them; a node is
    ready when all its incoming edges are done and then its ``merges`` layer (the sum of
    several inputs) has run. The segment ends when every node in ``outputs`` is ready and the
    ``join`` layer (a concatenation) has run.

    Cells are immutable and hashable. Predictors memoise the cost of each segment object they
    see, so a space that returns the same :class:`Cell` (and :class:`LayerSpec`) objects for
    the same genotype gets repeated predictions nearly free. Construction does not check the
    DAG (it is on the predictor's hot path); :func:`check_plan` does.
    """

    num_nodes: int
    edges: tuple[tuple[int, int, LayerSpec], ...]
    outputs: tuple[int, ...]
    merges: tuple[tuple[int, LayerSpec], ...] = ()
    join: LayerSpec | None = None
    num_inputs: int = 1

    def layers(self) -> Iterator[LayerSpec]:
        """Every layer of the cell once: edges, then merges, then the join."""
        for _, _, spec in self.edges:
            yield spec
        for _, spec in self.merges:
            yield spec
        if self.join is not None:
            yield self.join


Segment = LayerSpec | Cell
Plan = tuple[tuple[Segment, int], ...]  # (segment, repeat count), run in order


def plan_layers(plan: Plan) -> Iterator[LayerSpec]:
    """Every layer of ``plan`` once per segment (repeats not expanded)."""
    for seg, _ in plan:
        if isinstance(seg, Cell):
            yield from seg.layers()
        else:
            yield seg


def check_plan(plan: Plan, where: str = "plan") -> Plan:
    """``plan`` if well formed, else :class:`NotDecomposable` naming the bad segment.

    Checks that segments are :class:`LayerSpec` or :class:`Cell` with a positive repeat
    count, and that every cell edge goes forward between existing nodes (``src < dst``)
    into a non-input node, with outputs and merges naming existing nodes.
    """
    for i, item in enumerate(plan):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], int)):
            raise NotDecomposable(f"{where}[{i}]: expected (segment, repeat count), got {item!r}")
        seg, rep = item
        if rep < 1:
            raise NotDecomposable(f"{where}[{i}]: repeat count {rep} must be >= 1")
        if isinstance(seg, Cell):
            n, ni = seg.num_nodes, seg.num_inputs
            for s, d, spec in seg.edges:
                if not (0 <= s < d < n and d >= ni):
                    raise NotDecomposable(
                        f"{where}[{i}]: cell edge {s}->{d} ({spec.key}) must go forward "
                        f"into one of nodes {ni}..{n - 1}"
                    )
            bad = [o for o in (*seg.outputs, *(m for m, _ in seg.merges)) if not 0 <= o < n]
            if bad or not seg.outputs:
                raise NotDecomposable(
                    f"{where}[{i}]: cell outputs/merges {bad or '(none)'} are not nodes 0..{n - 1}"
                )
        elif not isinstance(seg, LayerSpec):
            raise NotDecomposable(
                f"{where}[{i}]: segment {seg!r} is neither a LayerSpec nor a Cell"
            )
    return plan


def conv_out(size: int, stride: int) -> int:
    """Output size of a 'same'-padded odd-kernel conv (or 3x3 pool / ceil-mode 2x2 pool)."""
    return (size - 1) // stride + 1


def downsample(spatial: tuple[int, ...], stride: int) -> tuple[int, ...]:
    """Spatial shape after a 'same'-padded layer of ``stride`` (see :func:`conv_out`)."""
    return tuple((s - 1) // stride + 1 for s in spatial)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class PlanCache(dict[K, V]):
    """A dict that empties itself past ``limit`` entries and pickles empty.

    Spaces keep plans (or cells) per genotype in one, so repeated predictions reuse the same
    objects without the cache growing without bound or travelling to worker processes.
    """

    def __init__(self, limit: int = 100_000) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Store and return ``value`` (clearing everything first when full)."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.limit,))


__all__ = [
    "Cell",
    "LayerSpec",
    "NotDecomposable",
    "Plan",
    "PlanCache",
    "Segment",
    "check_plan",
    "conv_out",
    "downsample",
    "plan_layers",
]
