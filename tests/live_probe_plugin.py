"""A plugin for the live-curve tests: the real ``train`` evaluator, with a probe that, after each
epoch the trial reports, reads the dashboard (:func:`snapshot`, :func:`trial_detail`) from the
process that trains the trial (an inline search's, or a pool worker's) and saves what it saw as
JSON in ``evaluator.options.probe_dir``. So a test sees the dashboard *mid-trial*, between two
epochs of a real training, without timing anything."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nasforge.evaluators import Evaluator, EvaluatorContext, Result, register_evaluator
from nasforge.evaluators.base import Fidelity, Reporter
from nasforge.evaluators.factories import train_evaluator
from nasforge.space import Arch


class ProbedTrainEvaluator(Evaluator):
    def __init__(self, inner: Evaluator, probe_dir: Path) -> None:
        self.inner = inner
        self.probe_dir = probe_dir

    def produces(self) -> frozenset[str] | None:
        return self.inner.produces()

    def evaluate(
        self, arch: Arch, budget: float | Fidelity | None = None, reporter: Reporter | None = None
    ) -> Result:
        if reporter is None:  # no live reporter given: say so, train as the loop asked
            (self.probe_dir / f"no-reporter-{os.getpid()}-{arch.key[:12]}.json").write_text("{}")
            return self.inner.evaluate(arch, budget)
        path = Path(reporter.path)  # type: ignore[attr-defined]  # <run>/live/<trial>.jsonl
        run_dir, tid = path.parent.parent, int(path.stem)

        def probe(step: int, metrics: dict[str, float]) -> None:
            reporter(step, metrics)  # the live line first (the loop's reporter)
            from nasforge.dashboard.data import snapshot, trial_detail

            seen = {
                "step": step,
                "metrics": metrics,
                "pid": os.getpid(),
                "file": path.read_text(),
                "live_files": sorted(os.listdir(path.parent)),
                "snapshot": snapshot(run_dir),
                "detail": trial_detail(run_dir, tid),
            }
            out = self.probe_dir / f"trial{tid}-epoch{step + 1}.json"
            out.write_text(json.dumps(seen, default=str))

        return self.inner.evaluate(arch, budget, reporter=probe)  # type: ignore[arg-type]


def _factory(context: EvaluatorContext, probe_dir: str = "", **options: Any) -> Evaluator:
    return ProbedTrainEvaluator(train_evaluator(context, **options), Path(probe_dir))


register_evaluator("train_probe", _factory, "train, reading the dashboard after each epoch")
