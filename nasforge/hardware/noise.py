"""Noise defence: is the host quiet enough to trust a timing, and how sure is a speed-up?

A latency or a speed-up measured while other processes share the cores is not a property of
the model but of the moment (issue 10: the same code on the same host gave 0% to 90% of
predictions within +-10%, and a compression speed-up was printed 10x too high). The timing
harness (:mod:`nasforge.hardware.timing`) therefore watches the host while it measures and
attaches a :class:`Stability` verdict to every figure:

* **other processes' CPU use** during the measurement, from ``/proc/stat`` (all CPUs' busy
  time) minus this process's own CPU time (``os.times``), and the CPU time the hypervisor
  stole (``steal``). The 1-minute load average is recorded beside it but never decides: it
  lags by a minute and counts this process too.
* **a reference kernel** (a fixed convolution, timed a few calls per round on the same
  clock and threads as the measurement): its spread between rounds shows bursts *during* the
  measurement, and its ratio to this host's quiet baseline (the fastest it was ever seen on
  this CPU model, thread count and clock, kept in a small JSON cache) shows a slow-down that
  lasted the whole measurement (a burner on a sibling core, a throttled clock, a noisy
  neighbour VM);
* **the run-to-run spread** of each measured model's round medians.

A verdict is *unstable* when any of them says so; the harness then measures again
(:attr:`NoisePolicy.retries`) and, if it stays unstable, the figure carries the reasons
(``unstable: host busy (...)``) to the console, the card and the report instead of being
printed as a fact.

On shared cloud VMs a noisy neighbour comes and goes in spells of minutes (the reference
kernel 1.1-1.6x its quiet time for minutes on our AMD and Intel hosts, then quiet); a
one-second pause before a retry cannot outlast a spell. With
:attr:`NoisePolicy.wait_quiet_s` > 0 the harness first waits up to that long for a quiet host
(:func:`wait_for_quiet`: the same thresholds as the verdict, a few polls in a row) before a
pass and before each retry, then measures either way; the verdict records the wait
(``waits``, ``waited_s``) and, when the pass came out busy after a wait that ran out, says
the host stayed busy for the whole wait.

Speed-ups are never two medians taken minutes apart: :func:`paired_speedup` takes the rounds
of an interleaved pass (A B A B ..., each round visiting every model), forms one ratio per
round, and gives the geometric mean with a Student-t 95% confidence interval on the log
ratios. A bursty host widens the interval instead of moving the point estimate silently.

Written by hand because no maintained library does this for in-process inference timing:
``pyperf`` (the closest) tunes and checks a whole benchmark process (``pyperf system
tune``, CPU isolation) and reports spread, but does not watch other tenants during one
measurement or compare two callables round by round.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from nasforge.hardware.hostwatch import (
    HostActivity,
    HostSample,
    quiet_baseline,
    reference_kernel,
    stored_baseline,
)

log = logging.getLogger("nasforge.hardware")

#: the figure a :class:`Stability` prints when its verdict is unstable
UNSTABLE = "unstable: host busy"


@dataclass(frozen=True)
class NoisePolicy:
    """When a measurement counts as unstable, and how often it is retried.

    Attributes:
        max_reference_slowdown: the reference kernel may run at most this fraction slower
            than this host's quiet baseline (0.15: 15%).
        max_reference_spread: the reference kernel's round medians may differ by at most
            this fraction ((max - min) / min).
        max_round_spread: a model's round medians (all rounds, after re-measuring strays)
            may sit at most this fraction from their median, as a median absolute deviation
            (:func:`round_spread`).
        max_others_cpus: other processes may use at most this many CPUs' worth of time
            beyond the CPUs the measurement leaves free (``cpus - threads``) while it runs;
            on a 2-CPU host timed on 1 thread, up to 1.25 CPUs (see :func:`assess`).
        max_steal: the hypervisor may steal at most this fraction of the CPU time.
        max_ci_halfwidth: a speed-up whose 95% interval is wider than this fraction of the
            estimate on either side is unstable.
        max_drift: a table's validation re-measures the table's own calibration models; when
            their median time now differs from build time by more than this fraction (0.05:
            5%, half the +-10% window a prediction is judged by), the machine is not in the
            state the table was built in and the validation compares two states, not the
            table with the machine: it is unstable.
        retries: whole re-measurements when a pass comes out unstable (the most stable pass
            is kept).
        pause_s: seconds to wait before a retry (lets a burst pass) when ``wait_quiet_s``
            is 0.
        wait_quiet_s: 0 (the default) measures at once and pauses ``pause_s`` before a
            retry. Above 0, the harness waits up to this many seconds for a quiet host
            (:func:`wait_for_quiet`) before the first pass and before each retry instead,
            then measures either way (for hosts whose noisy neighbour comes in spells of
            minutes).
        quiet_poll_s: seconds one poll of that wait watches the host.
        quiet_polls: polls in a row the host must pass to count as quiet.
    """

    max_reference_slowdown: float = 0.15
    max_reference_spread: float = 0.10
    max_round_spread: float = 0.05
    max_others_cpus: float = 0.25
    max_steal: float = 0.05
    max_ci_halfwidth: float = 0.10
    max_drift: float = 0.05
    retries: int = 1
    pause_s: float = 1.0
    wait_quiet_s: float = 0.0
    quiet_poll_s: float = 1.0
    quiet_polls: int = 2

    def __post_init__(self) -> None:
        for name in ("wait_quiet_s", "quiet_poll_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"noise policy: {name} must be seconds >= 0, not {v!r}")
        if self.quiet_polls < 1:
            raise ValueError(f"noise policy: quiet_polls must be >= 1, not {self.quiet_polls!r}")


DEFAULT_POLICY: NoisePolicy = NoisePolicy()


# -- the verdict -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stability:
    """The noise verdict of one measurement (or one pass over several models).

    ``stable`` is ``False`` when any reason was found; ``reasons`` says which, in words a
    user can act on. The numbers are kept for the card and the report: ``reference_ratio``
    (reference kernel now / quiet baseline; ``nan`` without a reference), ``reference_spread``
    ((max - min) / min of its round medians), ``round_spread`` (the worst model's round
    spread), ``others_cpus``, ``steal``, ``load1``, ``cpus`` and ``attempts`` (passes
    measured, retries included).
    """

    stable: bool = True
    reasons: tuple[str, ...] = ()
    reference_ratio: float = float("nan")
    reference_spread: float = float("nan")
    round_spread: float = float("nan")
    others_cpus: float = float("nan")
    steal: float = float("nan")
    load1: float = float("nan")
    cpus: int = 0
    attempts: int = 1
    waits: int = 0
    waited_s: float = 0.0

    @property
    def label(self) -> str:
        """``stable``, or ``unstable: host busy (<reasons>)``."""
        return "stable" if self.stable else f"{UNSTABLE} ({'; '.join(self.reasons)})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Stability:
        if not d:
            return cls()
        known = set(cls.__dataclass_fields__)
        vals: dict[str, Any] = {
            k: (float("nan") if v is None else v) for k, v in d.items() if k in known
        }
        vals["reasons"] = tuple(vals.get("reasons", ()))
        return cls(**vals)

    def merge(self, other: Stability) -> Stability:
        """Both verdicts at once: unstable if either is; reasons of both; worst numbers."""
        reasons = tuple(dict.fromkeys(self.reasons + other.reasons))
        return Stability(
            stable=self.stable and other.stable,
            reasons=reasons,
            reference_ratio=_worst(self.reference_ratio, other.reference_ratio),
            reference_spread=_worst(self.reference_spread, other.reference_spread),
            round_spread=_worst(self.round_spread, other.round_spread),
            others_cpus=_worst(self.others_cpus, other.others_cpus),
            steal=_worst(self.steal, other.steal),
            load1=_worst(self.load1, other.load1),
            cpus=max(self.cpus, other.cpus),
            attempts=max(self.attempts, other.attempts),
            waits=max(self.waits, other.waits),
            waited_s=max(self.waited_s, other.waited_s),
        )

    def badness(self) -> float:
        """A score to pick the least noisy of several passes (lower is better)."""
        parts = [
            len(self.reasons),
            _nz(self.reference_ratio - 1.0),
            _nz(self.reference_spread),
            _nz(self.round_spread),
        ]
        return float(parts[0] * 10 + sum(max(p, 0.0) for p in parts[1:]))


def _nz(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _worst(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return max(a, b)


def pool_verdicts(verdicts: Sequence[Stability], max_spread_fraction: float = 0.10) -> Stability:
    """One verdict for a figure computed from many measurements (e.g. a validation's
    prediction accuracy over 100 models).

    A host-level reason (reference kernel, other processes, steal) in any measurement makes
    the figure unstable: the whole pass was disturbed. A wide round spread is a property of
    one model's measurement; it makes the figure unstable only when more than
    ``max_spread_fraction`` of the measurements have it (one model out of a hundred with a
    6% spread does not move a within-10% fraction; a fifth of them does).
    """
    if not verdicts:
        return Stability()
    spread = "round medians spread"
    wide = [v for v in verdicts if any(r.startswith(spread) for r in v.reasons)]
    host = tuple(dict.fromkeys(r for v in verdicts for r in v.reasons if not r.startswith(spread)))
    reasons = list(host)
    if len(wide) > max_spread_fraction * len(verdicts):
        reasons.append(
            f"{len(wide)} of {len(verdicts)} measurements had round medians spread > their limit"
        )
    merged = verdicts[0]
    for v in verdicts[1:]:
        merged = merged.merge(v)
    return replace(merged, stable=not reasons, reasons=tuple(reasons))


def round_spread(round_medians: Sequence[float]) -> float:
    """How far a model's round medians sit from their median: the median absolute
    deviation over the median (0 with fewer than two rounds). Robust to the one round a
    burst hit (that round is re-measured by the harness); large when every round differs."""
    if len(round_medians) < 2:
        return 0.0
    mid = statistics.median(round_medians)
    if mid <= 0:
        return 0.0
    return statistics.median(abs(m - mid) for m in round_medians) / mid


def assess(
    activity: HostActivity | None,
    reference_rounds_ms: Sequence[float],
    baseline_ms: float | None,
    round_spreads: Sequence[float],
    threads: int,
    policy: NoisePolicy = DEFAULT_POLICY,
) -> Stability:
    """The verdict for one pass.

    Args:
        activity: what the host did during the pass (``None``: unknown).
        reference_rounds_ms: the reference kernel's fastest call per round (may be empty).
        baseline_ms: this host's quiet reference time (``None``: unknown).
        round_spreads: each measured model's :func:`round_spread`.
        threads: CPUs the measurement itself keeps busy.
        policy: the thresholds.

    Other processes' CPU use alone makes a pass unstable only when they took CPUs the
    measurement needs (``others_cpus > cpus - threads + max_others_cpus``); a busy sibling
    CPU that does not show in the reference kernel or the rounds is recorded, not held
    against the figure (on a 2-CPU host, one core running a burner while the measurement
    runs on the other).
    """
    reasons: list[str] = []
    ref_ratio = ref_spread = float("nan")
    if reference_rounds_ms:
        ref = statistics.median(reference_rounds_ms)
        lo = min(reference_rounds_ms)
        ref_spread = (max(reference_rounds_ms) - lo) / lo if lo > 0 else 0.0
        if ref_spread > policy.max_reference_spread:
            reasons.append(
                f"reference kernel varied {100 * ref_spread:.0f}% between rounds "
                f"(> {100 * policy.max_reference_spread:.0f}%)"
            )
        if baseline_ms is not None and baseline_ms > 0:
            ref_ratio = ref / baseline_ms
            if ref_ratio > 1 + policy.max_reference_slowdown:
                reasons.append(
                    f"reference kernel {ref_ratio:.2f}x as slow as on this host when quiet"
                )
    worst = max(round_spreads, default=float("nan"))
    if not math.isnan(worst) and worst > policy.max_round_spread:
        reasons.append(
            f"round medians spread {100 * worst:.0f}% (> {100 * policy.max_round_spread:.0f}%)"
        )
    others = steal = load1 = float("nan")
    cpus = os.cpu_count() or 1
    if activity is not None:
        others, steal, load1, cpus = (
            activity.others_cpus,
            activity.steal,
            activity.load1,
            activity.cpus,
        )
        free = cpus - threads
        if not math.isnan(others) and others > free + policy.max_others_cpus:
            reasons.append(
                f"other processes used {others:.1f} of {cpus} CPUs while {threads} were needed"
            )
        if not math.isnan(steal) and steal > policy.max_steal:
            reasons.append(f"hypervisor stole {100 * steal:.0f}% of CPU time")
    return Stability(
        stable=not reasons,
        reasons=tuple(reasons),
        reference_ratio=ref_ratio,
        reference_spread=ref_spread,
        round_spread=worst,
        others_cpus=others,
        steal=steal,
        load1=load1,
        cpus=cpus,
    )


# -- waiting for a quiet host -----------------------------------------------------------------
#: seconds between two progress lines of one wait (the first busy poll is always shown)
SAY_EVERY_S = 10.0


@dataclass(frozen=True)
class QuietWait:
    """What one :func:`wait_for_quiet` saw.

    ``quiet``: the host passed the thresholds for the required polls in a row (``False``: the
    wait was used up); ``waited_s``: seconds spent; ``polls``: polls taken;
    ``reference_ratio``: the reference kernel's last time over this host's quiet baseline
    (``nan`` when no baseline exists yet); ``others_cpus`` and ``steal``: the host counters of
    the last poll; ``reasons``: why the last poll was not quiet (empty when it was);
    ``max_wait_s``: the wait allowed.
    """

    quiet: bool
    waited_s: float
    polls: int
    reference_ratio: float = float("nan")
    others_cpus: float = float("nan")
    steal: float = float("nan")
    reasons: tuple[str, ...] = ()
    max_wait_s: float = 0.0

    @property
    def reason(self) -> str:
        """The reason a verdict carries when the wait timed out ("" when it did not)."""
        if self.quiet:
            return ""
        return f"host stayed busy for the whole {self.max_wait_s:g} s wait"

    def status(self) -> str:
        """``reference kernel 1.27x its quiet time, other processes 0.9 CPUs``."""
        parts = []
        if not math.isnan(self.reference_ratio):
            parts.append(f"reference kernel {self.reference_ratio:.2f}x its quiet time")
        if not math.isnan(self.others_cpus):
            parts.append(f"other processes {self.others_cpus:.1f} CPUs")
        if not math.isnan(self.steal) and self.steal > 0:
            parts.append(f"steal {100 * self.steal:.0f}%")
        return ", ".join(parts) or "no host counters"


def say_line(message: str) -> None:
    """The default progress sink: one line on stderr (a rich progress bar keeps it above
    itself) and the ``nasforge.hardware`` logger (a run's log handler picks it up)."""
    print(message, file=sys.stderr, flush=True)
    log.info(message)


def wait_for_quiet(
    max_wait_s: float,
    threads: int = 1,
    clock: str = "wall",
    policy: NoisePolicy = DEFAULT_POLICY,
    poll_s: float | None = None,
    consecutive: int | None = None,
    say: Callable[[str], None] | None = say_line,
    cpu_model: str | None = None,
) -> QuietWait:
    """Poll the host until it is quiet, at most ``max_wait_s`` seconds (plus one poll).

    Each poll sleeps ``poll_s`` (default ``policy.quiet_poll_s``) while the host counters
    run, and times the reference kernel (fastest of 5 calls, on ``clock`` and torch's current
    threads). The host is quiet when a poll passes the thresholds the verdict uses
    (:func:`~nasforge.hardware.noise.assess`: ``max_reference_slowdown`` against the quiet
    baseline, ``max_others_cpus`` given the ``threads`` the measurement needs, ``max_steal``)
    ``consecutive`` times in a row (default ``policy.quiet_polls``): so even a quiet host costs
    that many polls. When this host has no quiet baseline yet (first measurement on this CPU
    model, thread count and clock), the reference kernel cannot be judged and only the host
    counters decide; the baseline is read here, never written (the measurement does that).

    While the host is busy, ``say`` gets a line at the first busy poll and then every
    :data:`SAY_EVERY_S` s (``waiting for a quiet host: reference kernel 1.27x its quiet time,
    other processes 0.9 CPUs; 40 s of 300 s``) and one at the end; ``None`` keeps it silent.
    """
    import torch

    from nasforge.hardware.backend_base import Runner
    from nasforge.hardware.fingerprint import device_fingerprint

    poll = max(float(policy.quiet_poll_s if poll_s is None else poll_s), 0.0)
    need = max(int(policy.quiet_polls if consecutive is None else consecutive), 1)
    max_wait_s = max(float(max_wait_s), 0.0)
    ref_threads = torch.get_num_threads()
    model = cpu_model or device_fingerprint(ref_threads).cpu_model
    baseline = stored_baseline(model, ref_threads, clock)
    ref = Runner(reference_kernel(), "reference")
    pick = 1 if clock == "cpu" else 0
    ref.run(3)  # warm-up
    start = time.monotonic()
    polls = in_row = 0
    said_at = -math.inf
    busy_seen = False
    while True:
        a = HostSample.take()
        time.sleep(poll)
        ref_ms = min(ref.run(5)[pick])
        activity = HostActivity.between(a, HostSample.take())
        polls += 1
        v = assess(activity, [ref_ms], baseline, [], threads, policy)
        waited = time.monotonic() - start
        ratio, others, steal = v.reference_ratio, v.others_cpus, v.steal
        seen = QuietWait(v.stable, waited, polls, ratio, others, steal, v.reasons, max_wait_s)
        in_row = in_row + 1 if v.stable else 0
        if in_row >= need:
            if busy_seen and say is not None:
                say(f"host quiet after {waited:.0f} s ({seen.status()}); measuring")
            return seen
        if not v.stable:
            busy_seen = True
            if say is not None and waited - said_at >= SAY_EVERY_S:
                said_at = waited
                say(
                    f"waiting for a quiet host: {seen.status()}; "
                    f"{waited:.0f} s of {max_wait_s:.0f} s"
                )
        if waited >= max_wait_s:
            out = replace(seen, quiet=False)
            if say is not None:
                say(f"{out.reason} ({'; '.join(out.reasons) or out.status()}); measuring anyway")
            return out


# -- speed-ups with intervals ---------------------------------------------------------------------
@dataclass(frozen=True)
class Speedup:
    """How many times faster ``name`` runs than ``baseline`` (``> 1``: faster), with the 95%
    confidence interval ``[low, high]`` over paired rounds and the pass's verdict.

    ``stable`` is ``False`` when the pass was unstable or the interval is wider than the
    policy allows; :attr:`label` then says so instead of printing the ratio as fact.
    """

    name: str
    baseline: str
    ratio: float
    low: float
    high: float
    rounds: int
    stable: bool = True
    reasons: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``2.63x [2.51, 2.76]`` or ``2.63x [1.9, 3.6] unstable: host busy (...)``."""
        s = f"{self.ratio:.2f}x [{self.low:.2f}, {self.high:.2f}]"
        return s if self.stable else f"{s} {UNSTABLE} ({'; '.join(self.reasons)})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d

    def agrees_with(self, other: Speedup) -> bool:
        """Whether the two intervals overlap (the same speed-up within their stated
        uncertainty)."""
        return self.low <= other.high and other.low <= self.high


def paired_speedup(
    baseline_rounds_ms: Sequence[float],
    rounds_ms: Sequence[float],
    name: str = "",
    baseline: str = "",
    stability: Stability | None = None,
    policy: NoisePolicy = DEFAULT_POLICY,
) -> Speedup:
    """Speed-up from paired round medians of an interleaved pass: one ratio per round
    (``baseline / candidate``), geometric mean, Student-t 95% interval on the log ratios.

    Rounds must be paired (round ``i`` of both measured in the same interleaved pass).
    With one round the interval is the point. ``stability`` (the pass's verdict) is merged
    into the result; an interval wider than ``policy.max_ci_halfwidth`` on either side adds a
    reason.
    """
    from scipy.stats import t as student_t

    pairs = [(b, c) for b, c in zip(baseline_rounds_ms, rounds_ms) if b > 0 and c > 0]
    if not pairs:
        raise ValueError("paired_speedup: no paired rounds with positive times")
    logs = [math.log(b / c) for b, c in pairs]
    mean = statistics.fmean(logs)
    if len(logs) > 1:
        sem = statistics.stdev(logs) / math.sqrt(len(logs))
        half = float(student_t.ppf(0.975, len(logs) - 1)) * sem
    else:
        half = 0.0
    ratio, low, high = math.exp(mean), math.exp(mean - half), math.exp(mean + half)
    reasons = list(stability.reasons) if stability is not None else []
    if high / ratio - 1 > policy.max_ci_halfwidth or 1 - low / ratio > policy.max_ci_halfwidth:
        reasons.append(
            f"95% interval [{low:.2f}, {high:.2f}] wider than "
            f"+-{100 * policy.max_ci_halfwidth:.0f}%"
        )
    return Speedup(
        name=name,
        baseline=baseline,
        ratio=ratio,
        low=low,
        high=high,
        rounds=len(pairs),
        stable=not reasons,
        reasons=tuple(reasons),
    )


__all__ = [
    "DEFAULT_POLICY",
    "UNSTABLE",
    "HostActivity",
    "HostSample",
    "NoisePolicy",
    "QuietWait",
    "Speedup",
    "Stability",
    "assess",
    "paired_speedup",
    "pool_verdicts",
    "quiet_baseline",
    "reference_kernel",
    "round_spread",
    "say_line",
    "stored_baseline",
    "wait_for_quiet",
]
