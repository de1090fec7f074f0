"""What the AutoML benchmarks of goals 1 and 2 share (issue 15): the data, the architecture
space, the searched recipe, one product run per method and seed, and the log.

Every number comes from the product: a config mapping validated by
:func:`nasforge.experiment.config.parse_config`, run by
:class:`nasforge.experiment.runner.Experiment` (search on the validation split, the final step
retrains the chosen trial with its recipe on train+val and tests it once), read back from the
run's store. Runs use the inline executor with one torch thread, one trial at a time, so
methods compared on wall time get the same CPU; what other processes took from the CPUs
meanwhile is recorded per run (:func:`figures.activity_stability`) and flags the wall-time
figures of a busy host.

Data: mnist1d (1-D signals, 10 classes; 4,000 samples, quick 2,000), batch 32 (the one
``train:`` field set; every other is the product's default): an epoch takes one to two
seconds on a quiet core, and one epoch already ranks architectures and recipes (about 0.65
val acc; at batch 64 one epoch of the small split is near chance, which would blind the
multi-fidelity strategies' first rung).
Space: ``mobile`` with three small stages (depth 1-2 each, kernels 3/5/7, expansion 1/3/6,
width 0.5/1.0). Recipe (:func:`recipe_dims`): ``lr`` (log 0.01..0.3), ``weight_decay`` (log
1e-5..1e-3), ``label_smoothing`` and, where the installed ``train:`` section knows them,
``augment`` and ``schedule`` choices. The optimizer stays SGD: one lr range cannot serve SGD
(best near 0.05) and AdamW (best near 0.003) alike, and a joint search that spends half its
trials on a mismatched pair measures the range, not the search (``--recipe standard`` runs
the product's own preset instead).
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goals import Tee  # noqa: E402 - benchmarks/goals.py

RESULTS = Path(__file__).resolve().parent / "results"

#: the architecture space every method searches (the ``space:`` section)
SPACE: dict[str, Any] = {
    "name": "mobile",
    "options": {
        "stages": [[16, 1, 2], [24, 2, 2], [40, 2, 2]],  # channels, stride, max depth
        "kernels": [3, 5, 7],
        "expands": [1, 3, 6],
        "widths": [0.5, 1.0],
        "stem_channels": 16,
        "head_features": 64,
    },
}


def data_section(quick: bool) -> dict[str, Any]:
    """The ``data:`` section: mnist1d, 4,000 samples (quick 2,000)."""
    return {"name": "mnist1d", "samples": 2000 if quick else 4000}


def _choices(field_name: str) -> tuple[Any, ...]:
    """The allowed values of a ``Literal`` field of the installed ``train:`` section (empty
    when the field does not exist or is not a ``Literal``)."""
    from nasforge.train import TrainSection

    info = TrainSection.model_fields.get(field_name)
    if info is None or typing.get_origin(info.annotation) is not typing.Literal:
        return ()
    return typing.get_args(info.annotation)


def recipe_dims(kind: str = "explicit") -> dict[str, Any] | str:
    """The ``automl.recipe`` mapping searched jointly with the architecture.

    ``explicit``: the ranges of this module's doc, with the augmentation and schedule
    choices the installed ``train:`` section offers (``standard``: the product's preset).
    """
    if kind == "standard":
        return "standard"
    dims: dict[str, Any] = {
        "lr": {"low": 0.01, "high": 0.3, "log": True},
        "weight_decay": {"low": 1e-5, "high": 1e-3, "log": True},
        "label_smoothing": [0.0, 0.1, 0.2],
    }
    augment = [
        a for a in ("none", "shift", "randaugment", "trivialaugment") if a in _choices("augment")
    ]
    if len(augment) > 1:
        dims["augment"] = augment
    schedule = [s for s in ("cosine", "onecycle", "step") if s in _choices("schedule")]
    if len(schedule) > 1:
        dims["schedule"] = schedule
    return dims


def base_config(
    name: str, seed: int, runs_dir: Path, quick: bool, epochs: int, final_epochs: int
) -> dict[str, Any]:
    """A run's config mapping without ``strategy``/``search``/``automl``: batch 32, accuracy
    objective (latency is no goal here: ``latency.mode: flops`` times nothing during the
    search); the final step retrains for ``final_epochs`` without ONNX export."""
    return {
        "name": name,
        "seed": seed,
        "runs_dir": str(runs_dir),
        "data": data_section(quick),
        "space": SPACE,
        "train": {"epochs": epochs, "batch_size": 32},
        "objective": {"kind": "accuracy"},
        "latency": {"mode": "flops", "threads": 1},
        "final": {"epochs": final_epochs, "export_onnx": False},
    }


def strategy_known(name: str) -> bool:
    """Whether ``name`` is a registered strategy in this checkout (its import works)."""
    from nasforge.strategies import STRATEGIES

    if name not in STRATEGIES:
        return False
    try:
        from nasforge.strategies import strategy_factory

        strategy_factory(name)
    except Exception:  # noqa: BLE001 - a registered path that does not import is "missing"
        return False
    return True


@dataclass
class RunResult:
    """One product run read back from its store.

    ``trials``: ``(seconds since the first trial started, val_acc or None, budget epochs or
    None, budget fraction or None, recipe overrides)`` per finished trial in finish order.
    """

    method: str
    seed: int
    run_dir: str
    wall_s: float
    trials: list[tuple[float, float | None, float | None, float | None, dict[str, Any]]]
    test_acc: float | None
    final_trial: dict[str, Any] | None
    stable: bool
    stability: str
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def run_product(config: dict[str, Any], run_dir: Path, method: str, seed: int) -> RunResult:
    """Validate ``config`` and run it (search, final, report) in ``run_dir``; the stretch's
    host activity gives the run's wall-time verdict. A failed run is a result with ``error``."""
    import torch
    from figures import activity_stability
    from rich.console import Console

    from nasforge.experiment.config import parse_config
    from nasforge.experiment.fidelity_view import BUDGET_EPOCHS, BUDGET_FRACTION
    from nasforge.experiment.runner import Experiment
    from nasforge.experiment.store import FINISHED, TrialStore
    from nasforge.hardware.noise import HostSample
    from nasforge.space.joint import split_values

    torch.set_num_threads(1)
    start = HostSample.take()
    t0 = time.perf_counter()
    error = None
    final = None
    try:
        cfg = parse_config(config, source=f"{method} seed {seed}")
        summary = Experiment(
            cfg, run_dir=run_dir, progress=False, console=Console(stderr=True, quiet=True)
        ).run()
        final = summary.final
    except Exception as exc:  # noqa: BLE001 - one run's failure is its result; the others run
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
        error = f"{type(exc).__name__}: {first}"[:300]
    wall = time.perf_counter() - t0
    stab = activity_stability(start, threads=1)
    trials: list[tuple[float, float | None, float | None, float | None, dict[str, Any]]] = []
    db = run_dir / "trials.db"
    if db.is_file():
        store = TrialStore(db, create=False)
        try:
            rows = store.trials(FINISHED, order="finished")
            begin = min((t.started or t.created for t in rows), default=0.0)
            for t in rows:
                m = t.metrics or {}
                acc = m.get("val_acc") if t.state == "complete" else None
                trials.append(
                    (
                        float((t.finished or begin) - begin),
                        None if acc is None else float(acc),
                        _num(m.get(BUDGET_EPOCHS)),
                        _num(m.get(BUDGET_FRACTION)),
                        split_values(t.arch)[1],
                    )
                )
        finally:
            store.close()
    return RunResult(
        method=method,
        seed=seed,
        run_dir=str(run_dir),
        wall_s=wall,
        trials=trials,
        test_acc=_num((final or {}).get("test_acc")),
        final_trial=final,
        stable=stab.stable,
        stability=stab.label,
        error=error,
    )


Job = tuple[dict[str, Any], Path, str, int]


def run_all(jobs: list[Job], parallel: int, done: Callable[[RunResult], None]) -> list[RunResult]:
    """Run ``(config, run_dir, method, seed)`` jobs, ``parallel`` at a time (each its own
    spawned process with one torch thread; 1: one after the other in this process), calling
    ``done`` as each finishes; results in job order. Keep ``parallel`` at most half the CPUs:
    runs compared on wall time must not wait for each other's cores (the host verdict of each
    run counts its siblings as other processes)."""
    if parallel <= 1:
        out = []
        for job in jobs:
            out.append(run_product(*job))
            done(out[-1])
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with torch's threads
    results: dict[int, RunResult] = {}
    with ProcessPoolExecutor(parallel, mp_context=ctx) as pool:
        futures = {pool.submit(run_product, *job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            done(results[futures[fut]])
    return [results[i] for i in range(len(jobs))]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def work_dir(arg: Path | None, prefix: str) -> Path:
    """Where the runs of this invocation live (``--work``, else a new temporary folder)."""
    if arg is not None:
        arg.mkdir(parents=True, exist_ok=True)
        return arg
    return Path(tempfile.mkdtemp(prefix=f"nasforge_bench_{prefix}_"))


def stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%M")


def start_log(path: Path) -> None:
    """Copy stdout to ``path`` from now on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout = Tee(sys.stdout, path)  # type: ignore[assignment]


def loads() -> str:
    """The load averages now, for the log's start and end lines."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"
