"""Measuring latency-table entries: each distinct layer timed with the harness.

Two contexts. ``isolated``: the layer is the whole model being timed. ``chained``: for layers
whose output has the input's shape, ``K`` fresh copies are chained and timed beside a single
copy; the entry is the marginal cost ``(T_K - T_1) / (K - 1)`` plus one call overhead. On
onnxruntime the isolated figure misleads: the graph optimiser converts convolutions to a
blocked layout with reorders at the graph's edges and fuses ReLU / Add into neighbouring
convolutions, so a lone NB201 op paid up to 4x what it costs inside a network (isolated
entries over-predicted NB201 cells by 25%, rank-correlated at tau 0.96 but within 10% for only
half the archs; chained entries brought that to 95%). On ``torch:parallel`` a lone forked op
pays for waking a sleeping pool thread: a skip connection forked alone took 86 us, but 0.1 us
more per op in a chain of forks (a 3x3 conv at batch 1: 182 us alone, 123 us in a chain, 101 us
unforked). ``auto`` chains on onnxruntime and on parallel backends.

Every entry reads as "one call of this layer": per-call overhead (measured on a trivial
model) is part of it, and the predictor subtracts it once per layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nasforge.hardware.backend_base import BackendError, BackendSpec
from nasforge.hardware.layers import BRANCH_OPS, LayerSpec, build_layer
from nasforge.hardware.timing import (
    STATISTICS,
    TimingConfig,
    TimingStats,
    measure_models,
    time_models,
)

#: timing of one entry: each of 3 rounds builds the layer afresh, warms it up, times 10 calls
ENTRY_TIMING = TimingConfig(warmup=3, repeats=30, rounds=3)
CONTEXTS = ("auto", "isolated", "chained")
CHAIN_LENGTH = 4


@dataclass(frozen=True)
class TableEntry:
    """One measured layer (ms): median, IQR, 10th percentile and minimum, samples kept,
    rounds re-measured, outlier samples, whether it was measured in a chain, and whether the
    harness's noise verdict called its measurement unstable (host busy or rounds spread;
    :class:`~nasforge.hardware.noise.Stability`)."""

    median_ms: float
    iqr_ms: float
    p10_ms: float
    min_ms: float
    samples: int
    remeasured: int = 0
    outliers: int = 0
    chained: bool = False
    unstable: bool = False

    def value_ms(self, statistic: str) -> float:
        return float(getattr(self, f"{statistic}_ms"))

    def to_list(self) -> list[float | int]:
        return [
            self.median_ms,
            self.iqr_ms,
            self.p10_ms,
            self.min_ms,
            self.samples,
            self.remeasured,
            self.outliers,
            int(self.chained),
            int(self.unstable),
        ]

    @classmethod
    def from_list(cls, v: Sequence[float | int]) -> TableEntry:
        return cls(
            float(v[0]),
            float(v[1]),
            float(v[2]),
            float(v[3]),
            int(v[4]),
            int(v[5]) if len(v) > 5 else 0,
            int(v[6]) if len(v) > 6 else 0,
            bool(v[7]) if len(v) > 7 else False,
            bool(v[8]) if len(v) > 8 else False,
        )

    @classmethod
    def from_stats(cls, s: TimingStats) -> TableEntry:
        return cls(
            s.median_ms,
            s.iqr_ms,
            s.p10_ms,
            s.min_ms,
            s.samples,
            s.remeasured_rounds,
            s.outlier_samples,
            unstable=not s.stability.stable,
        )


def resolve_context(spec: BackendSpec, context: str) -> str:
    if context not in CONTEXTS:
        raise BackendError(f"context: {context!r} is not one of {', '.join(CONTEXTS)}")
    if context == "auto":
        return "chained" if spec.backend.chains_entries else "isolated"
    return context


class _Trivial(nn.Module):
    def forward(self, x: Any) -> Any:
        return x + 0.0


def measure_call_overhead(
    spec: BackendSpec, batch_size: int = 1, clock: str = "auto"
) -> dict[str, float]:
    """Per statistic, ms of one call of a trivial model (``x + 0``) on ``spec``: the call floor."""
    out = measure_models(
        [_Trivial()],
        (1,),
        batch_size,
        spec,
        config=TimingConfig(warmup=10, repeats=90, rounds=3, clock=clock),
    )[0]
    return {st: out.value_ms(st) for st in STATISTICS}


class _Branches(nn.Module):
    """``k`` independent 3-conv branches on one input, concatenated (a parallelism probe)."""

    def __init__(self, k: int, c: int = 32) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[nn.Conv2d(c, c, 3, padding=1) for _ in range(3)]) for _ in range(k)
        )

    fork_branches = False  # set by the torch:parallel backend, like a cell's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fork_branches:
            futures = [torch.jit.fork(b, x) for b in self.branches]
            return torch.cat([torch.jit.wait(f) for f in futures], dim=1)
        return torch.cat([b(x) for b in self.branches], dim=1)


def measure_parallel_speedup(spec: BackendSpec, batch_size: int = 1) -> float:
    """How much faster ``spec`` runs two independent branches than the same work in a row.

    ``2 * T(one branch) / T(two branches)``: about 1 when the backend runs branches one after
    the other (onnxruntime's parallel mode on CPU since 1.14, microsoft/onnxruntime#16158:
    two 8 ms branches took 16.2 ms here), up to ``threads`` when it runs them side by side
    (``torch:parallel``: 1.99x on 2 cores).
    """
    one, two = measure_models(
        [_Branches(1), _Branches(2)],
        (32, 28, 28),
        batch_size,
        spec,
        config=TimingConfig(warmup=3, repeats=40, rounds=8, clock="wall"),
    )
    return 2 * one.min_ms / two.min_ms


class _Forked(nn.Module):
    """A cell edge as the ``torch:parallel`` backend runs it: forked, then waited for, so that
    its entry includes the fork's launch and hand-back."""

    fork_branches = False

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fork_branches:
            return torch.jit.wait(torch.jit.fork(self.layer, x))
        return self.layer(x)


