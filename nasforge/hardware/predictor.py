"""`LatencyPredictor`: latency of an architecture from a :class:`LatencyTable`, in microseconds
of compute per candidate, no training.

Three aggregations:

* ``sum``: every layer runs after the previous one (eager torch, onnxruntime on CPU in either
  execution mode).
* ``critical_path``: the ops of a multi-branch cell (``nb201``, ``darts``) that do not depend
  on each other run side by side on unlimited threads, so a cell costs its longest path
  through the DAG.
* ``schedule``: the same DAG with the ops queued on the backend's ``threads`` workers in the
  order the cell launches them (``torch:parallel`` forks each op once its input node is
  read, and the inter-op pool takes them first in, first out), while node sums run on the
  calling thread. With threads >= the cell's width it is the critical path; with one it is
  the sum less the sums that overlap running ops.

All count the backend's per-call overhead once per network (each table entry has it
subtracted) and then apply the per-network calibration fitted on whole-model measurements
(:class:`~nasforge.hardware.table.Calibration`).

Speed: for the known spaces the arch is read straight into precompiled lookups (layer keys
resolved to floats once, at construction), so a prediction is a few dict reads per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from nasforge.hardware.calibration import AGGREGATIONS
from nasforge.hardware.entries import ENTRY_TIMING, measure_entries
from nasforge.hardware.layers import (
    Cell,
    LayerSpec,
    NotDecomposable,
    Plan,
    enumerate_layers,
    plan_function,
)
from nasforge.hardware.table import LatencyTable, TableEntry, TableError
from nasforge.hardware.timing import STATISTICS
from nasforge.space import Arch, SearchSpace

MODES = ("auto", *AGGREGATIONS)
#: branch speedup from which a backend counts as running branches side by side
PARALLEL_SPEEDUP = 1.3
ON_MISSING = ("error", "measure")
Times = tuple[float, float, float]  # (sum, critical path, schedule) in ms
RawFn = Callable[[Arch], Times]


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


def cell_times(cell: Cell, ms: Callable[[LayerSpec], float], workers: int = 1) -> Times:
    """(sum of all layers, critical path, schedule on ``workers``) of one cell in ms.

    With one worker the schedule is the sum (nothing overlaps, not even the sums).

    Critical path: a node is ready at the latest finish of its incoming edges plus its merge;
    the cell ends at the latest of its output nodes plus the join. Input nodes are ready at 0.
    """
    n = cell.num_nodes
    finish = [0.0] * n
    incoming: dict[int, list[tuple[int, float]]] = {}
    timed: list[tuple[int, int, float]] = []
    total = 0.0
    for s, d, spec in cell.edges:
        m = ms(spec)
        incoming.setdefault(d, []).append((s, m))
        timed.append((s, d, m))
        total += m
    merges = {node: ms(spec) for node, spec in cell.merges}
    for d in range(cell.num_inputs, n):
        ins = incoming.get(d)
        if not ins:
            continue
        mg = merges.get(d, 0.0)
        total += mg
        finish[d] = max(finish[s] + m for s, m in ins) + mg
    join = ms(cell.join) if cell.join is not None else 0.0
    if workers == 1:
        sched = total + join
    else:
        timed.sort(key=lambda e: e[0])
        sched = (
            list_schedule(
                n, cell.num_inputs, timed, [merges.get(i, 0.0) for i in range(n)], workers
            )
            + join
        )
    return total + join, max(finish[o] for o in cell.outputs) + join, sched


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


class LatencyPredictor:
    """Predict ``latency_ms`` of archs of ``space`` from ``table``.

    Args:
        table: the measured layers (and calibration).
        space: the space the archs come from; default: rebuilt from the table's record.
        mode: ``sum``, ``critical_path``, ``schedule`` or ``auto``: the schedule for a
            parallel execution mode whose measured speedup on independent branches
            (:attr:`LatencyTable.parallel_speedup`) is at least 1.3, else the sum.
        on_missing: a layer absent from the table is ``measure``d on demand (and added to the
            table, saved if the table has a path) or is an ``error`` (:class:`TableError`).
        calibrated: apply the table's per-network calibration (``False``: raw sums).
        statistic: which entry statistic to sum (``min``, ``p10``, ``median``); default the
            table's.

    Raises:
        TableError: bad ``mode`` / ``on_missing`` / ``statistic``, or the table is for
            another space.
        NotDecomposable: the space has no layer decomposition.
    """

    def __init__(
        self,
        table: LatencyTable,
        space: SearchSpace | None = None,
        mode: str = "auto",
        on_missing: str = "error",
        calibrated: bool = True,
        statistic: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise TableError(f"latency.mode: {mode!r} is not one of {', '.join(MODES)}")
        if on_missing not in ON_MISSING:
            raise TableError(f"on_missing: {on_missing!r} is not one of {', '.join(ON_MISSING)}")
        statistic = statistic or table.statistic
        if statistic not in STATISTICS:
            raise TableError(f"statistic: {statistic!r} is not one of {', '.join(STATISTICS)}")
        self.statistic = statistic
        self.table = table
        self.space = space if space is not None else table.make_space()
        if self.space.name != table.space.get("name"):
            raise TableError(
                f"{table.path or 'table'}: built for space {table.space.get('name')!r}, "
                f"not {self.space.name!r}"
            )
        speedup = table.parallel_speedup
        concurrent = table.backend.parallel and (speedup is None or speedup >= PARALLEL_SPEEDUP)
        if mode == "auto":
            mode = "schedule" if concurrent else "sum"
            if (
                mode == "schedule"
                and table.calibration
                and f"{statistic}/schedule" not in table.calibration
            ):
                mode = "critical_path"  # a table calibrated before schedules existed
        self.mode = mode
        self._index = AGGREGATIONS.index(mode)
        #: workers the ``schedule`` aggregation queues ops on (1 where branches do not overlap)
        self.workers = table.backend.threads if concurrent else 1
        self.on_missing = on_missing
        cal = table.calibration.get(f"{statistic}/{mode}") if calibrated else None
        self.calibration = cal
        self._slope = cal.slope if cal is not None else 1.0
        self._intercept = cal.intercept_ms if cal is not None else 0.0
        self._overhead = table.call_overhead_ms.get(statistic, 0.0)
        self._plan = plan_function(self.space)
        self._net: dict[LayerSpec, float] = {}
        self._compile()

    # -- per-layer costs ------------------------------------------------------------------------
    def _entry_ms(self, e: TableEntry) -> float:
        return max(e.value_ms(self.statistic) - self._overhead, 0.0)

    def _compile(self) -> None:
        entries = self.table.entries
        self._net = {
            spec: self._entry_ms(entries[spec.key])
            for spec in enumerate_layers(self.space)
            if spec.key in entries
        }
        self._fast: RawFn | None = _safe_compile(self.space.name)(
            self.space, self._net, self.workers
        )

    def layer_ms(self, spec: LayerSpec) -> float:
        """A layer's cost in ms with the per-call overhead taken off (measured if missing)."""
        m = self._net.get(spec)
        if m is not None:
            return m
        e = self.table.entries.get(spec.key)
        if e is None:
            if self.on_missing == "error":
                raise TableError(
                    f"{self.table.path or 'latency table'}: no entry for layer {spec.key}; "
                    "rebuild the table or predict with on_missing='measure'"
                )
            e = measure_entries(
                [spec],
                self.table.backend,
                self.table.batch_size,
                self.table.call_overhead_ms,
                replace(ENTRY_TIMING, clock=self.table.clock),
                self.table.context,
            )[0]
            self.table.entries[spec.key] = e
            if self.table.path is not None:
                self.table.save()
        m = self._net[spec] = self._entry_ms(e)
        return m

    # -- predictions ----------------------------------------------------------------------------
    def raw_ms(self, arch: Arch) -> Times:
        """Uncalibrated (sum, critical path, schedule) in ms, the per-call overhead counted once."""
        o = self._overhead
        if self._fast is not None:
            try:
                s, c, q = self._fast(arch)
                return s + o, c + o, q + o
            except KeyError:
                pass  # a layer is missing from the fast lookups: take the slow path once
        known = len(self._net)
        s, c, q = plan_times(self._plan(arch), self.layer_ms, self.workers)
        if len(self._net) != known:  # layers were measured on demand: refresh the fast path
            self._fast = _safe_compile(self.space.name)(self.space, self._net, self.workers)
        return s + o, c + o, q + o

    def predict(self, arch: Arch) -> float:
        """Predicted latency in milliseconds (the calibrated aggregation of :attr:`mode`)."""
        return self._slope * self.raw_ms(arch)[self._index] + self._intercept

    __call__ = predict

    def predict_many(self, archs: Iterable[Arch]) -> np.ndarray:
        """Predicted latencies in ms, one per arch."""
        return np.fromiter((self.predict(a) for a in archs), dtype=float)

    def breakdown(self, arch: Arch) -> list[tuple[str, float, int]]:
        """(layer key, ms without call overhead, times it runs) for every layer of ``arch``."""
        out: list[tuple[str, float, int]] = []
        for seg, rep in self._plan(arch):
            specs = list(seg.layers()) if isinstance(seg, Cell) else [seg]
            out.extend((s.key, self.layer_ms(s), rep) for s in specs)
        return out


