"""`LatencyPredictor`: latency of an architecture from a :class:`LatencyTable`, in milliseconds
of compute per candidate, no training and no measurement.

The predictor compiles any space's layer plan (:meth:`SearchSpace.plan`) generically, with
three aggregations:

* ``sum``: every layer runs after the previous one (eager torch, onnxruntime on CPU in either
  execution mode).
* ``critical_path``: the ops of a multi-branch cell that do not depend on each other run side
  by side on unlimited threads, so a cell costs its longest path through the DAG.
* ``schedule``: the same DAG with the ops queued on the backend's ``threads`` workers in the
  order the cell launches them (``torch:parallel`` forks each op once its input node is
  read, and the inter-op pool takes them first in, first out), while node sums run on the
  calling thread. With threads >= the cell's width it is the critical path; with one it is
  the sum less the sums that overlap running ops.

All count the backend's per-call overhead once per network (each table entry has it
subtracted) and then apply the per-network calibration fitted on whole-model measurements
(:class:`~nasforge.hardware.calibration.Calibration`), or, where the table keeps a learned
correction that beat it on held-out models (:class:`~nasforge.hardware.calibration.Correction`:
a scale per layer kind and a cost per layer on top of the linear fit), that correction. The
correction is linear in each segment's layers, so it is folded into the memoised cost of each
segment and the hot path below is the same with or without it.

Speed: the cost of every plan item (a segment and its repeat count) and of every segment (a
layer or a :class:`Cell`, costed in the mode's aggregation alone) is memoised by identity the
first time it is seen; spaces return the same objects for the same genotype, so a new arch
costs its plan plus one dict read per item (added in C, in plan order, so the numbers do not
depend on what was memoised). A plan a space caches has its total memoised, and an
:class:`Arch` its prediction, so predicting the same arch again is one dict read.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial, reduce
from operator import add
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.errors import ConfigError
from nasforge.hardware.aggregate import (
    Times,
    cell_critical_path,
    cell_schedule,
    cell_sum,
    cell_times,
    list_schedule,
    plan_times,
)
from nasforge.hardware.calibration import AGGREGATIONS, Correction, Features, layer_kind
from nasforge.hardware.table import LatencyTable, TableError
from nasforge.hardware.timing import STATISTICS
from nasforge.space import Arch, SearchSpace
from nasforge.space.plan import Cell, LayerSpec, Plan, Segment

MODES = ("auto", *AGGREGATIONS)
#: branch speedup from which a backend counts as running branches side by side
PARALLEL_SPEEDUP = 1.3
#: memoised segment costs kept before the memo is emptied (bounds memory on huge searches)
SEGMENT_MEMO = 200_000


def check_choice(field: str, value: str, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``, else :class:`ConfigError` naming ``field``.

    Guards programmatic use of the API; configs are validated by their pydantic sections.
    """
    if value not in allowed:
        raise ConfigError(f"{field}: {value!r} is not one of {', '.join(allowed)}")
    return value


