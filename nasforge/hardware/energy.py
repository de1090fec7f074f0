"""Energy per inference, measured where the platform exposes a counter, never invented.

Counters: Intel/AMD RAPL through Linux powercap (``/sys/class/powercap/*/energy_uj``, CPU
package domains) and NVML's total-energy counter on NVIDIA GPUs (Volta and later, through
the ``pynvml`` module of ``nvidia-ml-py``). Where neither is readable, the result says
``available=False`` and why.

RAPL counts the whole package, other processes included, so the idle power measured over
the same duration just before is subtracted (``net_joules_per_inference``); both figures are
reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from nasforge.hardware.backends import BackendSpec, as_backend, make_runner, pinned_threads

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class EnergyMeasurement:
    """Energy of one inference (joules) or the reason there is none.

    ``joules_per_inference`` is what the counter saw while the model ran; ``idle_watts`` the
    counter's power while idle just before; ``net_joules_per_inference`` the first minus the
    idle share. ``None`` everywhere when ``available`` is false.
    """

    available: bool
    source: str
    reason: str = ""
    calls: int = 0
    seconds: float = 0.0
    joules_per_inference: float | None = None
    net_joules_per_inference: float | None = None
    mean_watts: float | None = None
    idle_watts: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EnergyCounter:
    """An energy counter: :meth:`read` a reading, :meth:`delta` joules between two readings."""

    name = "counter"

    def read(self) -> Any:
        raise NotImplementedError

    def delta(self, before: Any, after: Any) -> float:
        return float(after - before)


class RaplCounter(EnergyCounter):
    """Sum of the package domains under ``/sys/class/powercap`` (``intel-rapl:N``), with each
    domain's wrap-around (``max_energy_range_uj``) handled."""

    def __init__(self, domains: Sequence[Path]) -> None:
        self.domains = list(domains)
        self.name = "rapl:" + ",".join(d.name for d in self.domains)
        self._ranges = []
        for d in self.domains:
            try:
                self._ranges.append(int((d / "max_energy_range_uj").read_text()) / 1e6)
            except (OSError, ValueError):
                self._ranges.append(float("inf"))

    def read(self) -> list[float]:
        return [int((d / "energy_uj").read_text()) / 1e6 for d in self.domains]

    def delta(self, before: list[float], after: list[float]) -> float:
        total = 0.0
        for b, a, r in zip(before, after, self._ranges):
            total += a - b if a >= b else a + r - b
        return total


class NvmlCounter(EnergyCounter):
    """NVML's total energy since driver load (millijoules) of GPU ``index``."""

    def __init__(self, index: int = 0) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(self._handle)
        self.name = f"nvml:{name.decode() if isinstance(name, bytes) else name}"
        self.read()  # raises where the counter is unsupported

    def read(self) -> float:
        return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) / 1e3


def rapl_domains(root: Path = POWERCAP) -> tuple[list[Path], str]:
    """Readable package-level RAPL domains, or an empty list and the reason."""
    if not root.is_dir():
        return [], f"{root} does not exist (no powercap / RAPL driver, e.g. inside a VM)"
    domains = sorted(
        p for p in root.glob("*rapl:[0-9]*") if ":" in p.name and p.name.count(":") == 1
    )
    if not domains:
        return [], f"no RAPL package domain under {root}"
    readable = []
    for d in domains:
        try:
            int((d / "energy_uj").read_text())
            readable.append(d)
        except (OSError, ValueError):
            continue
    if not readable:
        return [], f"RAPL counters under {root} are not readable (they need root on recent kernels)"
    return readable, ""


def find_counter(backend: str) -> tuple[EnergyCounter | None, str]:
    """The counter for ``backend`` (NVML for ``cuda``, RAPL otherwise) or None and why."""
    if backend == "cuda":
        try:
            return NvmlCounter(), ""
        except ImportError:
            return None, "pynvml (nvidia-ml-py) is not installed"
        except Exception as exc:  # noqa: BLE001 - NVML raises its own error classes
            return None, f"NVML energy counter unavailable: {exc}"
    domains, reason = rapl_domains()
    if not domains:
        return None, reason
    return RaplCounter(domains), ""


def measure_energy(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    backend: str | BackendSpec = "torch",
    duration_s: float = 2.0,
    counter: EnergyCounter | None = None,
) -> EnergyMeasurement:
    """Energy per inference of ``model`` on ``backend``, or ``available=False`` with the reason.

    Idles ``duration_s`` to measure the baseline, then runs the model for at least
    ``duration_s`` (counters update every few milliseconds) and divides by the calls.
    """
    spec = as_backend(backend, threads=1)
    if counter is None:
        counter, reason = find_counter("cuda" if spec.is_gpu else spec.name)
        if counter is None:
            return EnergyMeasurement(False, "", reason)
    b0 = counter.read()
    t0 = time.perf_counter()
    time.sleep(duration_s)
    idle_s = time.perf_counter() - t0
    idle_w = counter.delta(b0, counter.read()) / idle_s
    with pinned_threads(spec):
        runner = make_runner(model, input_shape, batch_size, spec)
        try:
            runner.run(5)
            calls = 0
            before = counter.read()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < duration_s:
                runner.run(10)
                calls += 10
            seconds = time.perf_counter() - t0
            after = counter.read()
        finally:
            runner.close()
    joules = counter.delta(before, after)
    per_call = joules / calls
    return EnergyMeasurement(
        True,
        counter.name,
        calls=calls,
        seconds=seconds,
        joules_per_inference=per_call,
        net_joules_per_inference=max(joules - idle_w * seconds, 0.0) / calls,
        mean_watts=joules / seconds,
        idle_watts=idle_w,
    )
