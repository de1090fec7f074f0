"""`LatencyTable`: a record of every distinct layer of a space measured on one backend, with
the device fingerprint, the per-network calibration and the table's own held-out accuracy.

A record only: load, save, look up. :class:`~nasforge.hardware.builder.TableBuilder` measures
and calibrates tables; :class:`~nasforge.hardware.predictor.LatencyPredictor` predicts from
them (and never measures or writes).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.errors import NasforgeError
from nasforge.hardware.backends import BackendSpec, as_backend
from nasforge.hardware.calibration import Calibration, Correction
from nasforge.hardware.entries import TableEntry
from nasforge.hardware.fingerprint import fingerprint_mismatches
from nasforge.hardware.timing import STATISTICS, TimingConfig
from nasforge.space import SearchSpace
from nasforge.space.plan import LayerSpec
from nasforge.spaces import create_space

#: the format written; version 1 (before learned corrections and the build's noise verdict)
#: still loads, its new fields empty
TABLE_FORMAT = 2
READABLE_FORMATS = (1, 2)
#: timing of whole models (calibration, validation): 3 rounds of 10 calls, interleaved
MODEL_TIMING = TimingConfig(warmup=5, repeats=30, rounds=3)


class TableError(NasforgeError):
    """A latency table file is missing, malformed, incompatible, or lacks an entry."""


class TableMismatchWarning(UserWarning):
    """The table was measured on another machine (its fingerprint does not match this one)."""


@dataclass
class LatencyTable:
    """Measured layers of one space on one backend and machine (a JSON round-tripping record).

    Attributes:
        space: ``{"name", "input_shape", "num_classes", "options"}`` to rebuild the space.
        backend: the :class:`BackendSpec` the entries were measured on.
        batch_size: leading input dimension of every measurement.
        fingerprint: :class:`~nasforge.hardware.fingerprint.DeviceFingerprint` as a dict.
        entries: layer key (:attr:`LayerSpec.key`) to :class:`TableEntry`.
        statistic: the statistic predictions use by default (``min``, ``p10`` or ``median``;
            every entry stores all three).
        clock: ``wall`` or ``cpu``, the clock of every figure in the table.
        context: ``isolated`` or ``chained`` (see :mod:`nasforge.hardware.entries`).
        parallel_speedup: for parallel execution modes, the measured speedup of two
            independent branches over running them in a row (``None`` otherwise); the
            predictor's ``auto`` mode schedules a cell's ops on the backend's threads only
            where it is at least 1.3 (else it sums them).
        call_overhead_ms: per statistic, the backend's cost of one call of a trivial model,
            subtracted from each entry and counted once per network.
        calibration: ``"<statistic>/<aggregation>"`` (aggregation ``sum``,
            ``critical_path`` or ``schedule``) to the per-network fit.
        calibration_points: the whole models the fits used (arch JSON, FLOPs, params, measured
            ms and raw ms per statistic), so validation can fit FLOPs and params the same way.
        accuracy: the table's own held-out accuracy, ``"<statistic>/<aggregation>"`` to
            ``{"n", "within_10pct", "mape", "kendall_tau"}`` of the predictions as
            :class:`~nasforge.hardware.predictor.LatencyPredictor` makes them (the learned
            correction where it is used, else the linear calibration) on whole models that no
            fit saw (empty when the builder measured none).
        corrections: ``"<statistic>/<aggregation>"`` to the learned
            :class:`~nasforge.hardware.calibration.Correction` (per-kind scales, a per-layer
            cost) fitted on the calibration models; predictions apply it only where its
            ``used`` is true (it beat the linear calibration on held-out models).
        held_out_points: the held-out whole models, in the form of ``calibration_points``.
        build_stability: the noise verdict of the build's measurements: ``{"stable": bool,
            "reasons": [str], "entries": int, "unstable_entries": int, "models": int,
            "unstable_models": int, "models_stability": Stability dict}`` (empty for tables
            built before the harness had a verdict). ``stable`` is false when the host was
            too busy to trust the table (see :func:`build_verdict`).
        created: ISO time of the build.
        path: where the table was loaded from or last saved (not serialised).
    """

    space: dict[str, Any]
    backend: BackendSpec
    batch_size: int
    fingerprint: dict[str, Any]
    entries: dict[str, TableEntry] = field(default_factory=dict)
    statistic: str = "min"
    clock: str = "wall"
    context: str = "isolated"
    parallel_speedup: float | None = None
    call_overhead_ms: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Calibration] = field(default_factory=dict)
    calibration_points: list[dict[str, Any]] = field(default_factory=list)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    corrections: dict[str, Correction] = field(default_factory=dict)
    held_out_points: list[dict[str, Any]] = field(default_factory=list)
    build_stability: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    path: Path | None = field(default=None, compare=False)

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TABLE_FORMAT,
            "space": self.space,
            "backend": self.backend.to_dict(),
            "batch_size": self.batch_size,
            "statistic": self.statistic,
            "clock": self.clock,
            "context": self.context,
            "parallel_speedup": self.parallel_speedup,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "call_overhead_ms": self.call_overhead_ms,
            "calibration": {k: c.to_dict() for k, c in self.calibration.items()},
            "calibration_points": self.calibration_points,
            "accuracy": self.accuracy,
            "corrections": {k: c.to_dict() for k, c in self.corrections.items()},
            "held_out_points": self.held_out_points,
            "build_stability": self.build_stability,
            "entry_fields": [
                "median_ms",
                "iqr_ms",
                "p10_ms",
                "min_ms",
                "samples",
                "remeasured",
                "outliers",
                "chained",
                "unstable",
            ],
            "entries": {k: e.to_list() for k, e in sorted(self.entries.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "table") -> LatencyTable:
        """Inverse of :meth:`to_dict`; :class:`TableError` names ``source`` if malformed."""
        if d.get("format") not in READABLE_FORMATS:
            raise TableError(
                f"{source}: format {d.get('format')!r} is not supported (expected one of "
                f"{', '.join(map(str, READABLE_FORMATS))})"
            )
        try:
            table = cls(
                space=dict(d["space"]),
                backend=BackendSpec.from_dict(d["backend"]),
                batch_size=int(d["batch_size"]),
                fingerprint=dict(d["fingerprint"]),
                entries={k: TableEntry.from_list(v) for k, v in d["entries"].items()},
                statistic=str(d.get("statistic", "min")),
                clock=str(d.get("clock", "wall")),
                context=str(d.get("context", "isolated")),
                parallel_speedup=d.get("parallel_speedup"),
                call_overhead_ms={k: float(v) for k, v in d.get("call_overhead_ms", {}).items()},
                calibration={k: Calibration(**c) for k, c in d.get("calibration", {}).items()},
                calibration_points=list(d.get("calibration_points", [])),
                accuracy={k: dict(v) for k, v in d.get("accuracy", {}).items()},
                corrections={
                    k: Correction.from_dict(c) for k, c in d.get("corrections", {}).items()
                },
                held_out_points=list(d.get("held_out_points", [])),
                build_stability=dict(d.get("build_stability", {})),
                created=str(d.get("created", "")),
            )
        except (KeyError, TypeError, ValueError, IndexError, NasforgeError) as exc:
            raise TableError(
                f"{source}: not a latency table ({type(exc).__name__}: {exc})"
            ) from None
        if table.statistic not in STATISTICS:
            raise TableError(
                f"{source}: statistic {table.statistic!r} is not one of {', '.join(STATISTICS)}"
            )
        return table

    def save(self, path: str | Path | None = None) -> Path:
        """Write JSON atomically (a temporary file renamed over the target)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("LatencyTable.save needs a path")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(target)
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | Path, warn: bool = True) -> LatencyTable:
        """Read a table; warns (:class:`TableMismatchWarning`) if it is from another machine.

        Raises:
            TableError: missing file, not JSON, or not a latency table (names the path).
        """
        p = Path(path)
        if not p.is_file():
            raise TableError(f"{p}: latency table not found")
        try:
            obj = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TableError(f"{p}: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise TableError(f"{p}: not a latency table (expected a JSON object)")
        table = cls.from_dict(obj, str(p))
        table.path = p
        if warn:
            for msg in table.mismatches():
                warnings.warn(
                    f"{p}: measured on another machine: {msg}", TableMismatchWarning, stacklevel=2
                )
        return table

    # -- queries --------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.space["input_shape"])

    def mismatches(self) -> list[str]:
        """Fingerprint differences between the table's machine and this one (empty: same)."""
        return fingerprint_mismatches(self.fingerprint, check_gpu=self.backend.is_gpu)

    def lookup(self, spec: LayerSpec) -> TableEntry:
        """The entry of ``spec``.

        Raises:
            TableError: the table has no entry for it (names the layer, and that
                ``nasforge latency build`` on the same file measures only what is missing).
        """
        e = self.entries.get(spec.key)
        if e is None:
            where = self.path or "the latency table"
            raise TableError(
                f"{where}: no entry for layer {spec.key}; the table lacks layers this space "
                f"produces: extend it with `nasforge latency build --out {where}` for this "
                "space (it measures only the missing layers) or rebuild it"
            )
        return e

    def make_space(self) -> SearchSpace:
        """Rebuild the space the table was built for (from its name, shape, classes, options)."""
        s = self.space
        return create_space(
            s["name"], s["input_shape"], int(s["num_classes"]), **s.get("options", {})
        )

    def timing(self, base: TimingConfig = MODEL_TIMING) -> TimingConfig:
        """``base`` with this table's clock, for measurements comparable with its entries."""
        return replace(base, clock=self.clock)


def check_table(
    path: str | Path,
    space: SearchSpace | None = None,
    backend: str | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
) -> list[str]:
    """Warnings about using the table at ``path`` here, one line each (empty: fine).

    Names a missing or unreadable file, a fingerprint that does not match this machine, a
    backend, batch size or thread count other than the ones asked for, a space whose layers
    the table lacks, a table without calibration, and entries measured on a busy host (median
    IQR above 15% of the median, or a build whose noise verdict,
    :attr:`LatencyTable.build_stability`, is unstable). Never raises for bad input: problems
    are warnings.
    """
    try:
        table = LatencyTable.load(path, warn=False)
    except TableError as exc:
        return [str(exc)]
    out = [f"{path}: measured on another machine: {m}" for m in table.mismatches()]
    if backend is not None:
        try:
            label = as_backend(backend, table.backend.threads).label
        except NasforgeError as exc:
            label = f"{backend} ({exc})"
        if label != table.backend.label:
            out.append(f"{path}: built for backend {table.backend.label}, used with {backend}")
    if batch_size is not None and int(batch_size) != table.batch_size:
        out.append(f"{path}: built for batch size {table.batch_size}, used with {batch_size}")
    if threads is not None and int(threads) != table.backend.threads:
        out.append(f"{path}: built with {table.backend.threads} thread(s), used with {threads}")
    if not table.calibration:
        out.append(f"{path}: no per-network calibration; predictions are raw sums of layers")
    verdict = table.build_stability
    if verdict and not verdict.get("stable", True):
        why = "; ".join(str(r) for r in verdict.get("reasons", [])) or "host busy"
        out.append(f"{path}: built while the host was busy ({why}); rebuild it when quiet")
    spreads = [e.iqr_ms / e.median_ms for e in table.entries.values() if e.median_ms > 0]
    if spreads and float(np.median(spreads)) > 0.15:
        out.append(
            f"{path}: entries vary a lot (median IQR {100 * float(np.median(spreads)):.0f}% "
            "of the median): measured on a busy host; use statistic 'min' or rebuild when quiet"
        )
    if space is not None:
        if space.name != table.space.get("name"):
            out.append(
                f"{path}: built for space {table.space.get('name')!r}, used with {space.name!r}"
            )
        else:
            try:
                missing = [s for s in space.all_layers() if s.key not in table.entries]
            except NasforgeError as exc:
                out.append(f"{path}: {exc}")
                missing = []
            if missing:
                out.append(
                    f"{path}: {len(missing)} layer(s) of this space are not in the table "
                    f"(e.g. {missing[0].key}); extend it with `nasforge latency build --out "
                    f"{path}`"
                )
    return out
