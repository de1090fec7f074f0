"""A space defined outside nasforge gets a latency table and predictions by describing its plan.

The toy space below is what a user writes: a :class:`SearchSpace` with its own ``plan()``, its
own layer factories registered with :func:`register_layer`, and the space registered with
:func:`register_space`. No nasforge file knows it. What is checked is wiring (units,
determinism, the aggregations' arithmetic, ordering of clearly different archs), never how
close a prediction is to a measurement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import LatencyTable
from nasforge.hardware.timing import TimingConfig
from nasforge.nn.layers import register_layer
from nasforge.space import Arch, Categorical, SearchSpace
from nasforge.space.plan import Cell, LayerSpec, Plan
from nasforge.spaces import create_space, register_space

SHAPE = (3, 16, 16)


def _conv(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    return nn.Conv2d(args[0], args[1], 3, padding=1)


def _pool(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    return nn.AvgPool2d(3, 1, 1)


def _head(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(args[0], args[1]))


register_layer("toyplan.conv", _conv, forked=True)
register_layer("toyplan.pool", _pool, forked=True)
register_layer("toyplan.head", _head)


class _ToyCell(nn.Module):
    def __init__(self, width: int, branch: str) -> None:
        super().__init__()
        self.a = nn.Conv2d(width, width, 3, padding=1)
        self.b = (
            nn.Conv2d(width, width, 3, padding=1) if branch == "conv" else nn.AvgPool2d(3, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


class ToyPlanSpace(SearchSpace):
    """Stem conv, two two-branch cells (conv + conv or conv + pool), head."""

    name = "toyplan"

    def __init__(
        self,
        input_shape: Sequence[int] = SHAPE,
        num_classes: int = 10,
        widths: Sequence[int] = (4, 48),
    ) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        super().__init__(
            [Categorical("width", tuple(widths)), Categorical("branch", ("conv", "pool"))]
        )

    def build(self, arch: Arch) -> nn.Module:
        w, c = int(arch["width"]), self.input_shape[0]
        return nn.Sequential(
            nn.Conv2d(c, w, 3, padding=1),
            _ToyCell(w, str(arch["branch"])),
            _ToyCell(w, str(arch["branch"])),
            _head((w, self.num_classes), ()),
        )

    def plan(self, arch: Mapping[str, Any]) -> Plan:
        w = int(arch["width"])
        shape = (w, *self.input_shape[1:])
        conv = LayerSpec("toyplan.conv", (w, w), shape)
        other = conv if arch["branch"] == "conv" else LayerSpec("toyplan.pool", (), shape)
        cell = Cell(
            num_nodes=2,
            edges=((0, 1, conv), (0, 1, other)),
            outputs=(1,),
            merges=((1, LayerSpec("sum", (2,), shape)),),
        )
        return (
            (LayerSpec("toyplan.conv", (self.input_shape[0], w), self.input_shape), 1),
            (cell, 2),
            (LayerSpec("toyplan.head", (w, self.num_classes), shape), 1),
        )


register_space("toyplan", ToyPlanSpace, "a toy space defined in a test")

FAST = TimingConfig(warmup=1, repeats=6, rounds=3)
LIGHT = {"width": 4, "branch": "pool"}
HEAVY = {"width": 48, "branch": "conv"}


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> LatencyTable:
    space = create_space("toyplan", SHAPE, 10)
    path = tmp_path_factory.mktemp("toyplan") / "table.json"
    config = BuildConfig(calibration_archs=2, held_out_archs=2, timing=FAST)
    return TableBuilder(space, "torch", 1, config, progress=False).build(path)


def test_the_builder_measures_every_layer_of_the_toy_space(table: LatencyTable) -> None:
    space = table.make_space()  # rebuilt from the registry by name
    assert isinstance(space, ToyPlanSpace)
    keys = {lay.key for lay in space.all_layers()}
    assert (
        keys == set(table.entries) and len(keys) == 10
    )  # 2 widths x (stem, conv, pool, sum, head)
    assert all(e.min_ms > 0 for e in table.entries.values())
    assert {"min/sum", "min/critical_path"} <= set(table.calibration)
    assert set(table.accuracy["min/sum"]) == {"n", "within_10pct", "mape", "kendall_tau"}
    again = LatencyTable.load(table.path, warn=False)  # type: ignore[arg-type]
    assert again.entries == table.entries
    assert json.dumps(again.accuracy) == json.dumps(table.accuracy)  # NaN-safe comparison


def test_sum_and_critical_path_of_the_toy_cell_are_the_plans_arithmetic(
    table: LatencyTable,
) -> None:
    space = table.make_space()
    pred = LatencyPredictor(table, space, calibrated=False)
    arch = space.make(HEAVY)
    ms = pred.layer_ms
    plan = space.plan(arch)
    (stem, _), (cell, reps), (head, _) = plan
    assert isinstance(cell, Cell) and isinstance(stem, LayerSpec) and isinstance(head, LayerSpec)
    conv, other = cell.edges[0][2], cell.edges[1][2]
    add = cell.merges[0][1]
    overhead = table.call_overhead_ms["min"]
    total, crit, _ = pred.raw_ms(arch)
    assert total == pytest.approx(
        overhead + ms(stem) + reps * (ms(conv) + ms(other) + ms(add)) + ms(head)
    )
    assert crit == pytest.approx(
        overhead + ms(stem) + reps * (max(ms(conv), ms(other)) + ms(add)) + ms(head)
    )
    assert crit < total


def test_predictions_are_deterministic_milliseconds_that_order_clearly_different_archs(
    table: LatencyTable, tmp_path: Path
) -> None:
    space = create_space("toyplan", SHAPE, 10)
    light, heavy = space.make(LIGHT), space.make(HEAVY)
    for mode in ("sum", "critical_path"):
        pred = LatencyPredictor(table, space, mode=mode)
        values = pred.predict_many([light, heavy, light])
        assert values[0] == values[2]  # same arch, same arithmetic
        assert LatencyPredictor(table, space, mode=mode).predict(heavy) == values[1]
        assert 0 < values[0] < values[1] < 1_000  # ms of one call, not seconds or us
    rng = np.random.default_rng(0)
    samples = [space.sample(rng) for _ in range(20)]
    raw = LatencyPredictor(table, space, calibrated=False)
    assert all(raw.raw_ms(a)[0] > 0 for a in samples)
