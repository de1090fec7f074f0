"""One timing harness for every backend: warm-up, interleaved rounds, median and IQR, outliers
re-measured, threads pinned and recorded, device fingerprint attached.

Why rounds: on a shared machine another tenant's burst lasts longer than one model's timing
loop. Splitting the repeats into rounds and visiting the models in a fresh random order each
round spreads a burst over all of them instead of ruining one; a round whose median strays
from the others by more than ``outlier_tolerance`` is measured again (up to
``max_remeasure`` times) and dropped if it still strays. Every figure keeps its spread.

Why two clocks: every call is timed on the wall clock and on the calling thread's CPU clock.
When the backend runs single-threaded on the calling thread, CPU time is the compute latency
and is immune to preemption by other tenants (on a 2-core host shared five ways, wall-clock
medians of a 5 ms model came out 3x its CPU time, while 0.1 ms layers were hardly touched, so
wall-clock sums of layers did not add up to wall-clock models). ``clock="auto"`` uses CPU
time exactly then and the wall clock otherwise; ``cpu_share`` (CPU / wall, median) reports
how contended the host was either way.

Why the garbage collector is run first and paused: garbage left by building models moves
latency. Measured here: ten mobile models re-timed after a hundred other models had been
built came out 3-8% slower (minimum, CPU clock) than right after the table build, and 0.5%
after one ``gc.collect()``; timing again without collecting stayed slow after 30 s idle. So
each timing pass collects once, then keeps the collector off while it times (as ``timeit``
does), so no collection lands inside a timed call.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from nasforge.hardware.backend_base import (
    BackendError,
    BackendSpec,
    Runner,
    Samples,
    as_backend,
    pinned_threads,
)
from nasforge.hardware.fingerprint import device_fingerprint

CLOCKS = ("auto", "wall", "cpu")
#: location statistics a measurement or table can report as its latency
STATISTICS = ("median", "p10", "min")


@dataclass(frozen=True)
class TimingConfig:
    """How each runner is timed.

    Args:
        warmup: untimed calls before the first round.
        repeats: timed calls in total, split evenly over ``rounds``.
        rounds: interleaved passes over all runners, each in a fresh random order.
        outlier_tolerance: a round whose median differs from the median of round medians by
            more than this fraction is re-measured.
        max_remeasure: re-measurement passes at most.
        clock: ``wall``, ``cpu`` (the calling thread's CPU time; single-threaded CPU backends
            only) or ``auto`` (``cpu`` where valid, else ``wall``).
        seed: seeds the visiting order.
    """

    warmup: int = 5
    repeats: int = 30
    rounds: int = 3
    outlier_tolerance: float = 0.10
    max_remeasure: int = 2
    clock: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.rounds < 1 or self.warmup < 0:
            raise ValueError("timing: need repeats >= 1, rounds >= 1, warmup >= 0")
        if self.clock not in CLOCKS:
            raise BackendError(f"timing.clock: {self.clock!r} is not one of {', '.join(CLOCKS)}")

    @property
    def per_round(self) -> int:
        return max(1, math.ceil(self.repeats / self.rounds))

    def resolve_clock(self, spec: BackendSpec) -> str:
        """The clock used on ``spec``, as its backend decides (:meth:`Backend.clock`):
        ``cpu`` needs all work on the calling thread.

        Raises:
            BackendError: ``clock="cpu"`` on a backend or thread count where work leaves the
                calling thread.
        """
        return spec.backend.clock(spec, self.clock)


@dataclass(frozen=True)
class TimingStats:
    """Statistics of one runner's kept samples (milliseconds, on the chosen clock)."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    mean_ms: float
    p10_ms: float
    samples: int
    rounds: int
    outlier_samples: int
    remeasured_rounds: int
    dropped_rounds: int
    round_medians_ms: tuple[float, ...]
    cpu_share: float = float("nan")

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def spread(self) -> float:
        """IQR relative to the median."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0

    def value_ms(self, statistic: str) -> float:
        """``median``, ``p10`` (10th percentile) or ``min`` of the kept samples."""
        return float(getattr(self, f"{_check_statistic(statistic)}_ms"))


def _check_statistic(statistic: str) -> str:
    if statistic not in STATISTICS:
        raise BackendError(f"statistic: {statistic!r} is not one of {', '.join(STATISTICS)}")
    return statistic


@dataclass(frozen=True)
class LatencyMeasurement:
    """One measured latency with its spread and provenance.

    ``median_ms`` is the figure to use; ``iqr_ms`` its interquartile range; ``outliers`` the
    samples beyond 3 IQR of the quartiles; ``remeasured`` the rounds measured again because
    their median strayed, ``dropped_rounds`` those that still strayed; ``clock`` the clock of
    the figures (``wall`` or ``cpu``); ``cpu_share`` the median CPU / wall ratio of the calls
    (about 1 on a quiet host with one thread; lower when other tenants preempt);
    ``p10_ms`` the 10th percentile; ``fingerprint`` the device fingerprint (a dict) of the
    machine. :meth:`value_ms` picks ``median``, ``p10`` or ``min``.
    """

    median_ms: float
    iqr_ms: float
    min_ms: float
    repeats: int
    batch_size: int
    threads: int
    backend: str = "torch"
    q1_ms: float = 0.0
    q3_ms: float = 0.0
    mean_ms: float = 0.0
    rounds: int = 1
    outliers: int = 0
    remeasured: int = 0
    dropped_rounds: int = 0
    round_medians_ms: tuple[float, ...] = ()
    clock: str = "wall"
    cpu_share: float = float("nan")
    p10_ms: float = 0.0
    fingerprint: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def value_ms(self, statistic: str = "median") -> float:
        """The latency under ``statistic`` (``median``, ``p10`` or ``min``)."""
        return float(getattr(self, f"{_check_statistic(statistic)}_ms"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["round_medians_ms"] = list(self.round_medians_ms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyMeasurement:
        known = set(cls.__dataclass_fields__)
        vals = {k: v for k, v in d.items() if k in known}
        vals["round_medians_ms"] = tuple(vals.get("round_medians_ms", ()))
        return cls(**vals)

    @classmethod
    def from_stats(
        cls, stats: TimingStats, spec: BackendSpec, batch_size: int, clock: str
    ) -> LatencyMeasurement:
        return cls(
            median_ms=stats.median_ms,
            iqr_ms=stats.iqr_ms,
            min_ms=stats.min_ms,
            repeats=stats.samples,
            batch_size=batch_size,
            threads=spec.threads,
            backend=spec.label,
            q1_ms=stats.q1_ms,
            q3_ms=stats.q3_ms,
            mean_ms=stats.mean_ms,
            rounds=stats.rounds,
            outliers=stats.outlier_samples,
            remeasured=stats.remeasured_rounds,
            dropped_rounds=stats.dropped_rounds,
            round_medians_ms=stats.round_medians_ms,
            clock=clock,
            cpu_share=stats.cpu_share,
            p10_ms=stats.p10_ms,
            fingerprint=device_fingerprint(spec.threads).to_dict(),
        )


def _quartiles(samples: Sequence[float]) -> tuple[float, float]:
    if len(samples) < 4:
        return min(samples), max(samples)
    q = statistics.quantiles(samples, n=4)
    return q[0], q[2]


def summarize(
    rounds: Sequence[Sequence[float]],
    tolerance: float,
    remeasured: int = 0,
    cpu_share: float = float("nan"),
) -> TimingStats:
    """Statistics over the rounds whose median agrees with the consensus within ``tolerance``.

    The consensus is the median of round medians; if no round agrees, all are kept.
    """
    medians = [statistics.median(r) for r in rounds]
    consensus = statistics.median(medians)
    keep = [
        r
        for r, m in zip(rounds, medians)
        if consensus <= 0 or abs(m - consensus) <= tolerance * consensus
    ]
    if not keep:
        keep = list(rounds)
    flat = [s for r in keep for s in r]
    q1, q3 = _quartiles(flat)
    iqr = q3 - q1
    outliers = sum(1 for s in flat if s > q3 + 3 * iqr or s < q1 - 3 * iqr)
    return TimingStats(
        median_ms=statistics.median(flat),
        q1_ms=q1,
        q3_ms=q3,
        min_ms=min(flat),
        mean_ms=statistics.fmean(flat),
        p10_ms=float(np.percentile(flat, 10)),
        samples=len(flat),
        rounds=len(keep),
        outlier_samples=outliers,
        remeasured_rounds=remeasured,
        dropped_rounds=len(rounds) - len(keep),
        round_medians_ms=tuple(statistics.median(r) for r in keep),
        cpu_share=cpu_share,
    )


def _strays(rounds: Sequence[Sequence[float]], tolerance: float) -> list[int]:
    medians = [statistics.median(r) for r in rounds]
    consensus = statistics.median(medians)
    if consensus <= 0:
        return []
    return [i for i, m in enumerate(medians) if abs(m - consensus) > tolerance * consensus]


def _cpu_share(walls: Sequence[float], cpus: Sequence[float]) -> float:
    ratios = [c / w for w, c in zip(walls, cpus) if w > 0 and not math.isnan(c)]
    return statistics.median(ratios) if ratios else float("nan")


@contextlib.contextmanager
def collected_garbage() -> Iterator[None]:
    """Collect garbage now and keep the cyclic collector off for the block (see module doc)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _interleave(
    count: int,
    visit: Callable[[int], Samples],
    config: TimingConfig,
    clock: str,
    progress: Callable[[], None] | None = None,
) -> list[TimingStats]:
    rng = np.random.default_rng(config.seed)
    pick = 1 if clock == "cpu" else 0
    rounds: list[list[list[float]]] = [[] for _ in range(count)]
    walls: list[list[float]] = [[] for _ in range(count)]
    cpus: list[list[float]] = [[] for _ in range(count)]

    def take(i: int) -> list[float]:
        samples = visit(i)
        walls[i].extend(samples[0])
        cpus[i].extend(samples[1])
        return samples[pick]

    remeasured = [0] * count
    with collected_garbage():
        for _ in range(config.rounds):
            for i in rng.permutation(count):
                rounds[int(i)].append(take(int(i)))
                if progress is not None:
                    progress()
        if config.rounds >= 3:
            for _ in range(config.max_remeasure):
                todo = [
                    (i, j)
                    for i in range(count)
                    for j in _strays(rounds[i], config.outlier_tolerance)
                ]
                if not todo:
                    break
                for k in rng.permutation(len(todo)):
                    i, j = todo[k]
                    rounds[i][j] = take(i)
                    remeasured[i] += 1
    return [
        summarize(rounds[i], config.outlier_tolerance, remeasured[i], _cpu_share(walls[i], cpus[i]))
        for i in range(count)
    ]


