"""The one way a benchmark states a goal (DEVELOPERS: one line per goal, host included).

``GOAL <short name>: met|NOT MET (<measured> vs <target>) [host: <cpu model>]``; a figure the
harness marked unstable (busy host) is printed as ``NOT MET`` with ``unstable`` in the measured
part, never as met. Scripts in this folder import it as ``from goals import goal``.
"""

from __future__ import annotations

import functools
import os

from nasforge.hardware import device_fingerprint


@functools.cache
def host() -> str:
    """CPU model, logical CPUs and 1-minute load, e.g. ``AMD EPYC, 2 CPUs, load 0.3``."""
    fp = device_fingerprint()
    return f"{fp.cpu_model}, {fp.logical_cpus} CPUs, load {os.getloadavg()[0]:.1f}"


def busy(loads: list[float], own_threads: int = 1) -> bool:
    """Whether other work shared the cores: a 1-minute load average (sampled at start and at
    end) above this benchmark's own threads by more than half the logical CPUs."""
    return max(loads) - own_threads > 0.5 * (os.cpu_count() or 1)


def goal(name: str, met: bool, measured: str, target: str, unstable: bool = False) -> bool:
    """Print the goal line and return whether it was met (an unstable figure never is)."""
    ok = met and not unstable
    note = " unstable: host busy" if unstable else ""
    print(
        f"GOAL {name}: {'met' if ok else 'NOT MET'} ({measured}{note} vs {target}) [host: {host()}]"
    )
    return ok
