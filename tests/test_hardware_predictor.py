"""Predictor: critical path on hand-built DAGs, the memoised generic compile equals an
independent reference walk, calibration, missing entries are errors (never measured)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nasforge.errors import ConfigError
from nasforge.hardware.backends import BackendSpec
from nasforge.hardware.calibration import fit_calibration
from nasforge.hardware.entries import TableEntry
from nasforge.hardware.layers import layers_of
from nasforge.hardware.predictor import LatencyPredictor, cell_times, list_schedule, plan_times
from nasforge.hardware.table import LatencyTable, TableError
from nasforge.space.plan import Cell, LayerSpec, Plan
from nasforge.spaces import create_space
from nasforge.spaces.nb201 import NB201Space


def L(name: str) -> LayerSpec:
    return LayerSpec("op", (name,), (1,))


def test_critical_path_of_a_hand_built_dag_is_the_known_longest_path() -> None:
    #      0 --a(3)--> 1 --c(4)--> 3 ; 0 --b(1)--> 2 --d(1)--> 3 ; 1 --e(2)--> 2 ; merge at 2, 3
    ms = {"a": 3.0, "b": 1.0, "c": 4.0, "d": 1.0, "e": 2.0, "m2": 0.5, "m3": 0.25}
    cell = Cell(
        num_nodes=4,
        edges=((0, 1, L("a")), (0, 2, L("b")), (1, 2, L("e")), (1, 3, L("c")), (2, 3, L("d"))),
        outputs=(3,),
        merges=((2, L("m2")), (3, L("m3"))),
    )
    total, crit, sched = cell_times(cell, lambda s: ms[s.args[0]], workers=8)
    assert total == pytest.approx(sum(ms.values()))
    # paths: a+c+m3 = 7.25 ; a+e+m2+d+m3 = 6.75 ; b+m2+d+m3 = 2.75
    assert crit == pytest.approx(7.25)
    # enough workers: the schedule is the critical path
    assert sched == pytest.approx(7.25)


def test_critical_path_with_two_inputs_and_a_join() -> None:
    ms = {"p0": 1.0, "p1": 5.0, "x": 1.0, "y": 1.0, "cat": 0.5}
    cell = Cell(
        num_nodes=5,
        edges=((0, 2, L("p0")), (1, 3, L("p1")), (2, 4, L("x")), (3, 4, L("y"))),
        outputs=(2, 4),
        join=L("cat"),
        num_inputs=2,
    )
    total, crit, sched = cell_times(cell, lambda s: ms[s.args[0]], workers=2)
    assert total == pytest.approx(8.5)
    assert crit == pytest.approx(5.0 + 1.0 + 0.5)
    # p0, p1 on the two workers; x starts when node 2 is read (t=1) but y waits for p1 (t=5)
    assert sched == pytest.approx(5.0 + 1.0 + 0.5)


def test_chain_sum_equals_critical_path() -> None:
    plan = ((L("a"), 1), (L("b"), 3))
    assert plan_times(plan, lambda s: {"a": 2.0, "b": 1.5}[s.args[0]], workers=4) == (6.5, 6.5, 6.5)


def test_schedule_is_bounded_by_the_workers() -> None:
    """Three independent 1 ms ops into one node: 3 ms in a row, 1 ms unbounded, 2 ms on two
    workers (FIFO: two start at 0, the third at 1), plus the node's sum on the caller."""
    cell = Cell(
        num_nodes=2,
        edges=tuple((0, 1, L(f"op{i}")) for i in range(3)),
        outputs=(1,),
        merges=((1, L("sum")),),
    )
    ms = {"op0": 1.0, "op1": 1.0, "op2": 1.0, "sum": 0.1}
    total, crit, sched = cell_times(cell, lambda s: ms[s.args[0]], workers=2)
    assert (total, crit, sched) == pytest.approx((3.1, 1.1, 2.1))
    assert cell_times(cell, lambda s: ms[s.args[0]], workers=3)[2] == pytest.approx(1.1)
    assert cell_times(cell, lambda s: ms[s.args[0]], workers=1)[2] == pytest.approx(3.1)


def test_schedule_launches_in_source_order_and_reads_nodes_on_the_caller() -> None:
    """NB201-shaped cell on two workers, costs chosen so that FIFO order matters:
    0->1 (1), 0->2 (4), 0->3 (4), 1->2 (1), 1->3 (1), 2->3 (1); sums 0 for clarity.
    t=0: 0->1 on w0, 0->2 on w1; 0->3 queued. Node 1 is read at 1 (w0 free): 0->3 runs on w0
    1..5; 1->2 and 1->3 wait for a worker: w1 frees at 4 -> 1->2 runs 4..5; 1->3 on w0 5..6.
    Node 2 is read at 5, 2->3 runs on w1 5..6; node 3 read at 6."""
    names = {(0, 1): 1.0, (0, 2): 4.0, (0, 3): 4.0, (1, 2): 1.0, (1, 3): 1.0, (2, 3): 1.0}
    cell = Cell(num_nodes=4, edges=tuple((s, d, L(f"{s}{d}")) for (s, d) in names), outputs=(3,))
    cost = {f"{s}{d}": v for (s, d), v in names.items()}
    total, crit, sched = cell_times(cell, lambda s: cost[s.args[0]], workers=2)
    assert total == pytest.approx(12.0)
    assert crit == pytest.approx(5.0)  # 0->2->3 or 0->3
    assert sched == pytest.approx(6.0)


