"""Compression measures through hardware: ``compare_latency`` runs on hardware's timing harness,
and the channel latency table holds hardware's entry records, timed on any registered backend
(a toy backend defined here shows which one was used). Nothing here asserts a time."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from nasforge.compression.pruning import (
    ChannelLatencyTable,
    ChannelPruningConfig,
    MagnitudeImportance,
    build_latency_table,
    latency_aware_plan,
)
from nasforge.compression.quantization.runtime import compare_latency
from nasforge.compression.zoo import resnet
from nasforge.hardware import timing
from nasforge.hardware.backends import (
    Backend,
    BackendSpec,
    Runner,
    example_input,
    register_backend,
)
from nasforge.hardware.entries import TableEntry
from nasforge.hardware.timing import TimingConfig

SHAPE = (1, 12, 12)


class ShapeLoggingBackend(Backend):
    """A user's backend: torch eager, remembering the models it was asked to run."""

    def __init__(self) -> None:
        self.widths: list[int] = []

    def make_runner(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        batch_size: int,
        spec: BackendSpec,
        name: str = "",
    ) -> Runner:
        prepared = self.prepare(model, spec)
        self.widths.append(sum(p.numel() for p in prepared.parameters()))
        x = example_input(input_shape, batch_size)
        return Runner(lambda: prepared(x), name)

    def single_threaded(self, spec: BackendSpec) -> bool:
        return spec.threads == 1


def test_compare_latency_runs_on_the_hardware_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    visits: list[int] = []
    real = timing._interleave

    def spy(count, visit, config, clock, progress=None, threads=None):  # type: ignore[no-untyped-def]
        visits.append(count)
        assert clock == "wall" and config.rounds == 3 and config.per_round == 4
        return real(count, visit, config, clock, progress, threads)

    monkeypatch.setattr(timing, "_interleave", spy)
    calls = {"a": 0, "b": 0}

    def call(k: str):  # type: ignore[no-untyped-def]
        def run() -> None:
            calls[k] += 1

        return run

    before = torch.get_num_threads()
    res = compare_latency(
        {"a": call("a"), "b": call("b")}, {"a": "onnxruntime"}, 2, 1, rounds=3, repeats=4, warmup=2
    )
    assert visits == [2] and torch.get_num_threads() == before
    assert list(res) == ["a", "b"]
    assert res["a"].backend == "onnxruntime" and res["b"].backend == ""
    assert res["a"].batch_size == 2 and res["a"].threads == 1
    assert res["a"].repeats >= 4 and res["a"].median_ms >= 0 and res["a"].iqr_ms >= 0
    assert calls["a"] >= 2 + 12 and calls["b"] >= 2 + 12


def test_channel_table_is_timed_on_the_named_backend_with_hardware_records() -> None:
    backend = register_backend("shapelog", ShapeLoggingBackend, replace=True)
    assert isinstance(backend, ShapeLoggingBackend)
    model = resnet(width=8).eval()
    imp = MagnitudeImportance()
    table = build_latency_table(
        model,
        SHAPE,
        "shapelog",
        imp,
        fractions=(0.5,),
        round_to=2,
        min_keep=2,
        timing=TimingConfig(warmup=1, repeats=3, rounds=3),
    )
    assert table.backend == "shapelog" and table.statistic == "median"
    assert isinstance(table.base, TableEntry) and table.base.samples >= 1  # stray rounds drop
    assert table.entries and all(isinstance(e, TableEntry) for _, _, e in table.entries)
    # one runner per variant, held for the whole measurement; the base is the widest
    variants = 1 + len(table.entries)
    assert len(backend.widths) == variants
    prepared = backend.prepare(model, BackendSpec("shapelog"))
    assert max(backend.widths) == sum(p.numel() for p in prepared.parameters())
    again = ChannelLatencyTable.from_json(table.to_json())
    assert again == table
    plan = latency_aware_plan(
        model, SHAPE, imp, again, 10 * again.base_ms, ChannelPruningConfig(round_to=2, min_keep=2)
    )
    assert plan.channels_removed == 0  # a target above the base needs no cut


def test_old_channel_tables_still_load() -> None:
    old = '{"base_ms": 2.0, "entries": [["g0", 4, 1.5]], "backend": "onnxruntime"}'
    table = ChannelLatencyTable.from_json(old)
    assert table.base_ms == 2.0 and table.backend == "onnxruntime"
    assert table.delta("g0", 4, 8) == pytest.approx(-0.5)
