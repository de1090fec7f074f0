"""`LatencyTable`: every distinct layer of a space, measured on one backend, saved as JSON with
the device fingerprint, plus the per-network overhead calibrated on whole models.

Build once per (space, backend, input shape, batch size, machine); rebuilding reuses the
entries already measured (a killed build resumes where it stopped: entries are saved chunk by
chunk). Predict with :class:`~nasforge.hardware.predictor.LatencyPredictor`.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasforge.errors import NasforgeError
from nasforge.hardware.backends import BackendSpec, as_backend
from nasforge.hardware.calibration import AGGREGATIONS, Calibration, fit_calibration
from nasforge.hardware.entries import (
    ENTRY_TIMING,
    TableEntry,
    measure_call_overhead,
    measure_entries,
    measure_parallel_speedup,
    resolve_context,
)
from nasforge.hardware.fingerprint import device_fingerprint, fingerprint_mismatches
from nasforge.hardware.layers import LayerSpec, enumerate_layers
from nasforge.hardware.timing import STATISTICS, TimingConfig, measure_models
from nasforge.space import SearchSpace

if TYPE_CHECKING:
    from nasforge.hardware.predictor import LatencyPredictor

TABLE_FORMAT = 1
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

    ``entries`` grows when a predictor measures a missing layer on demand; nothing else
    changes after :meth:`build` and :meth:`calibrate`.
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
            "entry_fields": [
                "median_ms",
                "iqr_ms",
                "p10_ms",
                "min_ms",
                "samples",
                "remeasured",
                "outliers",
                "chained",
            ],
            "entries": {k: e.to_list() for k, e in sorted(self.entries.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "table") -> LatencyTable:
        """Inverse of :meth:`to_dict`; :class:`TableError` names ``source`` if malformed."""
        if d.get("format") != TABLE_FORMAT:
            raise TableError(
                f"{source}: format {d.get('format')!r} is not supported (expected {TABLE_FORMAT})"
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

    def make_space(self) -> SearchSpace:
        """Rebuild the space the table was built for (from its name, shape, classes, options)."""
        from nasforge.spaces import create_space

        s = self.space
        return create_space(
            s["name"], s["input_shape"], int(s["num_classes"]), **s.get("options", {})
        )

    def predictor(
        self,
        space: SearchSpace | None = None,
        mode: str = "auto",
        on_missing: str = "error",
        statistic: str | None = None,
    ) -> LatencyPredictor:
        """A :class:`~nasforge.hardware.predictor.LatencyPredictor` over this table."""
        from nasforge.hardware.predictor import LatencyPredictor

        return LatencyPredictor(self, space, mode=mode, on_missing=on_missing, statistic=statistic)

    def timing(self, base: TimingConfig = MODEL_TIMING) -> TimingConfig:
        """``base`` with this table's clock, for measurements comparable with its entries."""
        return replace(base, clock=self.clock)

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        space: SearchSpace,
        backend: str | BackendSpec = "torch",
        input_shape: Sequence[int] | None = None,
        batch_size: int = 1,
        path: str | Path | None = None,
        *,
        space_options: dict[str, Any] | None = None,
        statistic: str = "min",
        calibration_archs: int = 10,
        context: str = "auto",
        timing: TimingConfig = ENTRY_TIMING,
        progress: bool = True,
        seed: int = 0,
    ) -> LatencyTable:
        """Measure every distinct layer of ``space`` on ``backend`` and calibrate the overhead.

        Args:
            space: a space with a layer decomposition (``mobile``, ``nb201``, ``darts``).
            backend: name or spec; threads default to 1 for names (pinned, recorded).
            input_shape: per-sample shape; defaults to ``space.input_shape`` and must equal it.
            batch_size: leading dimension of every measurement.
            path: JSON file. If it exists with the same space, backend, batch size and clock
                and a matching fingerprint, its entries are reused; the table is saved there
                after every chunk of entries, so an interrupted build resumes.
            space_options: the options the space was created with (stored so that
                ``nasforge latency predict`` can rebuild it).
            statistic: what predictions use by default. ``min`` (the default) is the most
                repeatable figure on a shared host (timeit's argument: slower samples are
                other processes, not the model); ``median`` on a quiet, dedicated target.
            calibration_archs: whole models measured to fit the per-network overhead.
            context: ``isolated``, ``chained`` or ``auto`` (chained on onnxruntime, whose
                graph optimiser makes lone layers pay layout reorders and unfused ops).
            timing: harness settings for each entry (its clock is resolved for ``backend``).
            progress: show a rich progress bar.
            seed: seeds the calibration archs and the visiting order.

        Raises:
            NotDecomposable: the space has no layer decomposition.
            TableError: ``input_shape`` disagrees with the space, or a bad ``statistic``.
        """
        if statistic not in STATISTICS:
            raise TableError(f"statistic: {statistic!r} is not one of {', '.join(STATISTICS)}")
        spec = as_backend(backend, threads=1)
        clock = timing.resolve_clock(spec)
        timing = replace(timing, clock=clock)
        space_shape = tuple(int(s) for s in getattr(space, "input_shape", input_shape or ()))
        shape = tuple(int(s) for s in (input_shape or space_shape))
        if shape != space_shape:
            raise TableError(
                f"input_shape {shape} differs from the space's {space_shape}; "
                "create the space with this shape"
            )
        layers = enumerate_layers(space)
        table = cls(
            space={
                "name": space.name,
                "input_shape": list(shape),
                "num_classes": int(getattr(space, "num_classes", 0)),
                "options": dict(space_options or {}),
            },
            backend=spec,
            batch_size=int(batch_size),
            fingerprint=device_fingerprint(spec.threads).to_dict(),
            statistic=statistic,
            clock=clock,
            context=resolve_context(spec, context),
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )
        target = Path(path) if path is not None else None
        if target is not None and target.is_file():
            table._reuse(target)
        table.path = target
        pending = [lay for lay in layers if lay.key not in table.entries]
        visits = len(pending) * timing.rounds * (2 if table.context == "chained" else 1)
        with _progress(
            progress, visits + 2 * calibration_archs, f"latency table {space.name} on {spec.label}"
        ) as advance:
            if not table.call_overhead_ms:
                table.call_overhead_ms = measure_call_overhead(spec, batch_size, clock)
            if spec.parallel and table.parallel_speedup is None:
                table.parallel_speedup = measure_parallel_speedup(spec, batch_size)
            for chunk in _chunks(pending, 128):
                measured = measure_entries(
                    chunk,
                    spec,
                    batch_size,
                    table.call_overhead_ms,
                    replace(timing, seed=seed + len(table.entries)),
                    table.context,
                    advance,
                )
                table.entries.update({lay.key: e for lay, e in zip(chunk, measured)})
                if target is not None:
                    table.save(target)
            if calibration_archs > 0 and (pending or not table.calibration):
                table.calibrate(space, calibration_archs, seed=seed, progress=advance)
        if target is not None:
            table.save(target)
        return table

    def _reuse(self, path: Path) -> None:
        try:
            old = LatencyTable.load(path, warn=False)
        except TableError as exc:
            warnings.warn(f"{exc}; measuring every entry again", stacklevel=3)
            return
        same = (
            old.space.get("name") == self.space["name"]
            and list(old.space.get("input_shape", [])) == self.space["input_shape"]
            and old.backend == self.backend
            and old.batch_size == self.batch_size
            and old.clock == self.clock
            and old.context == self.context
        )
        if not same:
            warnings.warn(
                f"{path}: built for another space, backend, batch size, clock or context; "
                "measuring again",
                stacklevel=3,
            )
            return
        mism = fingerprint_mismatches(
            old.fingerprint, self.fingerprint, check_gpu=self.backend.is_gpu
        )
        if mism:
            warnings.warn(
                f"{path}: measured on another machine ({'; '.join(mism)}); measuring again",
                TableMismatchWarning,
                stacklevel=3,
            )
            return
        self.entries = dict(old.entries)
        self.call_overhead_ms = dict(old.call_overhead_ms)
        self.parallel_speedup = old.parallel_speedup
        if old.space.get("options", {}) == self.space["options"]:
            self.calibration = dict(old.calibration)
            self.calibration_points = list(old.calibration_points)

    def calibrate(
        self,
        space: SearchSpace,
        archs: int | Sequence[Any] = 10,
        seed: int = 0,
        timing: TimingConfig = MODEL_TIMING,
        progress: Callable[[], None] | None = None,
    ) -> dict[str, Calibration]:
        """Measure whole models and fit the per-network overhead per statistic and aggregation.

        ``archs``: how many random archs to sample (seeded), or the archs themselves.
        Replaces :attr:`calibration` and :attr:`calibration_points` (and saves if the table
        has a path). Missing layers are measured on demand.
        """
        from nasforge.hardware.predictor import LatencyPredictor
        from nasforge.hardware.profile import count_flops, count_params

        if isinstance(archs, int):
            chosen = distinct_samples(space, archs, np.random.default_rng(seed + 7919))
        else:
            chosen = list(archs)
        models = [space.build(a) for a in chosen]
        if progress is not None:
            for _ in chosen:
                progress()
        measured = measure_models(
            models,
            self.input_shape,
            self.batch_size,
            self.backend,
            config=replace(self.timing(timing), seed=seed),
        )
        raw = {
            st: LatencyPredictor(self, space, on_missing="measure", calibrated=False, statistic=st)
            for st in STATISTICS
        }
        points = []
        for a, m, meas in zip(chosen, models, measured):
            points.append(
                {
                    "arch": a.to_json(),
                    "flops": count_flops(m, self.input_shape, self.batch_size),
                    "params": count_params(m),
                    "measured_iqr_ms": meas.iqr_ms,
                    "measured_ms": {st: meas.value_ms(st) for st in STATISTICS},
                    "raw_ms": {st: dict(zip(AGGREGATIONS, raw[st].raw_ms(a))) for st in STATISTICS},
                }
            )
            if progress is not None:
                progress()
        self.calibration = {
            f"{st}/{agg}": fit_calibration(
                [p["raw_ms"][st][agg] for p in points], [p["measured_ms"][st] for p in points]
            )
            for st in STATISTICS
            for agg in AGGREGATIONS
        }
        self.calibration_points = points
        if self.path is not None:
            self.save()
        return self.calibration


def distinct_samples(space: SearchSpace, n: int, rng: np.random.Generator) -> list[Any]:
    """Up to ``n`` seeded random archs with distinct keys."""
    seen: dict[str, Any] = {}
    for _ in range(n * 20):
        a = space.sample(rng)
        seen.setdefault(a.key, a)
        if len(seen) >= n:
            break
    return list(seen.values())


def _chunks(items: Sequence[LayerSpec], size: int) -> Iterator[Sequence[LayerSpec]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _progress:
    """A rich progress bar (or nothing), used as ``with _progress(...) as advance: advance()``."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled, self.total, self.description = enabled and total > 0, total, description
        self._bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


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
    IQR above 15% of the median). Never raises for bad input: problems are warnings.
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
                missing = [s for s in enumerate_layers(space) if s.key not in table.entries]
            except NasforgeError as exc:
                out.append(f"{path}: {exc}")
                missing = []
            if missing:
                out.append(
                    f"{path}: {len(missing)} layer(s) of this space are not in the table "
                    f"(e.g. {missing[0].key}); rebuild it or predict with on_missing='measure'"
                )
    return out
