"""The ``torch:parallel`` backend: cells fork their ops onto torch's inter-op threads.

What is tested here is behaviour, never speed (the speedup and the prediction error are in
``benchmarks/latency.py``): forked cells compute exactly what sequential cells do, the traced
graph really contains the forks, entries of cell ops are timed forked, tables built on the
backend carry a ``schedule`` calibration, and a pool that cannot be resized is a clear error.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import nasforge.spaces.nb201  # noqa: F401  (registers the nb201 layer factories used below)
from nasforge.hardware.backends import (
    BackendError,
    BackendSpec,
    ensure_interop_threads,
    example_input,
    make_runner,
    trace_with_forks,
)
from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.entries import _chain_of, _entry_module, _Forked, resolve_context
from nasforge.hardware.layers import BRANCH_OPS, LayerSpec
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import LatencyTable
from nasforge.hardware.timing import TimingConfig
from nasforge.nn.cells import enable_branch_forks
from nasforge.spaces import create_space

SHAPE = (3, 16, 16)


def pool_threads() -> int:
    """The inter-op pool's size in this process (torch fixes it at first use)."""
    return torch.get_num_interop_threads()


def _forks(graph: torch.Graph) -> int:
    return sum(1 for n in graph.nodes() if n.kind() in ("prim::fork", "prim::TracedFork"))


@pytest.mark.parametrize("name", ["nb201", "darts"])
def test_forked_cells_compute_what_sequential_cells_compute(name: str) -> None:
    space = create_space(name, SHAPE, 10, **({"C": 4, "N": 1} if name == "nb201" else {}))
    rng = np.random.default_rng(0)
    x = torch.randn(2, *SHAPE)
    for _ in range(4):
        model = space.build(space.sample(rng)).eval()
        with torch.no_grad():
            expected = model(x)
            traced = trace_with_forks(model, x, pool_threads())
            got = traced(x)
            assert enable_branch_forks(model) > 0
            eager_forked = model(x)  # eager forks run at once: same numbers
        assert torch.equal(got, expected)
        assert torch.equal(eager_forked, expected)


def test_the_traced_nb201_network_forks_every_live_edge() -> None:
    space = create_space("nb201", SHAPE, 10, C=4, N=2)
    arch = space.from_string(
        "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|nor_conv_1x1~0|none~1|nor_conv_3x3~2|"
    )
    x = example_input(SHAPE, 1)
    traced = trace_with_forks(space.build(arch), x, pool_threads())
    # 5 live edges per cell, 2 cells per stage, 3 stages; forks are nested in the cell calls
    total = 0
    for m in traced.modules():
        if m._c._has_method("forward"):
            total += _forks(m.graph)
    assert total == 5 * 2 * 3


def test_runner_on_torch_parallel_runs_and_is_timed_on_the_wall_clock() -> None:
    spec = BackendSpec("torch", threads=pool_threads(), execution_mode="parallel")
    assert spec.label == "torch:parallel" and not spec.single_threaded
    space = create_space("nb201", SHAPE, 10, C=4, N=1)
    runner = make_runner(space.build(space.sample(np.random.default_rng(1))), SHAPE, 1, spec)
    walls, _ = runner.run(3)
    runner.close()
    assert len(walls) == 3 and all(w > 0 for w in walls)


def test_a_pool_that_cannot_be_resized_is_a_clear_error() -> None:
    n = pool_threads()
    x = torch.randn(1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.wait(torch.jit.fork(torch.relu, x))  # the pool is in use from here on
    assert ensure_interop_threads(n) == n
    with pytest.raises(BackendError, match=f"inter-op pool already has {n} threads"):
        ensure_interop_threads(n + 1)


def test_cell_ops_are_timed_forked_only_on_the_parallel_backend() -> None:
    par = BackendSpec("torch", threads=2, execution_mode="parallel")
    op = LayerSpec("nb201.op", ("nor_conv_3x3", 4, 4, 1), (4, 8, 8))
    stem = LayerSpec("conv3x3_bn", (3, 4), SHAPE)
    assert "nb201.op" in BRANCH_OPS and "conv3x3_bn" not in BRANCH_OPS
    assert isinstance(_entry_module(op, par), _Forked)
    assert not isinstance(_entry_module(stem, par), _Forked)
    assert not isinstance(_entry_module(op, BackendSpec("torch")), _Forked)
    assert not isinstance(
        _entry_module(op, BackendSpec("onnxruntime", execution_mode="parallel")), _Forked
    )


def test_parallel_backends_time_entries_in_a_chain_of_forks() -> None:
    """A lone fork pays for waking a pool thread; inside a cell, forks follow each other, so
    entries on a parallel backend are marginal costs in a chain of forked copies."""
    par = BackendSpec("torch", threads=2, execution_mode="parallel")
    assert resolve_context(par, "auto") == "chained"
    assert resolve_context(BackendSpec("torch"), "auto") == "isolated"
    assert resolve_context(par, "isolated") == "isolated"
    chain = _chain_of(LayerSpec("nb201.op", ("skip_connect", 4, 4, 1), (4, 8, 8)), par)
    assert len(chain) > 1 and all(isinstance(m, _Forked) for m in chain)


@pytest.mark.slow  # ~17 s: builds a whole table
def test_a_table_on_torch_parallel_has_a_schedule_calibration_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    space = create_space("nb201", (3, 8, 8), 10, C=4, N=1)
    spec = BackendSpec("torch", threads=pool_threads(), execution_mode="parallel")
    path = tmp_path / "nb201_parallel.json"
    config = BuildConfig(calibration_archs=3, timing=TimingConfig(warmup=1, repeats=6, rounds=2))
    table = TableBuilder(space, spec, 2, config, progress=False).build(path)
    assert table.clock == "wall"
    assert table.parallel_speedup is not None and table.parallel_speedup > 0
    assert {"min/sum", "min/critical_path", "min/schedule"} <= set(table.calibration)
    loaded = LatencyTable.load(path)
    assert loaded.backend == spec and loaded.parallel_speedup == table.parallel_speedup
    pred = LatencyPredictor(loaded, space)
    assert pred.mode in ("schedule", "sum")  # decided by the measured speedup, not assumed
    assert pred.workers == (spec.threads if pred.mode == "schedule" else 1)
    s, c, q = pred.raw_ms(space.sample(np.random.default_rng(3)))
    assert c <= q <= s or pred.workers == 1