def time_runners(
    runners: Sequence[Runner],
    config: TimingConfig = TimingConfig(),
    clock: str = "wall",
    progress: Callable[[], None] | None = None,
) -> list[TimingStats]:
    """Time every runner with the harness: warm-up, interleaved rounds, stray rounds re-measured.

    Runners are visited in a fresh seeded random order each round, so slow drifts and other
    tenants' bursts spread over all of them. ``clock`` is ``wall`` or ``cpu`` (resolved by
    :meth:`TimingConfig.resolve_clock`). Returns one :class:`TimingStats` per runner, in the
    order given. Runners are not closed. ``progress`` is called after every visit.
    """
    for r in runners:
        if config.warmup:
            r.run(config.warmup)
    return _interleave(
        len(runners), lambda i: runners[i].run(config.per_round), config, clock, progress
    )


def time_factories(
    factories: Sequence[Callable[[], Runner]],
    config: TimingConfig = TimingConfig(),
    clock: str = "wall",
    progress: Callable[[], None] | None = None,
) -> list[TimingStats]:
    """Like :func:`time_runners`, but each visit makes a fresh runner, warms it up and closes it.

    For timing many small things (table entries) without holding all of them at once.
    """

    def visit(i: int) -> Samples:
        runner = factories[i]()
        try:
            if config.warmup:
                runner.run(config.warmup)
            return runner.run(config.per_round)
        finally:
            runner.close()

    return _interleave(len(factories), visit, config, clock, progress)


