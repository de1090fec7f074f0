"""Device fingerprint: what a latency figure was measured on, stored with every figure.

A latency is only meaningful together with the machine and software that produced it: the
CPU model and its vector extensions, the thread count, the memory allocator (glibc malloc vs
tcmalloc vs jemalloc moved torch batch-32 latency by about 2x on a 2-core machine), the
library versions and the GPU. :func:`device_fingerprint` collects these;
:func:`fingerprint_mismatches` says, field by field, why two fingerprints are not the same
target so that a latency table from another machine is flagged rather than silently used.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nasforge.hardware.allocator import steady_allocator

# Vector and matrix extensions that change which kernels the frameworks pick.
_RELEVANT_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
)
_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


@dataclass(frozen=True)
class DeviceFingerprint:
    """Identity of the measuring machine and software. Round-trips through :meth:`to_dict`.

    Fields compared by :func:`fingerprint_mismatches` are the ones that change latency:
    ``cpu_model``, ``cpu_flags``, ``logical_cpus``, ``threads``, ``allocator``, the major.minor
    versions of ``torch`` and ``onnxruntime``, and ``gpu_name``. The rest is provenance.
    """

    cpu_model: str
    cpu_flags: tuple[str, ...]
    logical_cpus: int
    affinity_cpus: int
    threads: int
    allocator: str
    machine: str
    system: str
    python: str
    torch: str
    onnxruntime: str | None = None
    numpy: str | None = None
    gpu_name: str | None = None
    cuda: str | None = None
    hostname: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu_flags"] = list(self.cpu_flags)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeviceFingerprint:
        known = {f for f in cls.__dataclass_fields__}
        vals = {k: v for k, v in d.items() if k in known}
        vals["cpu_flags"] = tuple(vals.get("cpu_flags", ()))
        for k in ("cpu_model", "machine", "system", "python", "torch", "allocator"):
            vals.setdefault(k, "unknown")
        for k in ("logical_cpus", "affinity_cpus", "threads"):
            vals.setdefault(k, 0)
        return cls(**vals)

    def summary(self) -> str:
        """One line for reports: CPU, threads, allocator, libraries, GPU."""
        gpu = f", GPU {self.gpu_name}" if self.gpu_name else ""
        ort = f", onnxruntime {self.onnxruntime}" if self.onnxruntime else ""
        return (
            f"{self.cpu_model} ({self.logical_cpus} logical CPUs), {self.threads} thread(s), "
            f"allocator {self.allocator}, torch {self.torch}{ort}{gpu}"
        )


def _cpu_info() -> tuple[str, tuple[str, ...]]:
    model, flags = platform.processor() or "unknown", ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model in ("unknown", "", "x86_64"):
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value
    present = set(flags.split())
    return model or "unknown", tuple(f for f in _RELEVANT_FLAGS if f in present)


def detect_allocator(
    maps_path: str = "/proc/self/maps", env: Mapping[str, str] | None = None
) -> str:
    """The malloc in use: ``tcmalloc``, ``jemalloc`` or ``mimalloc`` when preloaded or mapped,
    else ``glibc-<version>`` (or ``system`` where glibc is not the C library).

    Looks at ``LD_PRELOAD`` first, then at the shared objects mapped into this process.
    """
    env = os.environ if env is None else env
    preload = env.get("LD_PRELOAD", "")
    for name in _ALLOCATORS:
        if name in preload:
            return name
    try:
        maps = Path(maps_path).read_text()
    except OSError:
        maps = ""
    for name in _ALLOCATORS:
        if re.search(rf"lib{name}[^/\s]*\.so", maps):
            return name
    lib, version = platform.libc_ver()
    return f"{lib}-{version}" if lib == "glibc" and version else "system"


def _gpu() -> tuple[str | None, str | None]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None, None
    if not torch.cuda.is_available():
        return None, None
    return torch.cuda.get_device_name(0), torch.version.cuda


@functools.lru_cache(maxsize=1)
def _static_fingerprint() -> DeviceFingerprint:
    import numpy
    import torch

    try:
        import onnxruntime

        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    model, flags = _cpu_info()
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    gpu, cuda = _gpu()
    return DeviceFingerprint(
        cpu_model=model,
        cpu_flags=flags,
        logical_cpus=os.cpu_count() or 1,
        affinity_cpus=affinity,
        threads=0,
        # the measurement layer's allocator regime is part of the conditions measured under
        allocator=detect_allocator() + (" steady" if steady_allocator() else ""),
        machine=platform.machine(),
        system=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        torch=torch.__version__,
        onnxruntime=ort_version,
        numpy=numpy.__version__,
        gpu_name=gpu,
        cuda=cuda,
        hostname=platform.node(),
    )


def device_fingerprint(threads: int | None = None) -> DeviceFingerprint:
    """The fingerprint of this process's machine, with ``threads`` (default: torch's count)."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return replace(_static_fingerprint(), threads=int(threads))