def synthetic_table(
    name: str, shape: tuple[int, ...], seed: int = 0, **options: object
) -> LatencyTable:
    space = create_space(name, shape, 10, **options)
    rng = np.random.default_rng(seed)
    entries = {}
    for lay in space.all_layers():
        v = float(rng.uniform(0.01, 1.0))
        entries[lay.key] = TableEntry(v, 0.0, v, v, 30)
    return LatencyTable(
        space={
            "name": name,
            "input_shape": list(shape),
            "num_classes": 10,
            "options": dict(options),
        },
        backend=BackendSpec(),
        batch_size=1,
        fingerprint={},
        entries=entries,
        call_overhead_ms={"min": 0.004, "p10": 0.004, "median": 0.004},
    )


def reference_times(
    plan: Plan, ms: Callable[[LayerSpec], float], workers: int
) -> tuple[float, float, float]:
    """An independent walk: every node's ready time by recursion over its incoming edges."""
    total = crit = sched = 0.0
    for seg, rep in plan:
        if not isinstance(seg, Cell):
            total, crit, sched = (x + rep * ms(seg) for x in (total, crit, sched))
            continue
        s_, c_, q_ = _reference_cell(seg, ms, workers)
        total, crit, sched = total + rep * s_, crit + rep * c_, sched + rep * q_
    return total, crit, sched


def _reference_cell(
    cell: Cell, ms: Callable[[LayerSpec], float], workers: int
) -> tuple[float, float, float]:
    merge = {node: ms(spec) for node, spec in cell.merges}
    into = [[(s, ms(spec)) for s, d, spec in cell.edges if d == n] for n in range(cell.num_nodes)]

    def ready(node: int) -> float:
        if node < cell.num_inputs or not into[node]:
            return 0.0
        return max(ready(s) + m for s, m in into[node]) + merge.get(node, 0.0)

    join = ms(cell.join) if cell.join is not None else 0.0
    live = [n for n in range(cell.num_inputs, cell.num_nodes) if into[n]]
    total = sum(m for lst in into for _, m in lst) + sum(merge.get(n, 0.0) for n in live) + join
    crit = max(ready(o) for o in cell.outputs) + join
    if workers == 1:
        return total, crit, total
    timed = sorted(((s, d, ms(spec)) for s, d, spec in cell.edges), key=lambda e: e[0])
    merges = [merge.get(n, 0.0) for n in range(cell.num_nodes)]
    return (
        total,
        crit,
        list_schedule(cell.num_nodes, cell.num_inputs, timed, merges, workers) + join,
    )


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize(
    "name, options",
    [("mobile", {}), ("nb201", {}), ("nb201", {"prune_dead_edges": False}), ("darts", {})],
)
def test_memoised_predictions_equal_a_reference_walk(
    name: str, options: dict, workers: int
) -> None:
    table = synthetic_table(name, (3, 32, 32), **options)
    if workers > 1:
        table.backend = BackendSpec("torch", threads=workers, execution_mode="parallel")
        table.parallel_speedup = 1.9
    space = table.make_space()
    pred = LatencyPredictor(table, space, calibrated=False)
    summed = LatencyPredictor(table, space, mode="sum", calibrated=False)
    assert pred.workers == workers
    fresh = table.make_space()  # its own plan caches: the reference sees other objects
    rng = np.random.default_rng(1)
    archs = [space.sample(rng) for _ in range(150)]
    for arch in archs + archs:  # the second round reads the memos
        got = pred.raw_ms(arch)
        want = reference_times(layers_of(fresh, arch), pred.layer_ms, workers)
        for g, w in zip(got, want):
            assert g == pytest.approx(w + 0.004, rel=1e-12)
        assert got[1] <= got[2] + 1e-12 and got[2] <= got[0] + 1e-12
        if workers == 1:  # the sum mode adds cells with cell_sum: the same total
            assert summed.predict(arch) == pytest.approx(got[0], rel=1e-12)
        assert plan_times(space.plan(arch), pred.layer_ms, workers) == pytest.approx(
            tuple(g - 0.004 for g in got), rel=1e-12
        )


