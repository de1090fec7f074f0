"""The timing harness's passes: how runners are visited in interleaved rounds, how stray rounds
are re-measured, and how each pass gets its noise verdict (see :mod:`nasforge.hardware.timing`
for why, and :mod:`nasforge.hardware.noise` for the verdict). The public entry points live in
:mod:`nasforge.hardware.timing`; this module holds the configuration and the engine.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from nasforge.hardware.allocator import steady_allocator
from nasforge.hardware.backend_base import BackendError, BackendSpec, Runner, Samples
from nasforge.hardware.fingerprint import device_fingerprint
from nasforge.hardware.noise import (
    DEFAULT_POLICY,
    HostActivity,
    HostSample,
    NoisePolicy,
    QuietWait,
    Stability,
    assess,
    quiet_baseline,
    reference_kernel,
    round_spread,
    say_line,
    wait_for_quiet,
)

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
        reference: time the reference kernel once per round (see
            :mod:`nasforge.hardware.noise`); off, the verdict rests on the host counters and
            the round spread alone.
        policy: when a pass is unstable, how often it is measured again, and how long to
            wait for a quiet host first (:attr:`NoisePolicy.wait_quiet_s`; see
            :meth:`waiting`).
        notify: where the lines of such a wait go (``waiting for a quiet host: ...``);
            default: stderr and the ``nasforge.hardware`` logger. A run passes its log's
            ``say`` so they reach the terminal and the run's log file.
    """

    warmup: int = 5
    repeats: int = 30
    rounds: int = 3
    outlier_tolerance: float = 0.10
    max_remeasure: int = 2
    clock: str = "auto"
    seed: int = 0
    reference: bool = True
    policy: NoisePolicy = DEFAULT_POLICY
    notify: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.rounds < 1 or self.warmup < 0:
            raise ValueError("timing: need repeats >= 1, rounds >= 1, warmup >= 0")
        if self.clock not in CLOCKS:
            raise BackendError(f"timing.clock: {self.clock!r} is not one of {', '.join(CLOCKS)}")

    def waiting(self, seconds: float) -> TimingConfig:
        """This config with :attr:`NoisePolicy.wait_quiet_s` set to ``seconds`` (0: measure at
        once, the default): what a ``--wait-quiet S`` option passes on."""
        return replace(self, policy=replace(self.policy, wait_quiet_s=float(seconds)))

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
    #: every round's median in visiting order (strays included, after re-measurement): the
    #: rounds of two runners in one pass are paired, for :func:`paired_speedup`
    all_round_medians_ms: tuple[float, ...] = ()
    stability: Stability = Stability()

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


def _one_pass(
    count: int,
    visit: Callable[[int], Samples],
    config: TimingConfig,
    clock: str,
    progress: Callable[[], None] | None,
    seed: int,
) -> tuple[list[TimingStats], list[float], HostActivity]:
    rng = np.random.default_rng(seed)
    pick = 1 if clock == "cpu" else 0
    rounds: list[list[list[float]]] = [[] for _ in range(count)]
    walls: list[list[float]] = [[] for _ in range(count)]
    cpus: list[list[float]] = [[] for _ in range(count)]
    ref = Runner(reference_kernel(), "reference") if config.reference else None
    ref_rounds: list[float] = []

    def take(i: int) -> list[float]:
        samples = visit(i)
        walls[i].extend(samples[0])
        cpus[i].extend(samples[1])
        return samples[pick]

    def reference() -> None:
        if ref is not None:
            ref_rounds.append(min(ref.run(7)[pick]))

    remeasured = [0] * count
    with collected_garbage():
        if ref is not None:
            ref.run(3)  # warm-up
        start = HostSample.take()
        for _ in range(config.rounds):
            reference()
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
                reference()
                for k in rng.permutation(len(todo)):
                    i, j = todo[k]
                    rounds[i][j] = take(i)
                    remeasured[i] += 1
        reference()
        activity = HostActivity.between(start, HostSample.take())
    stats = [
        replace(
            summarize(
                rounds[i], config.outlier_tolerance, remeasured[i], _cpu_share(walls[i], cpus[i])
            ),
            all_round_medians_ms=tuple(statistics.median(r) for r in rounds[i]),
        )
        for i in range(count)
    ]
    return stats, ref_rounds, activity


