"""A CPU burner for the noisy-host checks of the benchmarks (issue 10's third goal).

``with burner(cores=1):`` keeps ``cores`` logical CPUs busy with a pure-Python loop in child
processes, each pinned to one CPU (the highest-numbered ones, so the benchmark's own thread,
usually on CPU 0, shares the host the way another tenant would share it). The children stop
when the block ends, also on an exception, and they exit by themselves if the parent dies.

Scripts in this folder import it as ``from burner import burner``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from collections.abc import Iterator


def _spin(cpu: int | None, parent: int) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    n = 0
    while True:
        n += 1
        if n % 2_000_000 == 0 and os.getppid() != parent:  # orphaned: the benchmark died
            return


@contextlib.contextmanager
def burner(cores: int = 1) -> Iterator[list[int]]:
    """Busy-loop processes on ``cores`` CPUs for the block; yields the CPUs they run on."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    chosen: list[int | None] = list(cpus[-cores:]) if cpus else [None] * cores
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spin, args=(c, os.getpid()), daemon=True) for c in chosen]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let them reach the loop before anything is timed
    try:
        yield [c for c in chosen if c is not None]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=5)