def test_calibration_is_applied_per_statistic_and_mode() -> None:
    table = synthetic_table("mobile", (3, 32, 32))
    space = table.make_space()
    arch = space.sample(np.random.default_rng(0))
    raw = LatencyPredictor(table, space, calibrated=False).predict(arch)
    table.calibration["min/sum"] = fit_calibration([1.0, 2.0, 3.0], [2.5, 4.5, 6.5])
    assert LatencyPredictor(table, space).predict(arch) == pytest.approx(2 * raw + 0.5)
    # another statistic has no fit: raw
    assert LatencyPredictor(table, space, statistic="median").predict(arch) == pytest.approx(raw)


def test_fit_calibration_recovers_a_line_and_scales_with_few_points() -> None:
    c = fit_calibration([0.5, 1.0, 2.0, 4.0], [1.1, 2.1, 4.1, 8.1])
    assert c.slope == pytest.approx(2.0) and c.intercept_ms == pytest.approx(0.1)
    assert c.mape == pytest.approx(0.0, abs=1e-9)
    assert fit_calibration([1.0, 2.0], [3.0, 6.0]).slope == pytest.approx(3.0)
    assert fit_calibration([], []).slope == 1.0


def test_missing_entry_is_an_error_naming_the_layer_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = synthetic_table("nb201", (3, 8, 8), C=4, N=1)
    key = "nb201.op(nor_conv_3x3,8,8,1)@8x4x4"
    del table.entries[key]
    path = table.save(tmp_path / "t.json")
    before = path.read_bytes()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("predict measured a layer")

    monkeypatch.setattr("nasforge.hardware.entries.measure_entries", refuse)
    space = NB201Space((3, 8, 8), 10, C=4, N=1)
    arch = space.from_string("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|nor_conv_3x3~1|none~2|")
    pred = LatencyPredictor(LatencyTable.load(path, warn=False), space)
    with pytest.raises(TableError, match=r"nor_conv_3x3,8,8,1.*nasforge latency build"):
        pred.predict(arch)
    assert path.read_bytes() == before  # predict never writes the table


def test_bad_arguments_name_the_field() -> None:
    table = synthetic_table("nb201", (3, 8, 8), C=4, N=1)
    with pytest.raises(ConfigError, match="latency.mode"):
        LatencyPredictor(table, mode="fastest")
    with pytest.raises(ConfigError, match="latency.statistic"):
        LatencyPredictor(table, statistic="mean")
    with pytest.raises(TableError, match="built for space"):
        LatencyPredictor(table, create_space("mobile", (3, 8, 8), 10))


@pytest.mark.parametrize(
    "speedup, mode, workers", [(None, "schedule", 2), (1.9, "schedule", 2), (1.02, "sum", 1)]
)
def test_auto_mode_schedules_only_where_branches_overlap(
    speedup: float | None, mode: str, workers: int
) -> None:
    table = synthetic_table("nb201", (3, 8, 8), C=4, N=1)
    table.backend = BackendSpec("torch", threads=2, execution_mode="parallel")
    table.parallel_speedup = speedup
    pred = LatencyPredictor(table)
    assert (pred.mode, pred.workers) == (mode, workers)
    table.backend = BackendSpec("onnxruntime", threads=1)
    assert LatencyPredictor(table).mode == "sum"


@pytest.mark.parametrize("mode", ["sum", "critical_path", "schedule"])
@pytest.mark.parametrize(
    "name, options",
    [("mobile", {}), ("nb201", {}), ("nb201", {"prune_dead_edges": False}), ("darts", {})],
)
def test_memos_never_change_a_prediction(name: str, options: dict, mode: str) -> None:
    """Differential: first pass, repeat pass, archs as plain dicts, a fresh predictor and
    space, and (sum mode) the layer-by-layer breakdown all give the same numbers, bit for bit
    where the additions run in the same order."""
    table = synthetic_table(name, (3, 32, 32), **options)
    table.backend = BackendSpec("torch", threads=2, execution_mode="parallel")
    space = table.make_space()
    rng = np.random.default_rng(7)
    archs = [space.sample(rng) for _ in range(120)]
    archs += archs[:20]  # the same objects again within one call
    pred = LatencyPredictor(table, space, mode=mode, calibrated=False)
    first = pred.predict_many(archs)
    again = pred.predict_many(archs)
    plain = [pred.predict(dict(a)) for a in archs]
    fresh = LatencyPredictor(table, table.make_space(), mode=mode, calibrated=False)
    single = [fresh.predict(a) for a in reversed(archs)][::-1]
    assert first.tolist() == again.tolist() == plain == single
    for arch, got in zip(archs, first):
        want = pred.raw_ms(arch)["sum critical_path schedule".split().index(mode)]
        assert got == pytest.approx(want, rel=1e-12)
        if mode == "sum":
            total = 0.004 + sum(ms * rep for _, ms, rep in pred.breakdown(arch))
            assert got == pytest.approx(total, rel=1e-12)
