"""`TableBuilder`: measure every distinct layer of a space on a backend, calibrate the
per-network overhead on whole models, fit a learned correction on the same models, score the
table on held-out models, and save the :class:`~nasforge.hardware.table.LatencyTable` record
with the noise verdict of its measurements (:func:`build_verdict`).

A table thus says how far to trust it on the host it was built on: ``accuracy`` (held-out
within +-10%, MAPE, Kendall tau of the predictions as the predictor makes them) and
``build_stability`` (whether the host was quiet enough while it was measured).

Build once per (space, backend, input shape, batch size, machine); building into an existing
file reuses the entries already measured (a killed build resumes where it stopped: entries are
saved chunk by chunk, and a table that lacks layers is extended with only those). Works for
any space that describes its layer plan (:meth:`SearchSpace.plan`).
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nasforge.hardware.backends import BackendSpec, as_backend, pinned_threads
from nasforge.hardware.calibration import (
    AGGREGATIONS,
    Features,
    fit_calibration,
    fit_correction,
)
from nasforge.hardware.entries import (
    ENTRY_TIMING,
    TableEntry,
    measure_call_overhead,
    measure_entries,
    measure_parallel_speedup,
    resolve_context,
)
from nasforge.hardware.fingerprint import device_fingerprint, fingerprint_mismatches
from nasforge.hardware.noise import Stability, say_line, wait_for_quiet
from nasforge.hardware.predictor import LatencyPredictor, check_choice
from nasforge.hardware.profile import count_flops, count_params
from nasforge.hardware.table import (
    MODEL_TIMING,
    LatencyTable,
    TableError,
    TableMismatchWarning,
)
from nasforge.hardware.timing import STATISTICS, LatencyMeasurement, TimingConfig, measure_models
from nasforge.hardware.validate import distinct_samples, score
from nasforge.space import Arch, SearchSpace
from nasforge.space.plan import LayerSpec, plan_layers


@dataclass(frozen=True)
class BuildConfig:
    """How a table is measured.

    Attributes:
        statistic: what predictions use by default. ``min`` (the default) is the most
            repeatable figure on a shared host (timeit's argument: slower samples are other
            processes, not the model); ``median`` on a quiet, dedicated target.
        calibration_archs: whole models measured to fit the per-network overhead and the
            learned correction (at least 8 for a correction to be fitted).
        held_out_archs: further whole models, never fitted, that score the calibrated table
            (:attr:`LatencyTable.accuracy`) and decide whether the learned correction is used;
            0 skips the score (the correction is then judged by leave-one-out).
        context: ``isolated``, ``chained`` or ``auto`` (chained on onnxruntime, whose graph
            optimiser makes lone layers pay layout reorders and unfused ops).
        timing: harness settings for each entry (its clock is resolved for the backend).
            Its policy's wait for a quiet host (:attr:`NoisePolicy.wait_quiet_s`, with
            ``timing.notify`` for its lines) applies to the whole build: every pass over
            entries, the call-overhead probe and the whole-model calibration pass.
        seed: seeds the calibration and held-out archs and the visiting order.
        large_batch: from this batch size on, entries and whole models are timed with
            ``large_batch_repeats`` calls (in the same rounds) instead of ``timing.repeats``
            and ``MODEL_TIMING.repeats``: one call there does the work of many at batch 1
            and varies less relative to its length, so the fewer calls keep a batch-32
            table's build time close to a batch-1 one's.
        large_batch_repeats: timed calls per entry and per whole model at large batch.
    """

    statistic: str = "min"
    calibration_archs: int = 20
    held_out_archs: int = 10
    context: str = "auto"
    timing: TimingConfig = ENTRY_TIMING
    seed: int = 0
    large_batch: int = 8
    large_batch_repeats: int = 9


class TableBuilder:
    """Builds and calibrates :class:`LatencyTable` records for one space on one backend.

    Args:
        space: a space that describes its layer plan.
        backend: name or spec; threads default to 1 for names (pinned, recorded).
        batch_size: leading dimension of every measurement.
        config: what and how to measure (:class:`BuildConfig`).
        space_options: the options the space was created with (stored so that the table can
            rebuild the space, e.g. for ``nasforge latency predict``).
        progress: show a rich progress bar.

    Raises:
        NotDecomposable: the space describes no layer plan.
        ConfigError: a bad ``config.statistic``.
    """

    def __init__(
        self,
        space: SearchSpace,
        backend: str | BackendSpec = "torch",
        batch_size: int = 1,
        config: BuildConfig = BuildConfig(),
        space_options: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        check_choice("statistic", config.statistic, STATISTICS)
        self.space = space
        self.spec = as_backend(backend, threads=1)
        self.batch_size = int(batch_size)
        self.clock = config.timing.resolve_clock(self.spec)
        timing = replace(config.timing, clock=self.clock)
        #: how whole models are timed (calibration and held-out)
        self.model_timing = _same_wait(MODEL_TIMING, config.timing)
        if self.batch_size >= config.large_batch:
            timing = _fewer_repeats(timing, config.large_batch_repeats)
            self.model_timing = _fewer_repeats(self.model_timing, config.large_batch_repeats)
        self.config = replace(config, timing=timing)
        self.space_options = dict(space_options or {})
        self.progress = progress
        self.input_shape = tuple(int(s) for s in getattr(space, "input_shape", ()))
        if not self.input_shape:
            raise TableError(f"space {space.name!r} has no input_shape attribute to measure on")

    # -- the whole build ------------------------------------------------------------------------
    def build(self, path: str | Path | None = None) -> LatencyTable:
        """Measure what the table at ``path`` lacks (everything if new), calibrate, save.

        With ``path``: if a table exists there for the same space, backend, batch size, clock
        and context with a matching fingerprint, its entries are reused; the table is saved
        after every chunk of entries, so an interrupted build resumes.
        """
        cfg = self.config
        table = self._empty()
        target = Path(path) if path is not None else None
        if target is not None and target.is_file():
            self._reuse(table, target)
        table.path = target
        calib, held = self._archs(cfg.calibration_archs, cfg.held_out_archs)
        layers = dict.fromkeys(self.space.all_layers())
        for a in calib + held:  # a sampled default of all_layers may miss some: never at predict
            layers.update(dict.fromkeys(plan_layers(self.space.plan(a))))
        pending = [lay for lay in layers if lay.key not in table.entries]
        visits = len(pending) * cfg.timing.rounds * (2 if table.context == "chained" else 1)
        models = 2 * (len(calib) + len(held))
        title = f"latency table {self.space.name} on {self.spec.label}"
        with _progress(self.progress, visits + models, title) as advance:
            if not table.call_overhead_ms:
                self._wait_quiet()  # the probe runs its own harness pass, without the wait
                table.call_overhead_ms = measure_call_overhead(
                    self.spec, self.batch_size, self.clock
                )
            if self.spec.parallel and table.parallel_speedup is None:
                self._wait_quiet()
                table.parallel_speedup = measure_parallel_speedup(self.spec, self.batch_size)
            for chunk in _chunks(pending, 128):
                measured = measure_entries(
                    chunk,
                    self.spec,
                    self.batch_size,
                    table.call_overhead_ms,
                    replace(cfg.timing, seed=cfg.seed + len(table.entries)),
                    table.context,
                    advance,
                )
                table.entries.update({lay.key: e for lay, e in zip(chunk, measured)})
                if target is not None:
                    table.save(target)
            # a table from before corrections and held-out scores is calibrated again
            stale = not table.corrections or (bool(held) and not table.accuracy)
            if calib and (pending or not table.calibration or stale):
                self.calibrate(table, calib, held, self.model_timing, progress=advance)
        if target is not None:
            table.save(target)
        return table

    def _wait_quiet(self) -> None:
        """Wait for a quiet host (``config.timing.policy.wait_quiet_s``; 0: not at all)
        before a probe that times itself with the default policy."""
        timing = self.config.timing
        if timing.policy.wait_quiet_s > 0:
            with pinned_threads(self.spec):  # the reference kernel on the build's threads
                wait_for_quiet(
                    timing.policy.wait_quiet_s,
                    self.spec.threads,
                    self.clock,
                    timing.policy,
                    say=timing.notify or say_line,
                )

    def _empty(self) -> LatencyTable:
        return LatencyTable(
            space={
                "name": self.space.name,
                "input_shape": list(self.input_shape),
                "num_classes": int(getattr(self.space, "num_classes", 0)),
                "options": self.space_options,
            },
            backend=self.spec,
            batch_size=self.batch_size,
            fingerprint=device_fingerprint(self.spec.threads).to_dict(),
            statistic=self.config.statistic,
            clock=self.clock,
            context=resolve_context(self.spec, self.config.context),
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )

    def _archs(self, n_calib: int, n_held: int) -> tuple[list[Arch], list[Arch]]:
        rng = np.random.default_rng(self.config.seed + 7919)
        chosen = distinct_samples(self.space, n_calib + n_held, rng)
        return chosen[:n_calib], chosen[n_calib:]

    def _reuse(self, table: LatencyTable, path: Path) -> None:
        try:
            old = LatencyTable.load(path, warn=False)
        except TableError as exc:
            warnings.warn(f"{exc}; measuring every entry again", stacklevel=3)
            return
        same = (
            old.space.get("name") == table.space["name"]
            and list(old.space.get("input_shape", [])) == table.space["input_shape"]
            and old.backend == table.backend
            and old.batch_size == table.batch_size
            and old.clock == table.clock
            and old.context == table.context
        )
        if not same:
            warnings.warn(
                f"{path}: built for another space, backend, batch size, clock or context; "
                "measuring again",
                stacklevel=3,
            )
            return
        mism = fingerprint_mismatches(
            old.fingerprint, table.fingerprint, check_gpu=table.backend.is_gpu
        )
        if mism:
            warnings.warn(
                f"{path}: measured on another machine ({'; '.join(mism)}); measuring again",
                TableMismatchWarning,
                stacklevel=3,
            )
            return
        table.entries = dict(old.entries)
        table.call_overhead_ms = dict(old.call_overhead_ms)
        table.parallel_speedup = old.parallel_speedup
        if old.space.get("options", {}) == table.space["options"]:
            table.calibration = dict(old.calibration)
            table.calibration_points = list(old.calibration_points)
            table.accuracy = dict(old.accuracy)
            table.corrections = dict(old.corrections)
            table.held_out_points = list(old.held_out_points)
            table.build_stability = dict(old.build_stability)

    # -- calibration ----------------------------------------------------------------------------
    def calibrate(
        self,
        table: LatencyTable,
        archs: Sequence[Arch],
        held_out: Sequence[Arch] = (),
        timing: TimingConfig = MODEL_TIMING,
        progress: Callable[[], None] | None = None,
    ) -> LatencyTable:
        """Measure whole models; fit the per-network overhead on ``archs`` and score on
        ``held_out``, per statistic and aggregation.

        Replaces ``table.calibration``, ``corrections``, ``calibration_points``,
        ``held_out_points``, ``accuracy`` and ``build_stability`` (and saves if the table has a
        path). Every layer of the archs' plans must be in the table. ``accuracy`` scores the
        predictions as :class:`LatencyPredictor` makes them from the finished table (the
        correction where it is used, else the linear calibration).
        """
        models = [self.space.build(a) for a in [*archs, *held_out]]
        for _ in models:
            if progress is not None:
                progress()
        measured = measure_models(
            models,
            table.input_shape,
            table.batch_size,
            table.backend,
            config=replace(table.timing(timing), seed=self.config.seed),
        )
        raw = {
            st: LatencyPredictor(table, self.space, mode="sum", calibrated=False, statistic=st)
            for st in STATISTICS
        }
        points: list[dict[str, Any]] = []
        for a, m, meas in zip([*archs, *held_out], models, measured):
            feats = {st: raw[st].features(a) for st in STATISTICS}
            points.append(
                {
                    "arch": a.to_json(),
                    "flops": count_flops(m, table.input_shape, table.batch_size),
                    "params": count_params(m),
                    "measured_iqr_ms": meas.iqr_ms,
                    "measured_ms": {st: meas.value_ms(st) for st in STATISTICS},
                    "raw_ms": {st: dict(zip(AGGREGATIONS, raw[st].raw_ms(a))) for st in STATISTICS},
                    "kind_ms": {st: feats[st].kind_ms for st in STATISTICS},
                    "layers": feats[STATISTICS[0]].layers,
                    "unstable": meas.unstable,
                }
            )
            if progress is not None:
                progress()
        fit_pts, held_pts = points[: len(archs)], points[len(archs) :]
        table.calibration = {}
        table.corrections = {}
        for st in STATISTICS:
            for agg in AGGREGATIONS:
                key = f"{st}/{agg}"
                y = [p["measured_ms"][st] for p in fit_pts]
                table.calibration[key] = fit_calibration([p["raw_ms"][st][agg] for p in fit_pts], y)
                table.corrections[key] = fit_correction(
                    [point_features(p, st, agg) for p in fit_pts],
                    y,
                    [point_features(p, st, agg) for p in held_pts],
                    [p["measured_ms"][st] for p in held_pts],
                )
        table.calibration_points = fit_pts
        table.held_out_points = held_pts
        table.accuracy = held_out_accuracy(table, self.space, held_out)
        table.build_stability = build_verdict(table.entries.values(), measured)
        if table.path is not None:
            table.save()
        return table


def point_features(point: dict[str, Any], statistic: str, aggregation: str) -> Features:
    """The :class:`Features` of a stored calibration or held-out point."""
    return Features(
        float(point["raw_ms"][statistic][aggregation]),
        {str(k): float(v) for k, v in point.get("kind_ms", {}).get(statistic, {}).items()},
        int(point.get("layers", 0)),
    )


def held_out_accuracy(
    table: LatencyTable, space: SearchSpace, archs: Sequence[Arch]
) -> dict[str, dict[str, float]]:
    """``"<statistic>/<aggregation>"`` to the :func:`score` (``n``, ``within_10pct``,
    ``mape``, ``kendall_tau``) of ``table``'s predictions of ``archs`` against
    ``table.held_out_points`` (one per arch, in order); empty without held-out archs."""
    if not archs:
        return {}
    out: dict[str, dict[str, float]] = {}
    for st in STATISTICS:
        y = [p["measured_ms"][st] for p in table.held_out_points]
        for agg in AGGREGATIONS:
            pred = LatencyPredictor(table, space, mode=agg, statistic=st).predict_many(archs)
            s = score(f"table:{agg}", pred, y)
            out[f"{st}/{agg}"] = {
                "n": float(s.n),
                "within_10pct": s.within_10pct,
                "mape": s.mape,
                "kendall_tau": s.kendall_tau,
            }
    return out


#: a build is unstable when more than this fraction of its entries, or of its whole models,
#: were measured unstable (a few tiny entries always spread; they carry their own flag)
MAX_UNSTABLE_FRACTION = 0.25


def build_verdict(
    entries: Iterable[TableEntry], models: Sequence[LatencyMeasurement]
) -> dict[str, Any]:
    """The noise verdict of a build: ``{"stable", "reasons", "entries", "unstable_entries",
    "models", "unstable_models", "models_stability"}``.

    Unstable when more than :data:`MAX_UNSTABLE_FRACTION` of the entries or of the whole
    models (calibration and held-out) were measured unstable, or when the whole-model pass
    found the host busy (reference kernel slowed or varying, other processes on the CPUs
    measured, steal); ``reasons`` says which, ``models_stability`` is the whole-model pass's
    :class:`Stability` as a dict.
    """
    ents = list(entries)
    bad_entries = sum(1 for e in ents if e.unstable)
    bad_models = sum(1 for m in models if m.unstable)
    merged = Stability()
    for m in models:
        merged = merged.merge(m.stability)
    reasons: list[str] = []
    if ents and bad_entries > MAX_UNSTABLE_FRACTION * len(ents):
        reasons.append(f"{bad_entries} of {len(ents)} entries measured while the host was busy")
    if models and bad_models > MAX_UNSTABLE_FRACTION * len(models):
        reasons.append(
            f"{bad_models} of {len(models)} whole models measured while the host was busy"
        )
    host = [r for r in merged.reasons if not r.startswith("round medians spread")]
    reasons.extend(f"whole models: {r}" for r in host)
    return {
        "stable": not reasons,
        "reasons": reasons,
        "entries": len(ents),
        "unstable_entries": bad_entries,
        "models": len(models),
        "unstable_models": bad_models,
        "models_stability": merged.to_dict(),
    }


def _same_wait(timing: TimingConfig, like: TimingConfig) -> TimingConfig:
    """``timing`` with ``like``'s wait for a quiet host (seconds, polls, where its lines go);
    its thresholds stay its own."""
    p = like.policy
    policy = replace(
        timing.policy,
        wait_quiet_s=p.wait_quiet_s,
        quiet_poll_s=p.quiet_poll_s,
        quiet_polls=p.quiet_polls,
    )
    return replace(timing, policy=policy, notify=like.notify)


def _fewer_repeats(timing: TimingConfig, repeats: int) -> TimingConfig:
    """``timing`` with at most ``repeats`` timed calls (at least one per round)."""
    return replace(timing, repeats=max(min(timing.repeats, repeats), timing.rounds))


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


__all__ = [
    "MAX_UNSTABLE_FRACTION",
    "BuildConfig",
    "TableBuilder",
    "build_verdict",
    "held_out_accuracy",
    "point_features",
]
