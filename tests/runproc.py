"""Helpers for tests that run `nasforge search` as real processes (locks, signals, faults)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nasforge.experiment.store import TrialStore

#: a tiny space and one-epoch training on digits: trials take about a second
TINY = (
    "{name: mobile, options: {stages: [[8, 1, 1]], kernels: [3, 5], expands: [1, 3], se: [false]}}"
)


def write_config(tmp_path: Path, name: str = "r", **overrides: str) -> Path:
    """A small digits config whose runs go to ``tmp_path/runs``; sections can be overridden."""
    sections = {
        "data": "{name: digits}",
        "space": TINY,
        "search": "{trials: 6, executor: inline}",
        "train": "{epochs: 1, lr: 0.1}",
        "strategy": "{name: random}",
        "objective": "{kind: accuracy}",
        "latency": "{mode: flops}",
    }
    sections.update(overrides)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\nruns_dir: {tmp_path / 'runs'}\n"
        + "".join(f"{k}: {v}\n" for k, v in sections.items())
    )
    return cfg


def start_search(cfg: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``nasforge search CFG --quiet --no-final ARGS`` in its own session (own process group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "nasforge.cli", "search", str(cfg), "--quiet", "--no-final", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def wait_for(cond: Callable[[], bool], timeout_s: float = 300.0, what: str = "") -> None:
    """Poll ``cond`` until true; fail the test (not on speed: the limit is generous)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or cond}")


def finished_count(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with TrialStore(db, create=False) as s:
            return s.count(("complete", "failed"))
    except Exception:  # noqa: BLE001 - the store may be mid-creation
        return 0


def descendants(pid: int) -> set[int]:
    """PIDs of all living descendants of ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":  # zombies are dead (not yet reaped)
                parent[int(d.name)] = int(fields[1])
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        kids = {p for p, pp in parent.items() if pp in frontier}
        frontier = kids - out
        out |= kids
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_group(proc: subprocess.Popen) -> None:
    """Clean-up: SIGKILL the process group if it still runs."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)
