"""What latency tables read from a space: its layer plans, through the space's public API.

The plan types live in :mod:`nasforge.space.plan` and the layer factories in
:mod:`nasforge.nn.layers` (each space registers its own); they are re-exported here. This
module holds no per-space code: :func:`layers_of` and :func:`enumerate_layers` call
:meth:`SearchSpace.plan` and :meth:`SearchSpace.all_layers`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set
from typing import Any

from nasforge.nn.layers import build_layer, is_forked, registered_layers
from nasforge.space import SearchSpace
from nasforge.space.plan import Cell, LayerSpec, NotDecomposable, Plan, Segment, plan_layers


class _ForkedOps(Set[str]):
    """The registered ops that run as forked cell edges (a live view of the layer registry)."""

    def __contains__(self, op: object) -> bool:
        return isinstance(op, str) and is_forked(op)

    def __iter__(self) -> Iterator[str]:
        return (op for op in registered_layers() if is_forked(op))

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: ops that run as cell edges: the ``torch:parallel`` backend forks each onto the inter-op pool
#: (see :func:`nasforge.nn.cells.run_dag`), so their table entries are timed forked too
BRANCH_OPS: Set[str] = _ForkedOps()


def supports(space: SearchSpace) -> bool:
    """Whether ``space`` describes a layer plan (so tables can be built for it)."""
    return space.has_plan


def layers_of(space: SearchSpace, arch: Mapping[str, Any]) -> Plan:
    """The validated :data:`Plan` of ``arch``.

    Raises:
        NotDecomposable: the space describes no plan.
        SpaceError: ``arch`` is not in ``space``.
    """
    if not space.has_plan:
        space.plan(arch)  # raises NotDecomposable with the space's message
    space.validate(arch)
    return space.plan(arch)


def enumerate_layers(space: SearchSpace) -> list[LayerSpec]:
    """Every distinct layer ``space`` can produce, deduplicated, in a stable order."""
    return list(dict.fromkeys(space.all_layers()))


__all__ = [
    "BRANCH_OPS",
    "Cell",
    "LayerSpec",
    "NotDecomposable",
    "Plan",
    "Segment",
    "build_layer",
    "enumerate_layers",
    "layers_of",
    "plan_layers",
    "supports",
]
