"""What the host does while a measurement runs, and how fast it is when quiet: the host
counters (:class:`HostSample`, :class:`HostActivity`), the reference kernel and this host's
quiet baseline for it (a small JSON cache). The verdict built on them is in
:mod:`nasforge.hardware.noise`, which re-exports every name here.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


# -- what the host did meanwhile ------------------------------------------------------------------
def _proc_stat() -> tuple[int, int, int] | None:
    """(busy, total, steal) jiffies over all CPUs, or ``None`` off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    v = [int(x) for x in first[1:]]
    v += [0] * (8 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait + steal, steal


def _load1() -> float:
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return float("nan")


@dataclass(frozen=True)
class HostSample:
    """One snapshot of the host's CPU counters and this process's CPU time."""

    wall_s: float
    own_cpu_s: float
    stat: tuple[int, int, int] | None
    load1: float

    @classmethod
    def take(cls) -> HostSample:
        t = os.times()
        return cls(time.monotonic(), t.user + t.system, _proc_stat(), _load1())


@dataclass(frozen=True)
class HostActivity:
    """What the host did between two :class:`HostSample` snapshots.

    ``others_cpus``: CPUs' worth of time other processes used (0 .. ``cpus``; ``nan`` when
    the counters are unavailable or the interval is under 0.2 s); ``steal``: fraction of all
    CPU time the hypervisor gave to other guests; ``load1``: the 1-minute load average at the
    end (recorded, not used for the verdict).
    """

    seconds: float
    cpus: int
    others_cpus: float
    steal: float
    load1: float

    @classmethod
    def between(cls, a: HostSample, b: HostSample) -> HostActivity:
        cpus = os.cpu_count() or 1
        secs = max(b.wall_s - a.wall_s, 0.0)
        others = steal = float("nan")
        if a.stat is not None and b.stat is not None and secs >= 0.2:
            hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
            busy_s = (b.stat[0] - a.stat[0]) / hz
            total = max(b.stat[1] - a.stat[1], 1)
            others = min(max(busy_s - (b.own_cpu_s - a.own_cpu_s), 0.0) / secs, float(cpus))
            steal = (b.stat[2] - a.stat[2]) / total
        return cls(secs, cpus, others, steal, b.load1)


# -- the reference kernel ------------------------------------------------------------------------
def reference_kernel() -> Any:
    """A fixed, compute-bound call (a 3x3 convolution, 48 channels, 32x32, batch 1; about
    0.5 ms on one core) timed between rounds on the measurement's clock and threads; the
    harness keeps the fastest of a few calls per round (the first call after a model has
    run pays for cold caches)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 48, 32, 32, generator=gen)
    w = torch.randn(48, 48, 3, 3, generator=gen)
    conv = torch.nn.functional.conv2d

    def call() -> Any:
        with torch.inference_mode():
            return conv(x, w, padding=1)

    return call


def _cache_path() -> Path:
    root = os.environ.get("NASFORGE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nasforge"
    )
    return Path(root) / "reference_kernel.json"


def _baseline_key(cpu_model: str, threads: int, clock: str) -> str:
    import torch

    return f"{cpu_model}|{threads}t|{clock}|torch {torch.__version__}"


def quiet_baseline(cpu_model: str, threads: int, clock: str, seen_ms: float) -> float:
    """This host's quiet reference time: the fastest ever seen for (CPU model, threads,
    clock), updated with ``seen_ms``. The cache is advisory: an unreadable or unwritable
    file (read-only home, a bad edit) is ignored and ``seen_ms`` returned."""
    path = _cache_path()
    key = _baseline_key(cpu_model, threads, clock)
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    old = data.get(key)
    best = seen_ms
    if isinstance(old, (int, float)) and math.isfinite(old) and old > 0:
        best = min(float(old), seen_ms)
    if best != old:
        data[key] = best
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass
    return best


def stored_baseline(cpu_model: str, threads: int, clock: str) -> float | None:
    """This host's quiet reference time as the cache holds it, without updating it
    (``None``: none measured yet, or the cache is unreadable)."""
    try:
        path = _cache_path()
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return None
    v = data.get(_baseline_key(cpu_model, threads, clock)) if isinstance(data, dict) else None
    if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
        return float(v)
    return None


__all__ = [
    "HostActivity",
    "HostSample",
    "quiet_baseline",
    "reference_kernel",
    "stored_baseline",
]
