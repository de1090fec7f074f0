"""Speed-ups for the compression benchmark: paired passes, GOAL records, the burner check.

Every speed-up here comes from one interleaved pass of the timing harness
(:func:`~nasforge.compression.quantization.runtime.compare_speedups`: one ratio per round,
geometric mean, 95% interval, re-measured when wide or when the host is busy), never from two
medians. A goal records the harness's own verdict, so an unstable figure prints ``NOT MET
... unstable: host busy``. Scripts in this folder import it as ``from speedups import ...``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from nasforge.compression.quantization.runtime import (
    Latency,
    compare_speedups,
    paired,
    speedup_text,
    timing_config,
)
from nasforge.hardware.noise import Speedup

#: (short name, met, measured, target, unstable): one goal, printed at the end of a run
Goal = tuple[str, bool, str, str, bool]
Call = Callable[[], object]


def timing(
    runners: Mapping[str, Call],
    bs: int,
    threads: int,
    rounds: int,
    baseline: str,
    wait_quiet_s: float = 0.0,
) -> dict[str, Latency]:
    """All runners in one interleaved pass, each with its paired speed-up over ``baseline``
    (any other pair of the pass: :func:`vs`). ``rounds`` rounds of 10 calls at batch sizes
    up to 4, else 3 (batch 32 calls are long; keeps a full run under 10 minutes).
    ``wait_quiet_s`` (``--wait-quiet``): each pass first waits up to that long for a quiet
    host (:attr:`~nasforge.hardware.noise.NoisePolicy.wait_quiet_s`), its lines printed on
    stdout (a benchmark's log copies stdout); 0 measures at once."""
    repeats = 10 if bs <= 4 else 3
    cfg = replace(timing_config(rounds, repeats, warmup=3).waiting(wait_quiet_s), notify=print)
    return compare_speedups(runners, baseline, bs, threads, cfg)


def iv(s: Speedup) -> str:
    """``2.63x [2.51, 2.76]``: the ratio and its 95% interval, for GOAL lines (the goal line
    itself adds ``unstable: host busy`` when the figure is)."""
    return f"{s.ratio:.2f}x [{s.low:.2f}, {s.high:.2f}]"


def vs(t: Mapping[str, Latency], baseline: str, name: str) -> Speedup:
    """How many times faster ``name`` ran than ``baseline`` in the pass ``t``."""
    s = t[name].speedup
    if s is not None and s.baseline == baseline:
        return s
    return paired(t[baseline], t[name])


def speed_goal(
    goals: list[Goal], name: str, met: bool, sps: list[Speedup], measured: str, target: str
) -> None:
    """Append a speed-up goal to ``goals``: unstable when any of ``sps`` is (the caller
    prints their :func:`speedup_text`, reasons included, beside the figures)."""
    goals.append((name, met, measured, target, not all(s.stable for s in sps)))


def burner_check(
    files: Mapping[str, Path],
    runner: Callable[[Path, int], Call],
    baseline: str,
    threads: int,
    rounds: int,
    batch_sizes: tuple[int, ...] = (1, 32),
    wait_quiet_s: float = 0.0,
) -> Goal:
    """The speed-ups of every file over ``files[baseline]``, measured on the host as it is,
    then again with ``burner(cores=1)`` keeping one CPU busy (benchmarks/burner.py).

    ``runner(path, batch_size)`` makes one call of a file. Returns the goal: every figure
    under the burner agrees with the quiet one within their intervals
    (:meth:`Speedup.agrees_with`) or is marked unstable; a stable one that disagrees is
    silently wrong and fails it. The quiet run is the reference, so the goal is unstable
    when the quiet run itself was. The run as is waits up to ``wait_quiet_s`` for a quiet
    host before each pass; the burner run does not (it keeps the host busy on purpose).
    """
    from burner import burner

    def key_speedups(wait: float) -> dict[tuple[str, int], Speedup]:
        out: dict[tuple[str, int], Speedup] = {}
        for bs in batch_sizes:
            runners = {k: runner(p, bs) for k, p in files.items()}
            t = timing(runners, bs, threads, rounds, baseline, wait)
            out.update({(k, bs): vs(t, baseline, k) for k in files if k != baseline})
        return out

    quiet = key_speedups(wait_quiet_s)
    with burner(cores=1) as cpus:
        busy = key_speedups(0.0)
    print(f"\n[burner] speed-ups vs {baseline}, as is vs one CPU busy (burner on CPU {cpus}):")
    wrong, marked = [], 0
    for k, q in quiet.items():
        b = busy[k]
        agree = b.agrees_with(q)
        marked += not b.stable
        if b.stable and not agree:
            wrong.append(f"{k[0]} b{k[1]}")
        print(
            f"    {k[0]} b{k[1]}: quiet {speedup_text(q)}; burner {speedup_text(b)}; "
            f"{'agree' if agree else 'DISAGREE'}"
        )
    shaky = [f"{k[0]} b{k[1]}" for k, q in quiet.items() if not q.stable]
    if shaky:
        print(f"    the quiet run itself was unstable for {', '.join(shaky)}: no reference")
    return (
        "speed-ups under a burner agree with the quiet run within their intervals "
        "(or are marked unstable)",
        not wrong,
        f"{len(quiet) - len(wrong)}/{len(quiet)} agree or marked unstable ({marked} marked); "
        f"silently wrong: {', '.join(wrong) or 'none'}",
        "all",
        bool(shaky),
    )