def time_models(
    builds: Sequence[Callable[[], nn.Module]],
    input_shapes: Sequence[Sequence[int]],
    batch_size: int,
    spec: BackendSpec,
    config: TimingConfig = TimingConfig(),
    progress: Callable[[], None] | None = None,
    fresh_runners: bool = True,
) -> tuple[list[TimingStats], str]:
    """Time the models ``builds`` make on ``spec``, interleaved, with its threads pinned.

    With ``fresh_runners`` (for many small models, e.g. table entries), every visit makes a
    fresh runner through the backend's
    :meth:`~nasforge.hardware.backend_base.Backend.runner_factory` (onnxruntime exports each
    model once and opens a fresh session per visit), warms it up and closes it, as
    :func:`time_factories` does. Without, each model is built once and its runner held for
    the whole measurement, as :func:`time_runners` does (fewer, larger models).
    ``input_shapes[i]`` is the per-sample input shape of model ``i``. Returns the statistics
    in the order given and the clock used.
    """
    if len(input_shapes) != len(builds):
        raise ValueError("time_models: one input shape per model is needed")
    backend = spec.backend
    clock = config.resolve_clock(spec)
    with pinned_threads(spec):
        if fresh_runners:
            factories = [
                backend.runner_factory(build, shape, batch_size, spec)
                for build, shape in zip(builds, input_shapes)
            ]
            return time_factories(factories, config, clock, progress), clock
        runners: list[Runner] = []
        try:
            for i, (build, shape) in enumerate(zip(builds, input_shapes)):
                runners.append(backend.make_runner(build(), shape, batch_size, spec, str(i)))
            return time_runners(runners, config, clock, progress), clock
        finally:
            for r in runners:
                r.close()


