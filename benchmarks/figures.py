"""Figures with their stability and host, for benchmarks whose numbers come from the timing
harness, and the BENCHMARKS.md block that lists them (one block per host).

A figure is a printed number (``97% within +-10%, MAPE 3.1%, tau 0.95``) plus the noise verdict
of the measurements behind it (:class:`~nasforge.hardware.noise.Stability`) and the host it was
measured on (:func:`goals.host`: CPU model, logical CPUs, kernel ISA, load then). The verdict
comes from the harness, never from a whole-run load-average rule:

* a latency table's validation: the :class:`~nasforge.hardware.validate.ValidationReport`'s
  ``stability`` (its measurements' verdicts pooled by
  :func:`~nasforge.hardware.noise.pool_verdicts`), merged with the table's
  ``build_stability`` when that says the build ran on a busy host (:func:`validate`);
* a stretch not timed by the harness (predict speed, a build's wall time): what other
  processes and the hypervisor took meanwhile (:func:`activity_stability`).

Scripts in this folder import it as ``from figures import Ledger, validate``.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from goals import goal_line, host, host_record

from nasforge.hardware.noise import (
    UNSTABLE,
    HostActivity,
    HostSample,
    Stability,
    assess,
    pool_verdicts,
)
from nasforge.hardware.table import LatencyTable
from nasforge.hardware.timing import LatencyMeasurement, TimingConfig
from nasforge.hardware.validate import ValidationReport, validate_table
from nasforge.space import SearchSpace

#: how :func:`nasforge.hardware.noise.assess` words a model's own round spread (the other
#: reasons are about the host and shared by a whole pass)
_SPREAD_REASON = "round medians spread"
#: one model's own spread, e.g. ``round medians spread 43% (> 5%)``
_ONE_MODEL_SPREAD = re.compile(rf"{_SPREAD_REASON} \d+%")


@dataclass(frozen=True)
class Figure:
    """One printed number with its verdict and the host it was measured on."""

    name: str
    text: str
    stability: Stability
    host: str


@dataclass
class Ledger:
    """What a benchmark run measured: its figures, its goals and the JSON of both.

    ``goals`` holds ``(name, met, measured, target, unstable)``, the arguments of
    :func:`goals.goal_line`, printed together at the end of the run.
    """

    figures: list[Figure] = field(default_factory=list)
    goals: list[tuple[str, bool, str, str, bool]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def figure(self, name: str, text: str, stability: Stability, **values: Any) -> None:
        """Record and print a figure with its verdict and host; ``values`` go to the JSON."""
        fig = Figure(name, text, stability, host())
        self.figures.append(fig)
        self.results.setdefault("figures", []).append(
            {"name": name, "text": text, "stability": stability.to_dict(), "host": fig.host}
            | values
        )
        print(f"  figure {name}: {text} [{brief(stability)}]")

    def goal(self, name: str, met: bool, measured: str, target: str, unstable: bool) -> None:
        """Record a goal; :meth:`goal_lines` prints it with the others."""
        self.goals.append((name, met, measured, target, unstable))

    def goal_lines(self) -> list[str]:
        """The GOAL line of every recorded goal (the host and load as of now)."""
        return [goal_line(*g) for g in self.goals]


def brief(stab: Stability) -> str:
    """:attr:`Stability.label` with the per-model reasons folded: ``stable``, or ``unstable:
    host busy (<host reasons>; rounds spread on k model(s), up to x%; table built on a busy
    host)``. The full reasons stay in the JSON."""
    if stab.stable:
        return "stable"
    shown: list[str] = []
    spread = 0
    build = False
    for r in stab.reasons:
        if r.startswith("table build: "):
            build = True
        elif _ONE_MODEL_SPREAD.match(r):
            spread += 1
        elif r not in shown:
            shown.append(r)
    if spread:
        worst = "" if math.isnan(stab.round_spread) else f", up to {stab.round_spread:.0%}"
        shown.append(f"rounds spread on {spread} model(s){worst}")
    if build:
        shown.append("table built on a busy host")
    return f"{UNSTABLE} ({'; '.join(shown)})"


# -- verdicts --------------------------------------------------------------------------------------
def as_stability(value: Any) -> Stability | None:
    """A :class:`Stability` from a Stability, a dict with ``stable`` / ``reasons`` (e.g.
    ``LatencyTable.build_stability``), or ``None`` for anything empty or unknown."""
    if isinstance(value, Stability):
        return value
    if isinstance(value, dict) and "stable" in value:
        return Stability.from_dict(value)
    return None


def pooled_stability(measurements: Sequence[LatencyMeasurement]) -> Stability:
    """One verdict for a figure computed from many measurements
    (:func:`nasforge.hardware.noise.pool_verdicts`); no measurement is no verdict."""
    if not measurements:
        return Stability(stable=False, reasons=("no measurement recorded a verdict",))
    return pool_verdicts([m.stability for m in measurements])


def activity_stability(start: HostSample, threads: int) -> Stability:
    """The verdict on a stretch the harness did not time: what other processes (and the
    hypervisor) took since ``start`` from the CPUs ``threads`` threads need."""
    return assess(HostActivity.between(start, HostSample.take()), [], None, [], threads)


def build_stability(table: LatencyTable, start: HostSample | None = None) -> Stability | None:
    """The table's own ``build_stability`` where the builder records one; else, for a table
    built in this run since ``start``, what other processes did meanwhile; else ``None``."""
    own = as_stability(getattr(table, "build_stability", None))
    if own is not None:
        return own
    return activity_stability(start, table.backend.threads) if start is not None else None


def validate(
    table: LatencyTable, space: SearchSpace, n: int, seed: int, timing: TimingConfig
) -> tuple[ValidationReport, Stability]:
    """Validate ``table`` on ``n`` seeded archs (:func:`validate_table`) and give the figure's
    verdict: the report's (its measurements' verdicts, pooled), merged with an unstable
    build."""
    report = validate_table(table, space, n=n, seed=seed, timing=timing)
    stab = report.stability
    built = build_stability(table)
    if built is not None and not built.stable:
        stab = stab.merge(replace(built, reasons=tuple(f"table build: {r}" for r in built.reasons)))
    return report, stab


# -- the BENCHMARKS.md block -----------------------------------------------------------------------
def commit() -> str:
    """``git describe --always --dirty`` of this checkout (``unknown`` without git)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def markdown_block(led: Ledger, lines: Sequence[str], context: dict[str, Any], command: str) -> str:
    """A BENCHMARKS.md block for this host: a heading naming the CPU and date, the host line
    (CPU, logical CPUs, kernel ISA, allocator, libraries, load at start and end), the commit and
    command, a table of every figure with its stability and load, and the GOAL lines.

    ``context`` holds ``date``, ``commit``, ``load_start``, ``load_end``, ``n`` (archs per
    check) and ``minutes`` (the run's duration).
    """
    rec = host_record()
    isa = " ".join(rec["isa"]) or "no AVX2"

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out = [
        f"### {rec['cpu_model']}, {rec['logical_cpus']} logical CPUs — {context['date']}",
        "",
        f"Host: {rec['cpu_model']}, {rec['logical_cpus']} logical CPUs, ISA {isa}, allocator "
        f"{rec['allocator']}, {rec['system']}, torch {rec['torch']}, onnxruntime "
        f"{rec['onnxruntime']}. Load average at start {context['load_start']}, at end "
        f"{context['load_end']}. Commit `{context['commit']}`. Command: `{command}` "
        f"({context['n']} archs per check, {context['minutes']:.1f} min).",
        "",
        "| figure | measured | stability | load |",
        "| --- | --- | --- | --- |",
    ]
    for f in led.figures:
        load = f.stability.load1
        shown = "-" if load != load else f"{load:.1f}"  # nan: not recorded
        out.append(f"| {cell(f.name)} | {cell(f.text)} | {cell(brief(f.stability))} | {shown} |")
    out += ["", "```", *lines, "```", ""]
    return "\n".join(out)
