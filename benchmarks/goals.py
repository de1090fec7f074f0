"""The one way a benchmark states a goal (DEVELOPERS: one line per goal, host included).

``GOAL <short name>: met|NOT MET (<measured> vs <target>) [host: <cpu model>, ...]``; a figure
the harness marked unstable (busy host) is printed as ``NOT MET`` with ``unstable: host busy``
in the measured part, never as met. The host part names the CPU model, the logical CPUs, the
ISA extensions that pick oneDNN / onnxruntime kernels (:data:`KERNEL_ISA`) and the 1-minute
load when the line is printed, so a line copied anywhere still says where it was measured.
Scripts in this folder import it as ``from goals import goal``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TextIO

from nasforge.hardware import device_fingerprint

#: CPU flags that change which kernels oneDNN and onnxruntime run (AVX2 vs AVX-512 paths,
#: VNNI / AMX for INT8, BF16), in the order a host line lists them
KERNEL_ISA = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def load1() -> float:
    """The 1-minute load average now (``nan`` where the system has none)."""
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return float("nan")


def host_record() -> dict[str, Any]:
    """The host as a JSON-ready dict: ``cpu_model``, ``logical_cpus``, ``isa`` (the
    :data:`KERNEL_ISA` flags present), ``allocator``, ``torch``, ``onnxruntime``, ``system``
    and ``load1`` (now)."""
    fp = device_fingerprint()
    return {
        "cpu_model": fp.cpu_model,
        "logical_cpus": fp.logical_cpus,
        "isa": [f for f in KERNEL_ISA if f in fp.cpu_flags],
        "allocator": fp.allocator,
        "torch": fp.torch,
        "onnxruntime": fp.onnxruntime,
        "system": fp.system,
        "load1": load1(),
    }


def host() -> str:
    """CPU model, logical CPUs, kernel ISA and 1-minute load now, e.g.
    ``AMD EPYC, 2 CPUs, avx2 avx512f avx512_vnni avx512_bf16, no AMX, load 0.3``."""
    rec = host_record()
    isa = " ".join(rec["isa"]) or "no AVX2"
    amx = "" if "amx_tile" in rec["isa"] else ", no AMX"
    return f"{rec['cpu_model']}, {rec['logical_cpus']} CPUs, {isa}{amx}, load {rec['load1']:.1f}"


def busy(loads: list[float], own_threads: int = 1) -> bool:
    """Whether other work shared the cores: a 1-minute load average (sampled at start and at
    end) above this benchmark's own threads by more than half the logical CPUs.

    A coarse whole-run rule for scripts whose figures do not come from the timing harness;
    harness figures carry their own verdict (``LatencyMeasurement.stability``)."""
    return max(loads) - own_threads > 0.5 * (os.cpu_count() or 1)


def goal_line(name: str, met: bool, measured: str, target: str, unstable: bool = False) -> str:
    """The goal line :func:`goal` prints (an unstable figure is never met)."""
    ok = met and not unstable
    note = " unstable: host busy" if unstable else ""
    return (
        f"GOAL {name}: {'met' if ok else 'NOT MET'} ({measured}{note} vs {target}) [host: {host()}]"
    )


def goal(name: str, met: bool, measured: str, target: str, unstable: bool = False) -> bool:
    """Print the goal line and return whether it was met (an unstable figure never is)."""
    print(goal_line(name, met, measured, target, unstable))
    return met and not unstable


class Tee:
    """stdout copied to a log file (a benchmark's log beside its terminal output)."""

    def __init__(self, stream: TextIO, path: Path) -> None:
        self.stream, self.file = stream, path.open("w")

    def write(self, s: str) -> int:
        self.file.write(s)
        self.file.flush()
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()
        self.file.flush()


def add_wait_quiet(ap: Any) -> None:
    """The ``--wait-quiet S`` option every timed benchmark takes (argparse parser ``ap``)."""
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each timing pass, wait up to S seconds for a quiet host, then measure "
        "anyway (default 0: measure at once)",
    )
