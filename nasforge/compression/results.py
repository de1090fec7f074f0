"""What a compression run hands back: each stage's typed result and the report.

:class:`StageOutput` is the base of every stage's result: the facts common to all (one row
of the report table: accuracy, size, the artifact file, notes, warnings) plus the fields a
subclass adds (a pruning plan's MACs, an INT8 method and agreement, ...). The pipeline
turns outputs into :class:`StageResult` rows (adding the measured latency) and keeps the
outputs themselves in :attr:`CompressionReport.outputs`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class StageOutput:
    """Base of a stage's typed result; subclasses add their own (JSON-able) fields.

    Attributes:
        stage: the registered name of the stage that produced it.
        row: the report row's name (e.g. ``int8``); empty for a stage with no row.
        test_accuracy: top-1 on the test split of the stage's model.
        size_bytes: the artifact's size (0 when the row has no artifact of its own).
        artifact: file name in the output directory (an ``.onnx`` artifact is timed on
            the target with every other one), or empty.
        notes: short remarks shown in the row.
        warnings: problems the report lists (e.g. an accuracy drop over budget).
    """

    stage: str
    row: str
    test_accuracy: float
    size_bytes: int = 0
    artifact: str = ""
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def details(self) -> dict[str, object]:
        """Entries this stage adds to ``CompressionReport.details`` (for report.json)."""
        return {}


@dataclass(frozen=True)
class StageResult:
    """One row of the report table.

    Every speed-up is measured against the original in the same interleaved pass (one per
    batch size; see :func:`~nasforge.compression.quantization.runtime.compare_speedups`).

    Attributes:
        latency_ms: batch size -> median ms on the target (empty when the stage has no
            runnable artifact of its own).
        speedup: batch size -> geometric-mean ratio over paired rounds (original / this);
            read it together with ``speedup_stable``: an unstable one is not a figure.
        speedup_ci: batch size -> its 95% interval ``(low, high)``.
        speedup_stable: batch size -> whether the host was quiet enough and the interval
            narrow enough to trust it.
        speedup_label: batch size -> the printed form, ``2.63x [2.51, 2.76]`` or
            ``unstable: host busy (<reasons>); interval [...]``.
        notes: short remarks shown in the row (an unstable speed-up's reasons among them).
    """

    name: str
    test_accuracy: float
    size_bytes: int
    latency_ms: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)
    artifact: str = ""
    notes: tuple[str, ...] = ()
    speedup_ci: dict[int, tuple[float, float]] = field(default_factory=dict)
    speedup_stable: dict[int, bool] = field(default_factory=dict)
    speedup_label: dict[int, str] = field(default_factory=dict)

    def unstable_batches(self) -> list[int]:
        """Batch sizes whose speed-up could not be trusted."""
        return [bs for bs, ok in self.speedup_stable.items() if not ok]


@dataclass(frozen=True)
class Comparison:
    """One stage's artifact against one earlier stage's, at one batch size, from the same
    interleaved pass (:func:`~nasforge.compression.quantization.runtime.paired` of their
    round medians): ``ratio`` = earlier / this (above 1: this stage is faster).

    ``verdict``: ``faster`` (stable, whole interval above 1), ``slower`` (stable, whole
    interval below 1), ``no measurable difference`` (stable, interval straddles 1) or
    ``undecided`` (unstable: host busy or too few rounds; nothing is concluded from it).
    """

    stage: str
    earlier: str
    batch_size: int
    ratio: float
    low: float
    high: float
    stable: bool
    label: str

    @property
    def verdict(self) -> str:
        if not self.stable:
            return "undecided"
        if self.low > 1.0:
            return "faster"
        if self.high < 1.0:
            return "slower"
        return "no measurable difference"


@dataclass(frozen=True)
class CompressionReport:
    """The rows (``stages``), warnings, the config as run, free-form ``details`` for
    report.json, whether the final artifact is faster than the original, and every
    stage's typed result (``outputs``, in pipeline order).

    ``deployable`` is ``True`` when the final artifact is faster than the original at every
    batch size (each interval above 1, every figure stable) and not measurably slower than
    any earlier stage's artifact, ``False`` when it is measurably not, and ``None`` when it
    could not be decided (a speed-up was unstable: host busy); :attr:`verdict` says which
    in words.

    ``comparisons``: every timed row against every earlier timed row, per batch size, from
    the same interleaved passes. ``shipped``: the row whose artifact is shipped (the last one
    that is not measurably slower than an earlier row and is within the accuracy budget),
    copied to ``shipped_artifact`` (``model.deploy.onnx``); ``shipped_reason`` says why.
    """

    stages: tuple[StageResult, ...]
    warnings: tuple[str, ...]
    config: dict[str, object]
    details: dict[str, object]
    deployable: bool | None
    outputs: tuple[StageOutput, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    shipped: str = ""
    shipped_artifact: str = ""
    shipped_reason: str = ""

    def comparisons_of(self, stage: str) -> list[Comparison]:
        """Every comparison of row ``stage`` against an earlier row."""
        return [c for c in self.comparisons if c.stage == stage]

    def flagged(self) -> list[str]:
        """Rows measurably slower (stable interval below 1) than an earlier row."""
        out: list[str] = []
        for c in self.comparisons:
            if c.verdict == "slower" and c.stage not in out:
                out.append(c.stage)
        return out

    @property
    def verdict(self) -> str:
        """``deployable: faster than the original``, ``NOT FASTER THAN THE ORIGINAL`` or
        ``UNDECIDED: ...`` (an unstable speed-up decides nothing)."""
        ship = f"; shipped: {self.shipped} ({self.shipped_artifact})" if self.shipped else ""
        return self._verdict_words() + ship

    def _verdict_words(self) -> str:
        if self.deployable is None:
            return (
                "UNDECIDED: whether the compressed model is faster than the original could "
                "not be decided (speed-up unstable: host busy; re-run on a quiet host)"
            )
        return (
            "deployable: faster than the original"
            if self.deployable
            else "NOT FASTER THAN THE ORIGINAL"
        )

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["outputs"] = [{"type": type(o).__name__, **asdict(o)} for o in self.outputs]
        d["verdict"] = self.verdict
        d["comparisons"] = [{**asdict(c), "verdict": c.verdict} for c in self.comparisons]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    def stage(self, name: str) -> StageResult:
        """The row called ``name``.

        Raises:
            KeyError: no such row (the message lists the rows).
        """
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no report row {name!r}; rows: {[s.name for s in self.stages]}")

    def output(self, stage: str) -> StageOutput:
        """The typed result of the (last) stage registered as ``stage``.

        Raises:
            KeyError: no such stage ran (the message lists those that did).
        """
        for o in reversed(self.outputs):
            if o.stage == stage:
                return o
        raise KeyError(f"no stage {stage!r} ran; stages: {[o.stage for o in self.outputs]}")