def _same(model: nn.Module) -> nn.Module:
    return model


def measure_models(
    models: Sequence[nn.Module],
    input_shape: Sequence[int],
    batch_size: int = 1,
    backend: str | BackendSpec = "torch",
    threads: int | None = None,
    config: TimingConfig = TimingConfig(),
) -> list[LatencyMeasurement]:
    """Measure several whole models interleaved (the fair way to compare them on a busy host).

    ``threads`` overrides the spec's thread count; the count used is pinned and recorded.
    Models are not mutated.
    """
    spec = as_backend(backend, threads)
    if threads is not None and spec.threads != threads:
        spec = replace(spec, threads=threads)
    stats, clock = time_models(
        [functools.partial(_same, m) for m in models],
        [input_shape] * len(models),
        batch_size,
        spec,
        config,
        fresh_runners=False,
    )
    return [LatencyMeasurement.from_stats(s, spec, batch_size, clock) for s in stats]


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    backend: str | BackendSpec = "torch",
    rounds: int = 3,
    clock: str = "auto",
    seed: int = 0,
) -> LatencyMeasurement:
    """Median latency of ``model`` in milliseconds on ``backend``, with spread and fingerprint.

    Args:
        model: any module taking one tensor of shape ``(batch_size, *input_shape)``; it is
            not mutated (a BN-folded eval copy is timed).
        input_shape: per-sample shape, e.g. ``(3, 32, 32)``.
        batch_size: leading dimension of the input.
        warmup: untimed calls first.
        repeats: timed calls, split over ``rounds`` rounds.
        threads: pinned thread count (default: torch's current count), recorded in the result.
        backend: a registered backend name (``torch``, ``torch:parallel``, ``onnxruntime``,
            ``onnxruntime:parallel``, ``cuda``, or a plugin's) or a :class:`BackendSpec`.
        rounds: rounds of the harness; a round whose median strays by more than 10% is
            re-measured.
        clock: ``auto`` (CPU time of the calling thread when single-threaded, else wall),
            ``wall`` or ``cpu``; the result records which.
        seed: seeds the input and the round order.
    """
    cfg = TimingConfig(
        warmup=warmup, repeats=repeats, rounds=min(rounds, repeats), clock=clock, seed=seed
    )
    return measure_models([model], input_shape, batch_size, backend, threads, cfg)[0]
