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
    """One row of the report table. ``latency_ms`` maps batch size -> median ms on the
    target (absent when the stage has no runnable artifact of its own)."""

    name: str
    test_accuracy: float
    size_bytes: int
    latency_ms: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)
    artifact: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompressionReport:
    """The rows (``stages``), warnings, the config as run, free-form ``details`` for
    report.json, whether the final artifact is faster than the original, and every
    stage's typed result (``outputs``, in pipeline order)."""

    stages: tuple[StageResult, ...]
    warnings: tuple[str, ...]
    config: dict[str, object]
    details: dict[str, object]
    deployable: bool
    outputs: tuple[StageOutput, ...] = ()

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["outputs"] = [{"type": type(o).__name__, **asdict(o)} for o in self.outputs]
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
