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

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

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
from nasforge.hardware.noise import Speedup, Stability, paired_speedup
from nasforge.hardware.rounds import (
    CLOCKS,
    STATISTICS,
    TimingConfig,
    TimingStats,
    _check_statistic,
    _interleave,
    collected_garbage,
    summarize,
)


@dataclass(frozen=True)
class LatencyMeasurement:
    """One measured latency with its spread and provenance.

    ``median_ms`` is the figure to use; ``iqr_ms`` its interquartile range; ``outliers`` the
    samples beyond 3 IQR of the quartiles; ``remeasured`` the rounds measured again because
    their median strayed, ``dropped_rounds`` those that still strayed; ``clock`` the clock of
    the figures (``wall`` or ``cpu``); ``cpu_share`` the median CPU / wall ratio of the calls
    (about 1 on a quiet host with one thread; lower when other tenants preempt);
    ``p10_ms`` the 10th percentile; ``fingerprint`` the device fingerprint (a dict) of the
    machine; ``stability`` the noise verdict (:class:`~nasforge.hardware.noise.Stability`:
    :attr:`unstable` and :attr:`label` say whether the host was too busy to trust the
    figure, and why). :meth:`value_ms` picks ``median``, ``p10`` or ``min``.
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
    stability: Stability = field(default_factory=Stability, compare=False)

    @property
    def unstable(self) -> bool:
        """Whether the host was too busy to trust this figure (see :attr:`stability`)."""
        return not self.stability.stable

    @property
    def label(self) -> str:
        """``1.234 ms``, or ``1.234 ms unstable: host busy (<reasons>)``."""
        s = f"{self.median_ms:.3f} ms"
        return s if self.stability.stable else f"{s} {self.stability.label}"

    def value_ms(self, statistic: str = "median") -> float:
        """The latency under ``statistic`` (``median``, ``p10`` or ``min``)."""
        return float(getattr(self, f"{_check_statistic(statistic)}_ms"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["round_medians_ms"] = list(self.round_medians_ms)
        d["stability"] = self.stability.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyMeasurement:
        known = set(cls.__dataclass_fields__)
        vals = {k: v for k, v in d.items() if k in known}
        vals["round_medians_ms"] = tuple(vals.get("round_medians_ms", ()))
        vals["stability"] = Stability.from_dict(vals.get("stability"))
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
            stability=stats.stability,
        )


def time_runners(
    runners: Sequence[Runner],
    config: TimingConfig = TimingConfig(),
    clock: str = "wall",
    progress: Callable[[], None] | None = None,
    threads: int | None = None,
) -> list[TimingStats]:
    """Time every runner with the harness: warm-up, interleaved rounds, stray rounds re-measured.

    Runners are visited in a fresh seeded random order each round, so slow drifts and other
    tenants' bursts spread over all of them. ``clock`` is ``wall`` or ``cpu`` (resolved by
    :meth:`TimingConfig.resolve_clock`). Returns one :class:`TimingStats` per runner, in the
    order given. Runners are not closed. ``progress`` is called after every visit.
    ``threads``: CPUs the runners keep busy, for the noise verdict (default: torch's
    intra-op thread count).
    """
    for r in runners:
        if config.warmup:
            r.run(config.warmup)
    return _interleave(
        len(runners),
        lambda i: runners[i].run(config.per_round),
        config,
        clock,
        progress,
        threads,
    )


def compare_runners(
    runners: Sequence[Runner],
    config: TimingConfig = TimingConfig(rounds=8, repeats=80),
    clock: str = "wall",
    baseline: int = 0,
    progress: Callable[[], None] | None = None,
    threads: int | None = None,
) -> tuple[list[TimingStats], list[Speedup]]:
    """Time runners interleaved (A B A B ..., a fresh order each round) and give each one's
    speed-up over ``runners[baseline]`` with a 95% interval over the paired rounds.

    When an interval is wider than ``config.policy.max_ci_halfwidth`` or the pass is
    unstable, the comparison is measured again with twice the rounds (up to
    ``config.policy.retries`` times); a speed-up that stays uncertain is returned with
    ``stable=False`` and its reasons, never silently. With ``config.policy.wait_quiet_s`` >
    0, every measurement (the first and each re-measurement) first waits up to that long for
    a quiet host; the stats' verdicts count all waits (``waits``, ``waited_s``). Returns the
    stats (in the order given)
    and one :class:`Speedup` per runner (the baseline's own is 1 by construction).
    ``threads``: CPUs the runners keep busy, for the noise verdict.
    """
    if not runners:
        return [], []
    names = [r.name or str(i) for i, r in enumerate(runners)]
    cfg = config
    result: tuple[list[TimingStats], list[Speedup]] = ([], [])
    waits, waited_s = 0, 0.0
    for attempt in range(1 + max(config.policy.retries, 0)):
        # with policy.wait_quiet_s > 0, time_runners waits for a quiet host before its first
        # pass: a re-measurement with more rounds waits too, without a wait of its own here
        stats = time_runners(runners, cfg, clock, progress, threads)
        waits += stats[0].stability.waits
        waited_s += stats[0].stability.waited_s
        stats = [
            replace(s, stability=replace(s.stability, waits=waits, waited_s=waited_s))
            for s in stats
        ]
        base = stats[baseline]
        ups = [
            paired_speedup(
                base.all_round_medians_ms,
                s.all_round_medians_ms,
                names[i],
                names[baseline],
                base.stability.merge(s.stability),
                config.policy,
            )
            for i, s in enumerate(stats)
        ]
        result = (stats, ups)
        if all(u.stable for u in ups):
            break
        if attempt < config.policy.retries:
            cfg = replace(cfg, rounds=2 * cfg.rounds, repeats=2 * cfg.repeats, seed=cfg.seed + 1)
    return result


def time_factories(
    factories: Sequence[Callable[[], Runner]],
    config: TimingConfig = TimingConfig(),
    clock: str = "wall",
    progress: Callable[[], None] | None = None,
    threads: int | None = None,
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

    return _interleave(len(factories), visit, config, clock, progress, threads)


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
            return time_factories(factories, config, clock, progress, spec.threads), clock
        runners: list[Runner] = []
        try:
            for i, (build, shape) in enumerate(zip(builds, input_shapes)):
                runners.append(backend.make_runner(build(), shape, batch_size, spec, str(i)))
            return time_runners(runners, config, clock, progress, spec.threads), clock
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


def measure_onnx(
    onnx_bytes: bytes,
    input_shape: Sequence[int],
    batch_size: int,
    backend: str | BackendSpec = "onnxruntime",
    config: TimingConfig = TimingConfig(),
    threads: int | None = None,
) -> LatencyMeasurement:
    """Latency of an already exported ONNX model on an onnxruntime backend, with the harness.

    For models that exist only as an ONNX file (a QDQ INT8 model, a compression stage's
    artifact): :func:`measure_models` takes a torch module and exports it itself. The file is
    run on a session from the backend's one session builder
    (:func:`~nasforge.hardware.onnx.ort_session`) with the spec's threads pinned, then timed
    like every other measurement here: warm-up, interleaved rounds, stray rounds re-measured,
    the noise verdict and the host fingerprint.

    Args:
        onnx_bytes: the serialized model (one float input of ``(batch_size, *input_shape)``).
        input_shape: per-sample input shape.
        batch_size: leading dimension of the input.
        backend: an onnxruntime backend name (``onnxruntime``, ``onnxruntime:parallel``, or a
            plugin's that can open a session on ONNX bytes) or a :class:`BackendSpec`.
        config: the harness settings.
        threads: overrides the spec's thread count (pinned and recorded).

    Raises:
        BackendError: the backend cannot run an ONNX file (a torch backend).
    """
    spec = as_backend(backend, threads)
    if threads is not None and spec.threads != threads:
        spec = replace(spec, threads=threads)
    session_runner = getattr(spec.backend, "session_runner", None)
    if session_runner is None:
        raise BackendError(
            f"backend {spec.label!r} cannot run an exported ONNX model; use onnxruntime or "
            "onnxruntime:parallel"
        )
    clock = config.resolve_clock(spec)
    with pinned_threads(spec):
        runner = session_runner(onnx_bytes, input_shape, batch_size, spec)
        try:
            stats = time_runners([runner], config, clock, threads=spec.threads)[0]
        finally:
            runner.close()
    return LatencyMeasurement.from_stats(stats, spec, batch_size, clock)


__all__ = [
    "CLOCKS",
    "STATISTICS",
    "LatencyMeasurement",
    "TimingConfig",
    "TimingStats",
    "collected_garbage",
    "compare_runners",
    "measure_latency",
    "measure_models",
    "measure_onnx",
    "summarize",
    "time_factories",
    "time_models",
    "time_runners",
]