# -- precompiled fast paths ---------------------------------------------------------------------
def _no_fast(space: Any, net: dict[LayerSpec, float], workers: int) -> RawFn | None:
    return None


def _mobile_fast(space: Any, net: dict[LayerSpec, float], workers: int) -> RawFn:
    """Per block position, a dict (c_in, c_out, kernel, expand, act, se) -> ms."""
    from nasforge.nn.blocks import make_divisible

    by_ctx: dict[tuple[int, tuple[int, ...]], dict[tuple[Any, ...], float]] = {}
    stem: float | None = None
    heads: dict[int, float] = {}
    for spec, m in net.items():
        if spec.op == "mobile.ir":
            cin, cout, k, stride, e, act, se, _ = spec.args
            by_ctx.setdefault((stride, spec.in_shape[1:]), {})[(cin, cout, k, e, act, se)] = m
        elif spec.op == "mobile.stem":
            stem = m
        elif spec.op == "mobile.head":
            heads[spec.args[0]] = m
    spatial = tuple(space.input_shape[1:])
    spatial = tuple((s - 1) // space.stem_stride + 1 for s in spatial)
    stages = []
    for i, st in enumerate(space.stages):
        p = f"stage{i}"
        outs = {
            w: make_divisible(st.channels * float(w)) for w in space.dimension(f"{p}/width").choices
        }
        blocks = []
        for j in range(st.max_depth):
            stride = st.stride if j == 0 else 1
            b = f"{p}/block{j}"
            blocks.append(
                (
                    f"{b}/kernel",
                    f"{b}/expand",
                    f"{b}/act",
                    f"{b}/se",
                    by_ctx.get((stride, spatial), {}),
                )
            )
            spatial = tuple((s - 1) // stride + 1 for s in spatial)
        stages.append((f"{p}/width", f"{p}/depth", outs, blocks))
    if stem is None:
        raise KeyError("mobile.stem")
    stem_ms, stem_ch = stem, space.stem_channels

    def raw(arch: Arch) -> Times:
        v: dict[str, Any] = arch.to_dict() if isinstance(arch, Arch) else dict(arch)
        total = stem_ms
        ch = stem_ch
        for wl, dl, outs, blocks in stages:
            out = outs[v[wl]]
            for j in range(v[dl]):
                kl, el, al, sl, tab = blocks[j]
                total += tab[(ch, out, v[kl], v[el], v[al], v[sl])]
                ch = out
        total += heads[ch]
        return total, total, total

    return raw


def _nb201_fast(space: Any, net: dict[LayerSpec, float], workers: int) -> RawFn:
    """Fixed layers summed once; per stage an op -> ms dict; cells memoised by their ops."""
    from nasforge.hardware.layers import LayerSpec as L
    from nasforge.hardware.layers import _nb201_stages
    from nasforge.spaces.nb201 import EDGES, LABELS, edge_label, live_edges

    fixed = 0.0
    for spec, m in net.items():
        if spec.op in ("conv3x3_bn", "nb201.resblock", "nb201.head"):
            fixed += m
    stages = []
    for _, width, _, spatial in _nb201_stages(space):
        shape = (width, *spatial)
        op_ms = {op: net[L("nb201.op", (op, width, width, 1), shape)] for op in space.ops}
        sums = {k: net[L("sum", (k,), shape)] for k in (2, 3)}
        stages.append((op_ms, sums, net[L("zero", (), shape)]))
    n_cells = space.N
    memo: dict[tuple[Any, ...], Times] = {}

    def raw(arch: Arch) -> Times:
        v: dict[str, Any] = arch.to_dict() if isinstance(arch, Arch) else dict(arch)
        ops = tuple(v[label] for label in LABELS)
        hit = memo.get(ops)
        if hit is not None:
            return hit
        if space.prune_dead_edges:
            edges = live_edges(v)
        else:
            edges = [(s, d, v[edge_label(d, s)]) for d, s in EDGES]
        by_src = sorted(edges) if workers > 1 else edges
        total = crit = sched = fixed
        for op_ms, sums, zero in stages:
            if not edges:
                total += n_cells * zero
                crit += n_cells * zero
                sched += n_cells * zero
                continue
            finish = [0.0, 0.0, 0.0, 0.0]
            merge = [0.0, 0.0, 0.0, 0.0]
            cell_sum = 0.0
            last = i = 0
            for d in (1, 2, 3):  # edges are sorted by dst, so a node's sources are final
                k, best = 0, 0.0
                while i < len(edges) and edges[i][1] == d:
                    s, _, op = edges[i]
                    m = op_ms[op]
                    cell_sum += m
                    t = finish[s] + m
                    if k == 0 or t > best:
                        best = t
                    k += 1
                    i += 1
                if k:
                    if k > 1:
                        merge[d] = sums[k]
                        cell_sum += sums[k]
                        best += sums[k]
                    finish[d] = best
                    last = d
            total += n_cells * cell_sum
            crit += n_cells * finish[last]
            if workers > 1:
                timed = [(s, d, op_ms[op]) for s, d, op in by_src]
                sched += n_cells * list_schedule(last + 1, 1, timed, merge, workers)
            else:
                sched += n_cells * cell_sum
        hit = memo[ops] = (total, crit, sched)
        return hit

    return raw


def _darts_fast(space: Any, net: dict[LayerSpec, float], workers: int) -> RawFn:
    """Per cell position: fixed preprocessing costs and an (op, src-is-input) -> ms dict."""
    from nasforge.hardware.layers import LayerSpec as L
    from nasforge.hardware.layers import _darts_shapes
    from nasforge.spaces.darts import gene_labels

    stem, shapes, head = _darts_shapes(space)
    fixed = net[stem] + net[head]
    steps = space.steps
    cells = []
    for sh in shapes:
        c = sh.c
        op_ms = {}
        for op in space.ops:
            stride_in = 2 if sh.reduction else 1
            op_ms[(op, True)] = net[L("darts.op", (op, c, stride_in), (c, *sh.spatial_in))]
            op_ms[(op, False)] = net[L("darts.op", (op, c, 1), (c, *sh.spatial_out))]
        add = net[L("sum", (2,), (c, *sh.spatial_out))]
        join = net[L("concat", (steps,), (c, *sh.spatial_out))]
        cells.append((sh.reduction, net[sh.pre0], net[sh.pre1], op_ms, add, join))
    labels = {
        cell: [gene_labels(cell, node, k) for node in space.concat for k in (0, 1)]
        for cell in ("normal", "reduce")
    }
    merge = [0.0] * 4
    n_nodes = 4 + steps

    def raw(arch: Arch) -> Times:
        v: dict[str, Any] = arch.to_dict() if isinstance(arch, Arch) else dict(arch)
        genes = {cell: [(v[o], v[s]) for o, s in labs] for cell, labs in labels.items()}
        total = crit = sched = fixed
        for reduction, pre0, pre1, op_ms, add, join in cells:
            g = genes["reduce" if reduction else "normal"]
            finish = [pre0, pre1]
            cell_sum = pre0 + pre1
            timed = [(0, 2, pre0), (1, 3, pre1)]
            for i in range(steps):
                (o0, s0), (o1, s1) = g[2 * i], g[2 * i + 1]
                m0, m1 = op_ms[(o0, s0 < 2)], op_ms[(o1, s1 < 2)]
                finish.append(max(finish[s0] + m0, finish[s1] + m1) + add)
                cell_sum += m0 + m1 + add
                timed.append((s0 + 2, 4 + i, m0))
                timed.append((s1 + 2, 4 + i, m1))
            total += cell_sum + join
            crit += max(finish[2:]) + join
            if workers > 1:
                timed.sort(key=_src)
                sched += list_schedule(n_nodes, 2, timed, merge + [add] * steps, workers) + join
            else:
                sched += cell_sum + join
        return total, crit, sched

    return raw


def _src(edge: tuple[int, int, float]) -> int:
    return edge[0]


_COMPILERS: dict[str, Callable[[Any, dict[LayerSpec, float], int], RawFn | None]] = {
    "mobile": _mobile_fast,
    "nb201": _nb201_fast,
    "darts": _darts_fast,
}


def _safe_compile(name: str) -> Callable[[Any, dict[LayerSpec, float], int], RawFn | None]:
    compiler = _COMPILERS.get(name, _no_fast)

    def run(space: Any, net: dict[LayerSpec, float], workers: int) -> RawFn | None:
        try:
            return compiler(space, net, workers)
        except KeyError:  # the table lacks a fixed layer: predictions take the slow path
            return None

    return run


def load_predictor(
    path: str,
    space: SearchSpace | None = None,
    mode: str = "auto",
    on_missing: str = "error",
    statistic: str | None = None,
) -> LatencyPredictor:
    """Load the table at ``path`` (warning if from another machine) and wrap it in a predictor."""
    return LatencyTable.load(path).predictor(
        space, mode=mode, on_missing=on_missing, statistic=statistic
    )


def supports_prediction(space: SearchSpace) -> bool:
    """Whether tables can be built for ``space`` (it has a layer decomposition)."""
    try:
        plan_function(space)
    except NotDecomposable:
        return False
    return True


__all__ = [
    "AGGREGATIONS",
    "MODES",
    "ON_MISSING",
    "LatencyPredictor",
    "cell_times",
    "list_schedule",
    "load_predictor",
    "plan_times",
    "supports_prediction",
]