class LatencyPredictor:
    """Predict ``latency_ms`` of archs of ``space`` from ``table``; never measures, never writes.

    Args:
        table: the measured layers (and calibration).
        space: the space the archs come from; default: rebuilt from the table's record.
        mode: ``sum``, ``critical_path``, ``schedule`` or ``auto``: the schedule for a
            parallel execution mode whose measured speedup on independent branches
            (:attr:`LatencyTable.parallel_speedup`) is at least 1.3, else the sum.
        calibrated: apply the table's per-network calibration (``False``: raw sums).
        correction: apply the table's learned correction where it has one marked ``used``
            (:attr:`LatencyTable.corrections`) instead of the linear calibration
            (``False``: the linear calibration alone; ignored when not ``calibrated``).
        statistic: which entry statistic to sum (``min``, ``p10``, ``median``); default the
            table's.

    Raises:
        ConfigError: bad ``mode`` or ``statistic``.
        TableError: the table is for another space; at prediction, a layer of the arch's
            plan is not in the table (names the layer and how to extend the table).
        NotDecomposable: the space describes no layer plan.
    """

    def __init__(
        self,
        table: LatencyTable,
        space: SearchSpace | None = None,
        mode: str = "auto",
        calibrated: bool = True,
        statistic: str | None = None,
        correction: bool = True,
    ) -> None:
        check_choice("latency.mode", mode, MODES)
        self.statistic = check_choice("latency.statistic", statistic or table.statistic, STATISTICS)
        self.table = table
        self.space = space if space is not None else table.make_space()
        if self.space.name != table.space.get("name"):
            raise TableError(
                f"{table.path or 'table'}: built for space {table.space.get('name')!r}, "
                f"not {self.space.name!r}"
            )
        if not self.space.has_plan:
            self.space.plan(self.space.sample(np.random.default_rng(0)))  # NotDecomposable
        speedup = table.parallel_speedup
        concurrent = table.backend.parallel and (speedup is None or speedup >= PARALLEL_SPEEDUP)
        if mode == "auto":
            mode = "schedule" if concurrent else "sum"
            if (
                mode == "schedule"
                and table.calibration
                and f"{self.statistic}/schedule" not in table.calibration
            ):
                mode = "critical_path"  # a table calibrated before schedules existed
        self.mode = mode
        self._index = AGGREGATIONS.index(mode)
        #: workers the ``schedule`` aggregation queues ops on (1 where branches do not overlap)
        self.workers = table.backend.threads if concurrent else 1
        cal = table.calibration.get(f"{self.statistic}/{mode}") if calibrated else None
        self.calibration = cal
        self._slope = cal.slope if cal is not None else 1.0
        self._intercept = cal.intercept_ms if cal is not None else 0.0
        self._overhead = table.call_overhead_ms.get(self.statistic, 0.0)
        cor = (
            table.corrections.get(f"{self.statistic}/{mode}") if calibrated and correction else None
        )
        #: the learned correction predictions apply (``None``: the linear calibration)
        self.correction: Correction | None = cor if cor is not None and cor.used else None
        #: what the sum over a plan's items starts from (the overhead, or 0 where the
        #: correction folds it into the intercept)
        self._start = self._overhead
        if self.correction is not None:
            c = self.correction
            self._slope, self._start = 1.0, 0.0
            self._intercept = c.intercept_ms + c.scale * self._overhead
        self._plan: Callable[[Mapping[str, Any]], Plan] = self.space.plan
        self._net = _LayerCosts(self)
        #: id(segment) -> its times, and the same for the mode's aggregation alone; id((segment,
        #: repeat)) -> repeat times that; ``_alive`` holds every memoised object so that its id
        #: cannot be reused while memoised
        self._memo: dict[int, Times] = {}
        self._pick: dict[int, float] = {}
        self._items: dict[int, float] = {}
        self._alive: dict[int, object] = {}
        #: id(arch) -> (arch, prediction) for :class:`Arch` (immutable) archs
        self._archs: dict[int, tuple[Mapping[str, Any], float]] = {}
        #: the mode's aggregation of one cell, computing nothing the mode does not need
        self._cell_ms: Callable[[Cell], float]
        summed = mode == "sum" or (mode == "schedule" and self.workers == 1)
        if summed:
            self._cell_ms = partial(cell_sum, ms=self._net.__getitem__)
        elif mode == "critical_path":
            self._cell_ms = partial(cell_critical_path, ms=self._net.__getitem__)
        else:
            self._cell_ms = partial(cell_schedule, ms=self._net.__getitem__, workers=self.workers)
        #: the cost of one segment as predictions add it (corrected where a correction is used)
        self._seg_ms: Callable[[Segment], float] = self._plain_seg_ms
        if self.correction is not None:
            #: per layer, what the correction adds to (``summed``: makes of) its table ms
            self._fix = _CorrectedCosts(self._net, self.correction, with_scale=summed)
            self._seg_ms = self._corrected_sum_ms if summed else self._corrected_seg_ms
        #: a space that returns the same plan object for the same arch (it caches plans per
        #: genotype) gets its plans' totals memoised too, by the same identity rule
        probe = self.space.sample(np.random.default_rng(0))
        self._plan_totals: dict[int, tuple[Plan, float]] | None = (
            {} if self._plan(probe) is self._plan(probe) else None
        )

    # -- per-layer and per-segment costs --------------------------------------------------------
    def layer_ms(self, spec: LayerSpec) -> float:
        """A layer's cost in ms with the per-call overhead taken off.

        Raises:
            TableError: the layer is not in the table (names it and how to add it).
        """
        return self._net[spec]

    def segment_ms(self, seg: Segment) -> Times:
        """(sum, critical path, schedule) of one segment in ms.

        Memoised per segment object (spaces that reuse segment objects for a genotype make
        repeated predictions a dict read per segment); equal segments that are different
        objects are costed again, which gives the same numbers.
        """
        t = self._memo.get(id(seg))
        if t is not None:
            return t
        if isinstance(seg, Cell):
            t = cell_times(seg, self._net.__getitem__, self.workers)
        else:
            m = self._net[seg]
            t = (m, m, m)
        self._memo[self._remember(seg)] = t
        return t

    def _pick_ms(self, seg: Segment) -> float:
        """The cost of ``seg`` in the mode's aggregation (memoised, like :meth:`segment_ms`);
        a cell is costed in that aggregation alone (the ``sum`` needs no critical path), then
        corrected where the predictor applies a learned correction."""
        m = self._pick.get(id(seg))
        if m is None:
            m = self._seg_ms(seg)
            self._pick[self._remember(seg)] = m
        return m

    def _plain_seg_ms(self, seg: Segment) -> float:
        return self._cell_ms(seg) if isinstance(seg, Cell) else self._net[seg]

    def _corrected_seg_ms(self, seg: Segment) -> float:
        """``scale * aggregation + sum over its layers of (kind deviation * ms + per-layer
        ms)``: the segment's share of :meth:`Correction.apply` (which is additive over the
        segments of a plan)."""
        assert self.correction is not None
        fix = self._fix.__getitem__
        extra = cell_sum(seg, fix) if isinstance(seg, Cell) else fix(seg)
        return self.correction.scale * self._plain_seg_ms(seg) + extra

    def _corrected_sum_ms(self, seg: Segment) -> float:
        """:meth:`_corrected_seg_ms` on the ``sum`` aggregation, in one pass: the sum of
        every layer's corrected ms (``(scale + kind deviation) * ms + per-layer ms``)."""
        fix = self._fix.__getitem__
        return cell_sum(seg, fix) if isinstance(seg, Cell) else fix(seg)

    def _item_ms(self, item: tuple[Segment, int]) -> float:
        """``repeat * cost`` of one ``(segment, repeat)`` of a plan, memoised per item object."""
        seg, rep = item
        m = rep * self._pick_ms(seg)
        self._items[self._remember(item)] = m
        return m

    def _remember(self, obj: object) -> int:
        """Keep ``obj`` alive while it is memoised (so its id stays its own); returns the id."""
        if len(self._alive) >= SEGMENT_MEMO:
            self._forget()
        key = id(obj)
        self._alive[key] = obj
        return key

    def _forget(self) -> None:
        """Empty every identity memo (they are full)."""
        self._memo.clear()
        self._pick.clear()
        self._items.clear()
        self._alive.clear()

    # -- predictions ----------------------------------------------------------------------------
    def raw_ms(self, arch: Arch) -> Times:
        """Uncalibrated (sum, critical path, schedule) in ms, the per-call overhead counted once."""
        total = crit = sched = self._overhead
        get = self._memo.get
        for seg, rep in self._plan(arch):
            t = get(id(seg)) or self.segment_ms(seg)
            total += rep * t[0]
            crit += rep * t[1]
            sched += rep * t[2]
        return total, crit, sched

    def predict(self, arch: Mapping[str, Any]) -> float:
        """Predicted latency in milliseconds (the calibrated aggregation of :attr:`mode`).

        An :class:`Arch` (immutable) is remembered by identity: predicting the same object
        again is one dict read.
        """
        return self._predict_all((arch,))[0]

    __call__ = predict

    def predict_many(self, archs: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Predicted latencies in ms, one per arch (each as :meth:`predict` gives it).

        The cyclic garbage collector is paused for the loop: predictions create no reference
        cycles (plans are trees of tuples, freed by reference counting), and on a first pass
        over many new archs the memos grow, which made the collector walk the whole heap
        again and again (2-3x the time of the predictions themselves).
        """
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return np.array(self._predict_all(archs), dtype=float)
        finally:
            if was_enabled:
                gc.enable()

    def features(self, arch: Arch) -> Features:
        """What a learned correction sees of ``arch`` (:class:`Features`): the raw
        aggregation of :attr:`mode`, its layers' ms summed per kind, and their count."""
        raw = self.raw_ms(arch)[self._index]
        kinds: dict[str, float] = {}
        layers = 0
        for seg, rep in self._plan(arch):
            for spec in summed_layers(seg):
                k = layer_kind(spec)
                kinds[k] = kinds.get(k, 0.0) + rep * self._net[spec]
                layers += rep
        return Features(raw, kinds, layers)

    def _predict_all(self, archs: Iterable[Mapping[str, Any]]) -> list[float]:
        """The predictions of ``archs``, with the memos and their lookups bound once."""
        memo = self._archs
        memo_get = memo.get
        plan_of = self._plan
        items_get = self._items.get
        overhead, slope, intercept = self._start, self._slope, self._intercept
        cached_plans = self._plan_totals is not None
        out: list[float] = []
        append = out.append
        for arch in archs:
            known = type(arch) is Arch
            if known:
                hit = memo_get(id(arch))
                if hit is not None and hit[0] is arch:
                    append(hit[1])
                    continue
            plan = plan_of(arch)
            if cached_plans:
                x = self._plan_total(plan)
            else:
                try:  # every item seen before: all in C, adding in plan order
                    x = reduce(add, map(items_get, map(id, plan)), overhead)
                except TypeError:  # an item not memoised yet (None)
                    x = self._items_total(plan)
            y = slope * x + intercept
            if known:
                if len(memo) >= SEGMENT_MEMO:
                    memo.clear()
                memo[id(arch)] = (arch, y)
            append(y)
        return out

    def _items_total(self, plan: Plan) -> float:
        """The overhead plus ``repeat * cost`` of every item of ``plan``, added in order
        (:meth:`_item_ms` inlined: this is the first-pass hot path)."""
        x = self._start
        items = self._items
        picks = self._pick
        alive = self._alive
        for item in plan:
            m = items.get(id(item))
            if m is None:
                seg, rep = item
                p = picks.get(id(seg))
                if p is None:  # a new segment; its item is memoised if seen again
                    p = self._seg_ms(seg)
                    if len(alive) >= SEGMENT_MEMO:
                        self._forget()
                    alive[id(seg)] = seg
                    picks[id(seg)] = p
                    m = rep * p
                else:
                    m = rep * p
                    if len(alive) >= SEGMENT_MEMO:
                        self._forget()
                    alive[id(item)] = item
                    items[id(item)] = m
            x += m
        return x

    def _plan_total(self, plan: Plan) -> float:
        """:meth:`_items_total`, memoised per plan object (for spaces that cache plans)."""
        totals = self._plan_totals
        assert totals is not None
        hit = totals.get(id(plan))
        if hit is not None and hit[0] is plan:
            return hit[1]
        x = self._items_total(plan)
        if len(totals) >= SEGMENT_MEMO:
            totals.clear()
        totals[id(plan)] = (plan, x)
        return x

    def breakdown(self, arch: Arch) -> list[tuple[str, float, int]]:
        """(layer key, ms without call overhead, times it runs) for every layer of ``arch``."""
        out: list[tuple[str, float, int]] = []
        for seg, rep in self._plan(arch):
            specs = list(seg.layers()) if isinstance(seg, Cell) else [seg]
            out.extend((s.key, self.layer_ms(s), rep) for s in specs)
        return out


def summed_layers(seg: Segment) -> list[LayerSpec]:
    """The layers of a segment that its ``sum`` aggregation counts (as :func:`cell_sum`: the
    edges, the merges of nodes with incoming edges, the join; a layer is itself)."""
    if not isinstance(seg, Cell):
        return [seg]
    out = [spec for _, _, spec in seg.edges]
    if seg.merges:
        fed = {d for _, d, _ in seg.edges}
        out.extend(spec for node, spec in seg.merges if node in fed and node >= seg.num_inputs)
    if seg.join is not None:
        out.append(seg.join)
    return out


class _LayerCosts(dict[LayerSpec, float]):
    """Layer -> ms without the per-call overhead, read from the table on first use (so that
    hits are a plain dict read)."""

    def __init__(self, predictor: LatencyPredictor) -> None:
        super().__init__()
        self._table = predictor.table
        self._statistic = predictor.statistic
        self._overhead = predictor._overhead

    def __missing__(self, spec: LayerSpec) -> float:
        m = max(self._table.lookup(spec).value_ms(self._statistic) - self._overhead, 0.0)
        self[spec] = m
        return m


class _CorrectedCosts(dict[LayerSpec, float]):
    """Layer -> what a :class:`Correction` makes of its ms: ``(scale + kind deviation) * ms +
    per-layer ms`` (``with_scale``) or only ``kind deviation * ms + per-layer ms``, computed
    on first use."""

    def __init__(self, net: _LayerCosts, correction: Correction, with_scale: bool) -> None:
        super().__init__()
        self._net = net
        self._c = correction
        self._scale = correction.scale if with_scale else 0.0

    def __missing__(self, spec: LayerSpec) -> float:
        c = self._c
        m = (self._scale + c.kind_delta.get(layer_kind(spec), 0.0)) * self._net[spec]
        m += c.per_layer_ms
        self[spec] = m
        return m


def load_predictor(
    path: str | Path,
    space: SearchSpace | None = None,
    mode: str = "auto",
    statistic: str | None = None,
) -> LatencyPredictor:
    """Load the table at ``path`` (warning if from another machine) and wrap it in a predictor."""
    return LatencyPredictor(LatencyTable.load(path), space, mode=mode, statistic=statistic)


def supports_prediction(space: SearchSpace) -> bool:
    """Whether tables can be built for ``space`` (it describes a layer plan)."""
    return space.has_plan


__all__ = [
    "AGGREGATIONS",
    "MODES",
    "LatencyPredictor",
    "cell_critical_path",
    "cell_schedule",
    "cell_sum",
    "cell_times",
    "check_choice",
    "list_schedule",
    "load_predictor",
    "plan_times",
    "summed_layers",
    "supports_prediction",
]
