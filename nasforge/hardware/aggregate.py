"""How a cell's or a plan's layer costs add up: ``sum``, ``critical_path`` and ``schedule``
(see :mod:`nasforge.hardware.predictor` for what each models). Pure functions of a
:class:`~nasforge.space.plan.Cell` or :class:`~nasforge.space.plan.Plan` and a cost per
layer; the predictor memoises around them, DARTS' expected latency reuses them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import reduce
from operator import add, itemgetter

from nasforge.space.plan import Cell, LayerSpec, Plan

Times = tuple[float, float, float]  # (sum, critical path, schedule) in ms


def list_schedule(
    num_nodes: int,
    num_inputs: int,
    edges: Sequence[tuple[int, int, float]],
    merge: Sequence[float],
    workers: int,
) -> float:
    """When the calling thread has read every node of a cell whose ops run on ``workers``.

    ``edges`` are ``(src, dst, ms)`` in launch order (sorted by source, as
    :func:`nasforge.nn.cells.run_dag` launches them); ``merge[d]`` is node ``d``'s sum (run
    on the calling thread when the node is first read). An op is launched when its source has
    been read and starts on the first worker free from then (a FIFO pool).
    """
    # ruff: max() is twice as slow as the conditionals below, and this runs per op per cell
    main = 0.0
    free = [0.0] * workers
    last = [-1.0] * num_nodes  # latest finish of an op into each node; -1: none
    read = [True] * num_inputs + [False] * (num_nodes - num_inputs)
    for s, d, m in edges:
        if not read[s]:
            t = last[s]
            if t >= 0.0:
                main = (t if t > main else main) + merge[s]  # noqa: FURB136
            read[s] = True
        t = min(free)
        w = free.index(t)
        fin = (t if t > main else main) + m  # noqa: FURB136
        free[w] = fin
        if fin > last[d]:  # noqa: PLR1730
            last[d] = fin
    for i in range(num_inputs, num_nodes):
        t = last[i]
        if not read[i] and t >= 0.0:
            main = (t if t > main else main) + merge[i]  # noqa: FURB136
    return main


_SRC = itemgetter(0)
_DST = itemgetter(1)
_SPEC = itemgetter(2)


def cell_sum(cell: Cell, ms: Callable[[LayerSpec], float]) -> float:
    """Every layer of one cell in a row, in ms: its edges, the merges of the nodes that have
    incoming edges, and the join (the ``sum`` aggregation of :func:`cell_times`)."""
    edges = cell.edges
    total = reduce(add, map(ms, map(_SPEC, edges)), 0.0)  # in edge order, in C
    if cell.merges:
        fed = set(map(_DST, edges))
        ni = cell.num_inputs
        for node, spec in cell.merges:
            if node in fed and node >= ni:
                total += ms(spec)
    return total + (ms(cell.join) if cell.join is not None else 0.0)


def _cell_setup(
    cell: Cell, ms: Callable[[LayerSpec], float]
) -> tuple[list[float], list[tuple[int, int, LayerSpec]], list[float]]:
    """(merge ms per node, edges in launch order, their ms) of one cell."""
    merge = [0.0] * cell.num_nodes
    for node, spec in cell.merges:
        merge[node] = ms(spec)
    # launch order; as every edge goes forward it is also a topological order
    edges = sorted(cell.edges, key=_SRC)
    return merge, edges, [ms(spec) for _, _, spec in edges]


def _critical_path(
    cell: Cell, merge: list[float], edges: list[tuple[int, int, LayerSpec]], costs: list[float]
) -> float:
    """Longest path through the cell without its join (see :func:`cell_times`), from
    :func:`_cell_setup`'s merges, launch-ordered edges and their costs."""
    arrive = [-1.0] * cell.num_nodes  # latest finish of an edge into each node; -1: none
    for (s, d, _), m in zip(edges, costs):
        a = arrive[s]
        t = (a + merge[s] if a >= 0.0 else 0.0) + m
        if t > arrive[d]:
            arrive[d] = t
    crit = 0.0
    for o in cell.outputs:
        a = arrive[o]
        t = a + merge[o] if a >= 0.0 else 0.0
        if t > crit:
            crit = t
    return crit


def cell_critical_path(cell: Cell, ms: Callable[[LayerSpec], float]) -> float:
    """The critical path of one cell in ms (the ``critical_path`` of :func:`cell_times`)."""
    crit = _critical_path(cell, *_cell_setup(cell, ms))
    return crit + (ms(cell.join) if cell.join is not None else 0.0)


def cell_schedule(cell: Cell, ms: Callable[[LayerSpec], float], workers: int) -> float:
    """The schedule of one cell on ``workers`` (> 1) in ms (the ``schedule`` of
    :func:`cell_times`)."""
    merge, edges, costs = _cell_setup(cell, ms)
    timed = [(s, d, m) for (s, d, _), m in zip(edges, costs)]
    join = ms(cell.join) if cell.join is not None else 0.0
    return list_schedule(cell.num_nodes, cell.num_inputs, timed, merge, workers) + join


def cell_times(cell: Cell, ms: Callable[[LayerSpec], float], workers: int = 1) -> Times:
    """(sum of all layers, critical path, schedule on ``workers``) of one cell in ms.

    With one worker the schedule is the sum (nothing overlaps, not even the sums).

    Critical path: a node is ready at the latest finish of its incoming edges plus its merge;
    the cell ends at the latest of its output nodes plus the join. Input nodes (and nodes
    without incoming edges) are ready at 0; the merge of a node without incoming edges is not
    counted.
    """
    n = cell.num_nodes
    merge, edges, costs = _cell_setup(cell, ms)
    total = 0.0
    for m in costs:
        total += m
    fed = {d for _, d, _ in edges}
    for d in range(cell.num_inputs, n):  # as cell_sum: merges of nodes with incoming edges
        if d in fed:
            total += merge[d]
    crit = _critical_path(cell, merge, edges, costs)
    join = ms(cell.join) if cell.join is not None else 0.0
    if workers == 1:
        sched = total + join
    else:
        timed = [(s, d, m) for (s, d, _), m in zip(edges, costs)]
        sched = list_schedule(n, cell.num_inputs, timed, merge, workers) + join
    return total + join, crit + join, sched


def plan_times(plan: Plan, ms: Callable[[LayerSpec], float], workers: int = 1) -> Times:
    """(sum, critical path, schedule) of a whole plan in ms (segments run one after another)."""
    total = crit = sched = 0.0
    for seg, rep in plan:
        if isinstance(seg, Cell):
            s, c, q = cell_times(seg, ms, workers)
            total += rep * s
            crit += rep * c
            sched += rep * q
        else:
            m = ms(seg)
            total += rep * m
            crit += rep * m
            sched += rep * m
    return total, crit, sched