def host_info(threads: int | None = None) -> dict[str, Any]:
    """The host a run used, as the flat JSON dict stored with runs and shown in reports.

    The same facts as :func:`device_fingerprint` (one source), under the keys reports read:
    ``cpu`` (model name), ``cores`` (logical CPUs), ``affinity_cpus``, ``cpu_flags``,
    ``allocator``, ``torch``, ``torch_threads``, ``onnxruntime``, ``numpy``, ``python``,
    ``system``, ``machine``, ``cuda`` (the GPU's name, or None) and ``cuda_version``.

    Args:
        threads: torch threads to record (default: torch's current count).
    """
    fp = device_fingerprint(threads)
    return {
        "cpu": fp.cpu_model,
        "cores": fp.logical_cpus,
        "affinity_cpus": fp.affinity_cpus,
        "cpu_flags": " ".join(fp.cpu_flags),
        "allocator": fp.allocator,
        "torch": fp.torch,
        "torch_threads": fp.threads,
        "onnxruntime": fp.onnxruntime,
        "numpy": fp.numpy,
        "python": fp.python,
        "system": fp.system,
        "machine": fp.machine,
        "cuda": fp.gpu_name,
        "cuda_version": fp.cuda,
    }


def _major_minor(version: str | None) -> str | None:
    if version is None:
        return None
    m = re.match(r"(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else version


def fingerprint_mismatches(
    recorded: DeviceFingerprint | Mapping[str, Any],
    current: DeviceFingerprint | Mapping[str, Any] | None = None,
    check_gpu: bool = False,
) -> list[str]:
    """Reasons why ``recorded`` is not the machine ``current`` (default: this one), one per field.

    An empty list means the figures transfer. Library versions are compared by major.minor.
    ``check_gpu`` also compares the GPU name (only tables for the ``cuda`` backend need it).
    """
    rec = (
        recorded
        if isinstance(recorded, DeviceFingerprint)
        else DeviceFingerprint.from_dict(recorded)
    )
    if current is None:
        current = device_fingerprint(rec.threads or None)
    cur = (
        current if isinstance(current, DeviceFingerprint) else DeviceFingerprint.from_dict(current)
    )
    out: list[str] = []

    def differs(name: str, a: Any, b: Any) -> None:
        if a != b:
            out.append(f"{name}: recorded {a!r}, this machine {b!r}")

    differs("cpu_model", rec.cpu_model, cur.cpu_model)
    if set(rec.cpu_flags) != set(cur.cpu_flags):
        missing = sorted(set(rec.cpu_flags) - set(cur.cpu_flags))
        extra = sorted(set(cur.cpu_flags) - set(rec.cpu_flags))
        out.append(
            f"cpu_flags: recorded machine also had {missing or 'nothing more'}, "
            f"this machine also has {extra or 'nothing more'}"
        )
    differs("logical_cpus", rec.logical_cpus, cur.logical_cpus)
    differs("allocator", rec.allocator.split("-")[0], cur.allocator.split("-")[0])
    differs("torch", _major_minor(rec.torch), _major_minor(cur.torch))
    if rec.onnxruntime and cur.onnxruntime:
        differs("onnxruntime", _major_minor(rec.onnxruntime), _major_minor(cur.onnxruntime))
    if check_gpu:
        differs("gpu_name", rec.gpu_name, cur.gpu_name)
    return out