def _entry_module(spec: LayerSpec, backend: BackendSpec) -> nn.Module:
    """The module timed for ``spec`` on ``backend``: the layer, forked where the backend forks."""
    layer = build_layer(spec)
    if backend.backend.overlaps_branches and spec.op in BRANCH_OPS:
        return _Forked(layer)
    return layer


def _chain_of(spec: LayerSpec, backend: BackendSpec) -> nn.Module:
    return nn.Sequential(*[_entry_module(spec, backend) for _ in range(CHAIN_LENGTH)])


def _chainable(spec: LayerSpec) -> bool:
    """Whether the layer's output has its input's shape (checked on the meta device)."""
    module = build_layer(spec).to("meta")
    with torch.no_grad():
        out = module(torch.empty(1, *spec.in_shape, device="meta"))
    return isinstance(out, torch.Tensor) and tuple(out.shape[1:]) == tuple(spec.in_shape)


def measure_entries(
    layers: Sequence[LayerSpec],
    spec: BackendSpec,
    batch_size: int,
    overhead_ms: dict[str, float],
    timing: TimingConfig = ENTRY_TIMING,
    context: str = "auto",
    progress: Callable[[], None] | None = None,
) -> list[TableEntry]:
    """Time every layer with the harness, rounds interleaved across all of them.

    Each visit builds the timed module afresh, as the backend's
    :meth:`~nasforge.hardware.backend_base.Backend.runner_factory` decides (onnxruntime
    exports once per module and opens a fresh session per visit). ``overhead_ms`` (per
    statistic, from :func:`measure_call_overhead`) is added to chained marginal costs so
    that every entry includes one call overhead.
    """
    ctx = resolve_context(spec, context)
    models: list[Callable[[], nn.Module]] = []
    shapes: list[tuple[int, ...]] = []
    pairs: list[tuple[int, int | None]] = []
    for lay in layers:
        single = len(models)
        models.append(functools.partial(_entry_module, lay, spec))
        shapes.append(lay.in_shape)
        chain = None
        if ctx == "chained" and _chainable(lay):
            chain = len(models)
            models.append(functools.partial(_chain_of, lay, spec))
            shapes.append(lay.in_shape)
        pairs.append((single, chain))

    stats, _ = time_models(models, shapes, batch_size, spec, timing, progress)
    out = []
    for single, chain in pairs:
        s1 = stats[single]
        if chain is None:
            out.append(TableEntry.from_stats(s1))
            continue
        sk = stats[chain]
        k = CHAIN_LENGTH - 1
        marginal = {
            st: max(sk.value_ms(st) - s1.value_ms(st), 0.0) / k + overhead_ms.get(st, 0.0)
            for st in STATISTICS
        }
        out.append(
            TableEntry(
                marginal["median"],
                sk.iqr_ms / k,
                marginal["p10"],
                marginal["min"],
                sk.samples,
                sk.remeasured_rounds + s1.remeasured_rounds,
                sk.outlier_samples + s1.outlier_samples,
                chained=True,
                unstable=not (s1.stability.stable and sk.stability.stable),
            )
        )
    return out
