"""Measured refinement: correct a latency table's bias by measuring the chosen subnet.

A latency table predicts with a bias that depends on the host and the moment it was built (a
table built on a busy host over-predicted by ~20% in the issue-13 benchmark; on another host
it may under-predict), so a search on predictions alone lands outside the wanted window
``[(1 - window) * target, target]`` on any host but the one the table matched. The remedy
here is "measure in the loop", a few rounds at most:

1. search (predictors only) under the limit ``L1 = target * (1 - margin)``: aim at the middle
   of the window;
2. measure the chosen arch; a measurement the timing harness flags unstable is measured
   once more and the second figure is used, with its flag (never silently);
3. if the measurement is inside the window, stop; else the next limit is
   ``aim * predicted / measured``: the arch's measured/predicted ratio corrects the table's
   bias for archs like this one. It is clipped to ``[aim / MAX_CORRECTION, aim *
   MAX_CORRECTION]`` and kept strictly between the predicted latencies of the archs already
   measured below the window (0 while none was) and above the target: their midpoint when
   the ratio points outside that bracket (archs whose ratio differs from the last one's);
4. the search runs again (it is cheap); a search that returns an arch already measured
   stops the refinement (nothing new to learn).

The result is the best measured arch not above the target: the highest predicted accuracy,
where accuracies within ``tolerance`` of the best (the accuracy predictor's cross-validated
error: it cannot tell them apart) count as equal and, among those, one measured inside the
window wins (then the higher predicted accuracy, then the slower); or, when every measured
arch is above the target, the fastest measured one with ``feasible=False``. Every round is
recorded (:class:`RefineRound`).

This module knows nothing of spaces or predictors: :func:`refine_limit` takes the search as a
callable (limit -> a candidate with ``arch``, ``predicted_latency_ms`` and
``predicted_acc``) and the measurement as a callable (arch -> ms or :class:`Measured`);
:func:`nasforge.oneshot.ofa.specialize.specialize` wires both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Generic, Protocol, TypeVar

from nasforge.errors import NasforgeError
from nasforge.space import Arch

#: the first limit is ``target * (1 - margin)``; a later one moves at most this factor from it
MAX_CORRECTION = 2.0
#: the most measured rounds a config may ask
MAX_REFINE_ROUNDS = 10
#: why the refinement stopped: a measurement inside the window, the rounds spent, or the
#: search returned an arch measured before
STOPS = ("inside", "rounds", "repeat")


@dataclass(frozen=True)
class Measured:
    """One measured latency as a ``measure_ms`` callable may return it.

    Attributes:
        ms: the latency in ms (the statistic the latency table predicts).
        unstable: the timing harness's noise verdict said the host was too busy to trust it.
        stability: the verdict itself (``Stability.to_dict()``), kept on the round's record.
    """

    ms: float
    unstable: bool = False
    stability: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, value: float | Measured) -> Measured:
        """``value`` as a :class:`Measured` (a plain number is a stable measurement)."""
        return value if isinstance(value, Measured) else cls(float(value))


@dataclass(frozen=True)
class RefineRound:
    """One measured round of the refinement.

    Attributes:
        round: 1, 2, ...
        limit_ms: the predicted-latency limit the search ran under.
        arch_key: the arch the search chose; arch: its values (``Arch.to_dict()``).
        predicted_ms: its predicted latency; predicted_acc: its predicted accuracy.
        measured_ms: its measured latency (the retry's when the first was unstable).
        unstable: whether that measurement stayed unstable.
        retried: whether it was measured a second time because the first was unstable.
        first_measured_ms: the first (unstable) figure when retried, else ``None``.
        inside: ``measured_ms`` in ``[(1 - window) * target, target]``.
        stability: the harness's verdict of the used measurement (``None`` when the
            callable returned a plain number).
        search_seconds, measure_seconds: wall-clock seconds of the round's two parts.
    """

    round: int
    limit_ms: float
    arch_key: str
    arch: dict[str, Any]
    predicted_ms: float
    predicted_acc: float
    measured_ms: float
    unstable: bool
    retried: bool
    first_measured_ms: float | None
    inside: bool
    stability: dict[str, Any] | None
    search_seconds: float
    measure_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


class Candidate(Protocol):
    """What a search returns: the chosen arch and its two predictions."""

    @property
    def arch(self) -> Arch: ...  # noqa: D102

    @property
    def predicted_latency_ms(self) -> float: ...  # noqa: D102

    @property
    def predicted_acc(self) -> float: ...  # noqa: D102


C = TypeVar("C", bound=Candidate)


@dataclass
class Refinement(Generic[C]):
    """The outcome of :func:`refine_limit`.

    Attributes:
        chosen: the chosen round's search result; measured: its measurement.
        rounds: every measured round, in order.
        searches: every search result (the rounds', plus a final one that repeated an arch).
        stop: why it stopped (one of :data:`STOPS`).
        feasible: the chosen arch was measured not above the target.
    """

    chosen: C
    measured: Measured
    rounds: list[RefineRound]
    searches: list[C]
    stop: str
    feasible: bool


def measure_once(measure_ms: Callable[[Arch], float | Measured], arch: Arch) -> Measured:
    """``measure_ms(arch)`` as a :class:`Measured`, checked.

    Raises:
        NasforgeError: the figure is not a positive finite number (names the arch).
    """
    m = Measured.of(measure_ms(arch))
    if not (math.isfinite(m.ms) and m.ms > 0):
        raise NasforgeError(f"measure_ms: arch {arch.key} measured {m.ms!r} ms")
    return m


def refine_limit(
    search: Callable[[float], C],
    measure_ms: Callable[[Arch], float | Measured],
    target_ms: float,
    margin: float,
    window: float,
    rounds: int,
    tolerance: float = 0.0,
) -> Refinement[C]:
    """Search under a limit, measure the chosen arch, correct the limit; ``rounds`` at most.

    See the module docstring for the rule.

    Args:
        search: the limit in (predicted) ms -> the search's choice under it; deterministic
            and cheap (predictors only), called once per round.
        measure_ms: an arch's measured latency in ms (a number, or :class:`Measured` with the
            harness's noise verdict); called once per new arch, twice when unstable.
        target_ms: the hard limit on the MEASURED latency (> 0).
        margin: the first limit is ``target_ms * (1 - margin)`` (the aim), ``0 <= margin <
            window``.
        window: "inside" is ``[(1 - window) * target_ms, target_ms]``, ``0 < window < 1``.
        rounds: measured rounds at most (>= 1).
        tolerance: predicted accuracies this close to the best measured-feasible one count
            as equal when choosing (>= 0; e.g. the predictor's cross-validated MAE).

    Raises:
        ValueError: bad numbers (the config layer checks them first, naming the field).
        NasforgeError: ``measure_ms`` gave a figure that is not a positive number.
    """
    if not (math.isfinite(target_ms) and target_ms > 0):
        raise ValueError(f"target_ms: expected a positive number, got {target_ms!r}")
    if not (0 < window < 1 and 0 <= margin < window and rounds >= 1 and tolerance >= 0):
        raise ValueError(f"bad refinement settings: margin {margin}, window {window}, {rounds}")
    aim = target_ms * (1 - margin)
    low = target_ms * (1 - window)
    limit = aim
    done: list[RefineRound] = []
    searches: list[C] = []
    measured: dict[str, tuple[C, Measured]] = {}
    below, above = 0.0, math.inf  # predicted ms of archs measured below the window / above
    stop = "rounds"
    for k in range(1, rounds + 1):
        t0 = time.perf_counter()
        cand = search(limit)
        search_s = time.perf_counter() - t0
        searches.append(cand)
        if cand.arch.key in measured:
            stop = "repeat"
            break
        t0 = time.perf_counter()
        first = measure_once(measure_ms, cand.arch)
        m = measure_once(measure_ms, cand.arch) if first.unstable else first
        measured[cand.arch.key] = (cand, m)
        inside = low <= m.ms <= target_ms
        predicted = float(cand.predicted_latency_ms)
        done.append(
            RefineRound(
                round=k,
                limit_ms=float(limit),
                arch_key=cand.arch.key,
                arch=cand.arch.to_dict(),
                predicted_ms=predicted,
                predicted_acc=float(cand.predicted_acc),
                measured_ms=m.ms,
                unstable=m.unstable,
                retried=first.unstable,
                first_measured_ms=first.ms if first.unstable else None,
                inside=inside,
                stability=None if m.stability is None else dict(m.stability),
                search_seconds=search_s,
                measure_seconds=time.perf_counter() - t0,
            )
        )
        if inside:
            stop = "inside"
            break
        if m.ms > target_ms:
            above = min(above, predicted)
        else:
            below = max(below, predicted)
        limit = _next_limit(aim, predicted, m.ms, below, above)
    chosen, m_chosen, feasible = _best(list(measured.values()), target_ms, low, tolerance)
    return Refinement(chosen, m_chosen, done, searches, stop, feasible)


def _next_limit(aim: float, predicted: float, measured: float, below: float, above: float) -> float:
    """``aim * predicted / measured`` clipped to the sane range, then kept inside the bracket
    ``(below, above)`` of predicted latencies measured too fast (0: none yet) / too slow once
    an arch was measured above the target."""
    nxt = aim * predicted / measured if predicted > 0 else aim
    nxt = min(max(nxt, aim / MAX_CORRECTION), aim * MAX_CORRECTION)
    if below < above < math.inf and not below < nxt < above:
        nxt = (below + above) / 2
    return nxt


def _best(
    measured: list[tuple[C, Measured]], target_ms: float, low: float, tolerance: float
) -> tuple[C, Measured, bool]:
    """Among archs measured not above the target, those within ``tolerance`` of the highest
    predicted accuracy; of them one measured at or above ``low`` (inside the window) first,
    then the higher predicted accuracy, then the slower. Else the fastest measured, not
    feasible."""
    ok = [(c, m) for c, m in measured if m.ms <= target_ms]
    if ok:
        top = max(float(c.predicted_acc) for c, _ in ok)
        near = [(c, m) for c, m in ok if float(c.predicted_acc) >= top - tolerance]
        c, m = max(near, key=lambda e: (e[1].ms >= low, float(e[0].predicted_acc), e[1].ms))
        return c, m, True
    c, m = min(measured, key=lambda e: e[1].ms)
    return c, m, False
