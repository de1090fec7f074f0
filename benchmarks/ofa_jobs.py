"""The jobs of ``benchmarks/ofa.py``, each runnable in the main process or in a worker.

Every job builds what it needs from a picklable plan, times itself with the CPU clock of its
own process (``time.process_time``: the CPU a job costs wherever it runs; torch is pinned to
one thread) and returns plain JSON-ready figures:

* :func:`ofa_job`: one elastic supernet trained with an :class:`OFAConfig` (progressive
  shrinking or not), saved; for the progressive one also the subnet sample, the accuracy
  predictor, one specialisation per target (extracted with BN recalibrated, evaluated,
  fine-tuned, evaluated) and the inherited accuracy of the ranking archs (part 3).
* :func:`extracted_job`: given archs extracted from a saved supernet (the no-PS one).
* :func:`scratch_job`: one arch trained from scratch.
* :func:`blackbox_job`: one black-box search through the product (``Experiment`` with the
  evolution strategy under a hard latency limit predicted by the same table), then its best
  arch retrained with the from-scratch recipe. Its figures are cached per plan (target,
  limit, table file, budget, recipes, strategy options and data) in
  ``benchmarks/results/ofa_blackbox_<hash>.json``: a rerun that changes only the OFA side
  (its recipe or library) reuses them and says so; CPU seconds printed for a cached search
  are those of the run that made it.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ofa_setup import RESULTS, SPACE_OPTIONS, Setting, space_of
from rich.console import Console

from nasforge.data import Dataset
from nasforge.experiment.config import parse_config
from nasforge.experiment.ofa_specialize import finetune_config, supernet_measurer
from nasforge.experiment.runner import Experiment
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.table import LatencyTable
from nasforge.hardware.trust import UntrustedTableWarning
from nasforge.oneshot.ofa.specialize import (
    AccuracyPredictor,
    SpecializeConfig,
    sample_subnets,
    specialize,
)
from nasforge.oneshot.ofa.train import OFAConfig, OFATrainer
from nasforge.space import Arch
from nasforge.spaces.mobile import MobileSpace
from nasforge.train import TrainConfig, evaluate_accuracy, train_model

_W: dict[str, Any] = {}


def init_worker(setting: Setting) -> None:
    """Load the (deterministic) data and build the space once per process."""
    torch.set_num_threads(1)
    ds = setting.dataset()
    _W.update(setting=setting, ds=ds, space=space_of(ds))


def _data() -> tuple[Dataset, MobileSpace]:
    return _W["ds"], _W["space"]


def _accs(model: torch.nn.Module, ds: Dataset) -> dict[str, float]:
    return {
        "val": evaluate_accuracy(model, ds.x_val, ds.y_val),
        "test": evaluate_accuracy(model, ds.x_test, ds.y_test),
    }


def recipe(config: OFAConfig, epochs: int, seed: int = 0) -> TrainConfig:
    """The supernet's training recipe for a stand-alone net, ``epochs`` long (the from-scratch
    baseline and the black-box searches train with it)."""
    return TrainConfig(
        epochs=epochs,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        momentum=config.momentum,
        label_smoothing=config.label_smoothing,
        seed=seed,
    )


# -- OFA -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OFAPlan:
    """One supernet job. With ``specialize``, the job also measures the inherited accuracy of
    the subnet sample; ``targets`` (the users' latency targets, ms) are then specialised by
    :func:`specialize_targets` in the main process (the product's measured refinement aims at
    ``target * (1 - margin)``; ``search_fraction`` is the black-box searches' limit)."""

    name: str
    config: OFAConfig
    state_path: str
    specialize: SpecializeConfig | None = None
    targets: tuple[float, ...] = ()
    search_fraction: float = 0.95
    table_path: str = ""
    finetune_epochs: int = 0
    rank_archs: tuple[dict[str, Any], ...] = ()


def _train(trainer: OFATrainer, name: str) -> dict[str, Any]:
    t0, w0 = time.process_time(), time.perf_counter()
    total = trainer.config.total_epochs
    while not trainer.done:
        rec = trainer.step_epoch()
        print(
            f"  [{name}] epoch {rec.epoch + 1}/{total} phase {rec.phase} loss {rec.loss:.3f} "
            f"(largest {rec.teacher_loss:.3f}, {rec.seconds:.1f} s)",
            flush=True,
        )
    return {
        "cpu_s": time.process_time() - t0,
        "wall_s": time.perf_counter() - w0,
        "records": [r.__dict__ for r in trainer.records],
    }


def _deploy(
    trainer: OFATrainer, arch: Arch, finetune_epochs: int, seed: int
) -> tuple[dict[str, Any], float, float]:
    """Extract (BN recalibrated), evaluate, fine-tune, evaluate: (figures, extract CPU s,
    fine-tune CPU s incl. its evaluation)."""
    ds = trainer.dataset
    t0 = time.process_time()
    model = trainer.extract(arch)
    extract_cpu = time.process_time() - t0
    out: dict[str, Any] = {"extracted": _accs(model, ds)}
    t1 = time.process_time()
    if finetune_epochs > 0:
        train_model(
            model, ds.x_train, ds.y_train, finetune_config(trainer.config, finetune_epochs, seed)
        )
        model.eval()
        out["finetuned"] = _accs(model, ds)
    return out, extract_cpu, time.process_time() - t1


def ofa_job(plan: OFAPlan) -> dict[str, Any]:
    """Train (and save) one supernet; specialise and score as the plan asks."""
    ds, space = _data()
    trainer = OFATrainer(space, ds, plan.config)
    out: dict[str, Any] = {"name": plan.name, "train": _train(trainer, plan.name)}
    trainer.save(plan.state_path)
    spec = plan.specialize
    if spec is not None:  # the subnet sample (once); the specialisations run in the main process
        t0 = time.process_time()
        samples = sample_subnets(space, trainer.accuracy, spec.samples, spec.seed)
        out["samples"] = [[a.to_dict(), acc] for a, acc in samples]
        out["sample_cpu_s"] = time.process_time() - t0
        print(
            f"  [{plan.name}] {len(samples)} subnets' inherited accuracy "
            f"({out['sample_cpu_s']:.0f} CPU s)",
            flush=True,
        )
    if plan.rank_archs:
        t2 = time.process_time()
        out["ranking"] = {
            "val_acc": [trainer.accuracy(space.make(a)) for a in plan.rank_archs],
            "cpu_s": time.process_time() - t2,
        }
    return out


def specialize_targets(
    plan: OFAPlan, samples: list[list[Any]], sample_cpu_s: float
) -> dict[str, Any]:
    """In the main process, on an idle pool (the measurements must not share the cores with
    training): the accuracy predictor fitted on the worker's subnet sample, then per target
    the product's specialisation with measured refinement (the arch of each round extracted,
    BN folded and timed on the table's backend by the product's measurer), then the chosen
    subnet extracted with BN recalibrated, evaluated, fine-tuned and evaluated."""
    ds, space = _data()
    spec = plan.specialize
    assert spec is not None
    trainer = OFATrainer(space, ds, plan.config)
    trainer.load(plan.state_path)
    t0 = time.process_time()
    pairs = [(space.make(a), float(acc)) for a, acc in samples]
    predictor = AccuracyPredictor.fit(space, pairs, spec.predictor, spec.seed)
    fit_cpu = time.process_time() - t0
    out: dict[str, Any] = {
        "predictor": {
            "cpu_s": sample_cpu_s + fit_cpu,
            "sample_cpu_s": sample_cpu_s,
            "fit_cpu_s": fit_cpu,
            **predictor.summary(),
            "sample_acc_range": [min(a for _, a in pairs), max(a for _, a in pairs)],
        }
    }
    print(
        f"  [{plan.name}] accuracy predictor: {len(pairs)} subnets, cv tau "
        f"{predictor.cv_kendall_tau:.3f}, MAE {predictor.cv_mae:.4f} "
        f"({out['predictor']['cpu_s']:.0f} CPU s)",
        flush=True,
    )
    with warnings.catch_warnings():  # the table's verdict is printed once by the benchmark
        warnings.simplefilter("ignore", UntrustedTableWarning)
        model = LatencyModel(
            "predict",
            table=LatencyTable.load(plan.table_path, warn=False),
            space=space,
            allow_untrusted_table=True,
        )
    measure = supernet_measurer(trainer.supernet, model, ds.input_shape)
    rows = []
    for target in plan.targets:
        t1 = time.process_time()
        s = specialize(space, predictor, model.predict, target, spec, measure_ms=measure)
        search_cpu = time.process_time() - t1
        figures, extract_cpu, ft_cpu = _deploy(
            trainer, s.arch, plan.finetune_epochs, plan.config.seed
        )
        rows.append(
            {
                "target_ms": target,
                "specialized": s.to_dict() | {"history": None},
                "search_cpu_s": search_cpu,
                "extract_cpu_s": extract_cpu,
                "finetune_cpu_s": ft_cpu,
                **figures,
            }
        )
        rounds = "; ".join(
            f"limit {r['limit_ms']:.4f} pred {r['predicted_ms']:.4f} meas {r['measured_ms']:.4f}"
            for r in s.refinement
        )
        print(
            f"  [{plan.name}] target {target:.4f} ms: {len(s.refinement)} measured round(s) "
            f"({rounds}; stop: {s.refine_stop}), predicted acc {s.predicted_acc:.4f}, "
            f"extracted val {figures['extracted']['val']:.4f}, {search_cpu + extract_cpu:.1f} "
            "CPU s",
            flush=True,
        )
    out["targets"] = rows
    return out


def extracted_job(
    config: OFAConfig, state_path: str, archs: list[dict[str, Any]], finetune_epochs: int
) -> dict[str, Any]:
    """Each arch extracted from the saved supernet (BN recalibrated), evaluated, fine-tuned."""
    ds, space = _data()
    t0 = time.process_time()
    trainer = OFATrainer(space, ds, config)
    trainer.load(state_path)
    rows = [_deploy(trainer, space.make(a), finetune_epochs, config.seed)[0] for a in archs]
    return {"rows": rows, "cpu_s": time.process_time() - t0}


def scratch_job(arch: dict[str, Any], train: TrainConfig) -> dict[str, Any]:
    """``arch`` trained from scratch with ``train`` (its seed seeds init and batches)."""
    ds, space = _data()
    t0 = time.process_time()
    torch.manual_seed(train.seed)
    net = space.build(space.make(arch))
    train_model(net, ds.x_train, ds.y_train, train)
    net.eval()
    return {"acc": _accs(net, ds), "cpu_s": time.process_time() - t0}


# -- black-box search ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BlackBoxPlan:
    """One black-box search for one target, as a user would configure it."""

    index: int
    target_ms: float
    limit_ms: float
    table_path: str
    runs_dir: str
    trials: int
    trial_train: TrainConfig
    final_train: TrainConfig
    strategy_options: dict[str, Any] = field(default_factory=dict)


def blackbox_config(plan: BlackBoxPlan, setting: Setting) -> dict[str, Any]:
    """The experiment config of the search (what ``nasforge search`` would read)."""
    t = plan.trial_train
    return {
        "name": f"ofa_blackbox_{plan.index}",
        "runs_dir": plan.runs_dir,
        "seed": 0,  # the data split of every other figure (seed 0)
        "data": setting.data_section(),
        "space": {"name": "mobile", "options": SPACE_OPTIONS},
        "strategy": {"name": "evolution", "options": dict(plan.strategy_options)},
        "search": {"trials": plan.trials, "executor": "inline", "workers": 1},
        "train": {
            "epochs": t.epochs,
            "batch_size": t.batch_size,
            "optimizer": t.optimizer,
            "lr": t.lr,
            "weight_decay": t.weight_decay,
            "momentum": t.momentum,
            "label_smoothing": t.label_smoothing,
        },
        "objective": {"kind": "constraint", "target": plan.limit_ms},
        "latency": {
            "mode": "predict",
            "table": plan.table_path,
            "backend": "onnxruntime",
            "batch_size": LatencyTable.load(plan.table_path, warn=False).batch_size,
            "threads": 1,
            # the same table the OFA specialisation uses, whatever its verdict (printed)
            "allow_untrusted_table": True,
        },
        "final": {"epochs": 0, "export_onnx": False},
    }


def blackbox_cache(plan: BlackBoxPlan, setting: Setting) -> Path:
    """Where the figures of ``plan``'s search are cached (keyed by all that decides them)."""
    key = {
        "target_ms": plan.target_ms,
        "limit_ms": plan.limit_ms,
        "table": Path(plan.table_path).name,
        "trials": plan.trials,
        "trial_train": plan.trial_train.model_dump(mode="json"),
        "final_train": plan.final_train.model_dump(mode="json"),
        "strategy_options": plan.strategy_options,
        "data": setting.data_section(),
        "space": SPACE_OPTIONS,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return RESULTS / f"ofa_blackbox_{digest}.json"


def blackbox_job(plan: BlackBoxPlan) -> dict[str, Any]:
    """Search through the product, then retrain its best arch with the from-scratch recipe
    (or the cached figures of the same plan)."""
    ds, space = _data()
    cache = blackbox_cache(plan, _W["setting"])
    if cache.is_file():
        found: dict[str, Any] = json.loads(cache.read_text())
        found.update(index=plan.index, cached=str(cache.name))
        print(
            f"  [black-box {plan.index}] limit {plan.limit_ms:.4f} ms: cached in {cache.name} "
            f"(retrained val {found['acc']['val']:.4f}; {found['search_cpu_s']:.0f} + "
            f"{found['final_cpu_s']:.0f} CPU s when it ran)",
            flush=True,
        )
        return found
    cfg = parse_config(blackbox_config(plan, _W["setting"]), f"black-box search {plan.index}")
    run_dir = Path(plan.runs_dir) / cfg.name
    t0, w0 = time.process_time(), time.perf_counter()
    exp = Experiment(cfg, run_dir, console=Console(file=io.StringIO()), progress=False)
    with warnings.catch_warnings():  # the table's verdict is printed once by the benchmark
        warnings.simplefilter("ignore", UntrustedTableWarning)
        summary = exp.run(final=False)
    search_cpu = time.process_time() - t0
    if summary.best is None:
        return {"index": plan.index, "error": "no trial completed", "search_cpu_s": search_cpu}
    best = space.make(summary.best["arch"])
    fin = scratch_job(best.to_dict(), plan.final_train)
    print(
        f"  [black-box {plan.index}] limit {plan.limit_ms:.4f} ms: {summary.trials_complete} "
        f"trials, best trial val {summary.best['metrics'].get('val_acc', float('nan')):.4f}, "
        f"retrained val {fin['acc']['val']:.4f} ({search_cpu:.0f} + {fin['cpu_s']:.0f} CPU s)",
        flush=True,
    )
    result = {
        "index": plan.index,
        "target_ms": plan.target_ms,
        "limit_ms": plan.limit_ms,
        "arch": best.to_dict(),
        "trials": summary.trials_complete,
        "failed": summary.trials_failed,
        "best_trial_metrics": summary.best["metrics"],
        "search_cpu_s": search_cpu,
        "search_wall_s": time.perf_counter() - w0,
        "final_cpu_s": fin["cpu_s"],
        "acc": fin["acc"],
        "run_dir": str(run_dir),
    }
    cache.write_text(json.dumps(result, indent=1, default=str))
    return result