def _interleave(
    count: int,
    visit: Callable[[int], Samples],
    config: TimingConfig,
    clock: str,
    progress: Callable[[], None] | None = None,
    threads: int | None = None,
) -> list[TimingStats]:
    """Interleaved passes with the noise verdict: a pass that comes out unstable is measured
    again (up to ``config.policy.retries`` times) and the least noisy pass is kept. With
    ``policy.wait_quiet_s`` > 0, every pass (the first one too) first waits up to that long
    for a quiet host instead of the fixed ``pause_s`` before a retry; the kept verdicts count
    the waits and their seconds, and a busy kept pass whose wait ran out says so. Every
    runner's stats carry the pass verdict merged with its own round spread. ``threads``: the
    CPUs the measured work keeps busy (default: torch's intra-op count; a backend that runs
    on an inter-op pool or its own threads passes its own count)."""
    steady_allocator()  # freed tensors stay in the heap: no page faults inside timed calls
    policy = config.policy
    ref_threads = torch.get_num_threads()
    threads = int(threads) if threads else ref_threads
    cpu_model = device_fingerprint(threads).cpu_model
    best: tuple[float, list[TimingStats], QuietWait | None] | None = None
    waits: list[QuietWait] = []
    for attempt in range(1 + max(policy.retries, 0)):
        wait = None
        if policy.wait_quiet_s > 0:  # 0: exactly the fixed pause of old
            say = config.notify or say_line
            wait = wait_for_quiet(
                policy.wait_quiet_s, threads, clock, policy, say=say, cpu_model=cpu_model
            )
            waits.append(wait)
        elif attempt:
            time.sleep(policy.pause_s)
        stats, ref_rounds, activity = _one_pass(
            count, visit, config, clock, progress, config.seed + attempt
        )
        baseline = (
            quiet_baseline(cpu_model, ref_threads, clock, min(ref_rounds)) if ref_rounds else None
        )
        spreads = [round_spread(s.all_round_medians_ms) for s in stats]
        verdict = assess(activity, ref_rounds, baseline, spreads, threads, policy)
        verdict = replace(verdict, attempts=attempt + 1)
        per_runner = []
        for s, sp in zip(stats, spreads):
            reasons = _reasons(verdict, sp, policy)
            own = replace(verdict, round_spread=sp, reasons=reasons, stable=not reasons)
            per_runner.append(replace(s, stability=own))
        if best is None or verdict.badness() < best[0]:
            best = (verdict.badness(), per_runner, wait)
        if _settled(verdict, spreads, policy):
            break
    assert best is not None
    waited_s = sum((w.waited_s for w in waits), 0.0)
    kept_wait = best[2]
    return [
        replace(
            s,
            stability=replace(
                s.stability,
                attempts=attempt + 1,
                reasons=_with_wait(s.stability.reasons, kept_wait),
                waits=len(waits),
                waited_s=waited_s,
            ),
        )
        for s in best[1]
    ]


def _with_wait(reasons: tuple[str, ...], wait: QuietWait | None) -> tuple[str, ...]:
    """A busy pass measured after a wait that timed out says so: the host was not quiet for
    the whole wait, so the figure is as good as this host gets now. Only where the host
    itself was found busy (a wide round spread alone is the runner's own)."""
    host = [r for r in reasons if not r.startswith("round medians spread")]
    if wait is None or wait.quiet or not host:
        return reasons
    return (*reasons, wait.reason)


def _settled(verdict: Stability, spreads: Sequence[float], policy: NoisePolicy) -> bool:
    """Whether a pass needs no retry: no host-level reason (reference kernel, other
    processes, steal) and at most a quarter of the runners with a wide round spread (among
    a thousand tiny table entries a few always spread; they carry their own flag)."""
    host = [r for r in verdict.reasons if not r.startswith("round medians spread")]
    wide = sum(1 for sp in spreads if sp > policy.max_round_spread)
    return not host and wide <= 0.25 * max(len(spreads), 1)


def _reasons(verdict: Stability, spread: float, policy: NoisePolicy) -> tuple[str, ...]:
    """The pass's reasons, with the round-spread reason about this runner rather than the
    worst one."""
    own = [r for r in verdict.reasons if not r.startswith("round medians spread")]
    if spread > policy.max_round_spread:
        own.append(
            f"round medians spread {100 * spread:.0f}% (> {100 * policy.max_round_spread:.0f}%)"
        )
    return tuple(own)
