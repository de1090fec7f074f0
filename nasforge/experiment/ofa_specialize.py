"""``nasforge ofa specialize``: one latency target, one deployable subnet of a trained OFA run.

:func:`specialize_run` loads the run's config and its trained elastic supernet
(``supernet/final.pt``) into an :class:`~nasforge.oneshot.ofa.train.OFATrainer` (it trains
nothing), then:

1. the accuracy predictor's data: the inherited validation accuracy (BN recalibrated) of
   ``ofa.specialize.samples`` subnets, made once per trained supernet and kept in
   ``runs/<name>/ofa/samples.json`` (JSON: arch dicts and accuracies, with the SHA-256 of the
   ``final.pt`` they were measured on, the count and the seed; every later specialisation
   reuses it, a retrained supernet makes it again); the accuracy predictor fitted on them is
   kept beside them (``ofa/predictor.npz``, data only) and loaded by later targets;
2. the latency table of the target: ``--table`` when given; else the config's
   ``latency.table`` when it was built for the same backend and batch size on this machine;
   else one built here on the target with :class:`~nasforge.hardware.builder.TableBuilder`,
   kept in ``runs/<name>/ofa/tables/<backend>_t<threads>_b<batch>.json`` and reused by later
   targets (both caches: :mod:`nasforge.experiment.ofa_cache`);
3. :func:`~nasforge.oneshot.ofa.specialize.specialize` under the target (predictors only),
   with measured refinement (``ofa.specialize.refine_rounds``, ``--refine-rounds``; 0: off):
   each round's choice is extracted (weights copied, BN folded) and MEASURED on the target
   with the same harness, settings and statistic as the final measurement
   (:func:`~nasforge.experiment.final.measure_final`), and the limit is corrected by the
   measured/predicted ratio until the measurement lands in the window below the target
   (:mod:`nasforge.oneshot.ofa.refine`); every round goes on the card (``refinement``);
4. the chosen subnet extracted with BN recalibrated, optionally fine-tuned a few epochs with
   :func:`nasforge.train.train_model` (a tenth of the supernet's learning rate), tested once;
5. its latency MEASURED on the target with the hardware package's harness, with the noise
   verdict (an unstable host is said loudly, as the final step of a search says it). After a
   refinement this is the chosen round's measurement (``latency_from_round``): the card's
   measured latency is the one the choice was made on, not a second draw.

The result goes to ``runs/<name>/specialized/<label>/`` in the form of a search's ``best/``:
``model.pt`` + ``arch.json`` (:func:`nasforge.modelfile.save_model`, so ``nasforge compress``
and ``nasforge export`` read it), ``model.onnx`` and ``card.json``. The folder is written
beside the old one and renamed over it, so re-running a label replaces it whole or not at
all. The run's report is written again at the end (its ``ofa`` section lists every
specialisation, :mod:`nasforge.experiment.report_ofa`).

Bad input (no such run, a run that is not an OFA run or not trained yet, a target that is not
a positive number, an unreadable or mismatched table) raises a one-line
:class:`~nasforge.errors.NasforgeError` naming it; the CLI exits 2.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from nasforge.data import Dataset
from nasforge.errors import ConfigError, NasforgeError
from nasforge.experiment.config import ExperimentConfig, check_run_name, load_config
from nasforge.experiment.export import export_onnx, onnx_max_abs_diff
from nasforge.experiment.final import measure_final, training_threads
from nasforge.experiment.latency_verdict import card_stability, latency_text
from nasforge.experiment.lock import RunLock
from nasforge.experiment.ofa_cache import (
    load_or_fit_predictor,
    load_or_make_samples,
    resolve_table,
)
from nasforge.experiment.report import write_report
from nasforge.experiment.report_ofa import CARD_FILE, SPECIALIZED_DIR
from nasforge.experiment.setup import make_dataset, make_objective, make_space
from nasforge.experiment.store import TrialStore
from nasforge.hardware import count_flops, count_params, model_size_bytes
from nasforge.hardware.model import LatencyModel
from nasforge.modelfile import save_model
from nasforge.nn import fuse_bn
from nasforge.oneshot.ofa.elastic import ElasticMobileSupernet
from nasforge.oneshot.ofa.refine import MAX_REFINE_ROUNDS, Measured
from nasforge.oneshot.ofa.specialize import (
    AccuracyPredictor,
    SpecializeConfig,
    Specialized,
    specialize,
)
from nasforge.oneshot.ofa.train import OFAConfig, OFATrainer
from nasforge.space import Arch, SearchSpace
from nasforge.train import TrainConfig, evaluate_accuracy, train_model

#: where a run keeps its trained supernet (``nasforge ofa train`` writes it last)
FINAL_WEIGHTS = Path("supernet") / "final.pt"
#: the fine-tune's learning rate, as a fraction of the supernet's (a short, gentle adaptation)
FINETUNE_LR_FACTOR = 0.1
#: "within" the target: the measured latency within this fraction of it (the issue's +-10%)
WITHIN = 0.10


@dataclass
class OFARun:
    """A trained OFA run, loaded: its config, data, space, trainer and specialisation settings.

    Attributes:
        run_dir: the run directory.
        config: its validated ``config.yaml``.
        dataset: the data it was trained on (same split: same seed).
        space: the ``mobile`` space of its subnets.
        trainer: the trainer holding the trained supernet (never trained further here).
        train: the ``ofa.train`` recipe; specialize: the ``ofa.specialize`` settings.
        final_sha256: the SHA-256 of ``supernet/final.pt`` (keys the samples cache).
    """

    run_dir: Path
    config: ExperimentConfig
    dataset: Dataset
    space: SearchSpace
    trainer: OFATrainer
    train: OFAConfig
    specialize: SpecializeConfig
    final_sha256: str


# -- loading the run ----------------------------------------------------------------------------
def load_ofa_run(run_dir: Path) -> OFARun:
    """The run at ``run_dir`` with its trained supernet loaded.

    Raises:
        NasforgeError: no such directory, no ``config.yaml``, no ``ofa:`` section (not an OFA
            run), no ``supernet/final.pt`` (not trained yet), or weights that do not fit the
            run's space; each names the directory or file.
        ConfigError: the run's ``config.yaml`` is invalid (names the field).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NasforgeError(f"{run_dir}: no such run directory")
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise NasforgeError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = load_config(config_file)
    section = getattr(cfg, "ofa", None)
    if section is None:
        raise NasforgeError(
            f"{config_file}: not an OFA run (its config has no ofa: section); train an elastic "
            "supernet with `nasforge ofa train CONFIG` first"
        )
    final = run_dir / FINAL_WEIGHTS
    if not final.is_file():
        raise NasforgeError(
            f"{final}: missing: the run's supernet is not trained yet (or its training "
            f"stopped); finish it with `nasforge ofa train {config_file} --resume`"
        )
    train_cfg: OFAConfig = section.train_config(cfg.seed)
    spec_cfg: SpecializeConfig = section.specialize_config(cfg.seed)
    dataset = make_dataset(cfg)
    space = make_space(cfg, dataset)
    trainer = OFATrainer(space, dataset, train_cfg)  # type: ignore[arg-type]
    _load_weights(trainer, final)
    return OFARun(run_dir, cfg, dataset, space, trainer, train_cfg, spec_cfg, _sha256(final))


def _load_weights(trainer: OFATrainer, path: Path) -> None:
    """Load ``path`` (the supernet's state dict, or a whole trainer checkpoint) into
    ``trainer``, reading tensors only (``weights_only``: no code runs)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line naming it
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NasforgeError(f"{path}: not a readable supernet checkpoint ({why})") from None
    if not isinstance(state, Mapping):
        raise NasforgeError(f"{path}: holds a {type(state).__name__}, not a supernet state dict")
    if "supernet" in state and "opt_phase" in state:  # a whole trainer checkpoint
        trainer.load_state_dict(dict(state))
        return
    weights = state.get("supernet", state)
    try:
        trainer.supernet.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0]
        raise NasforgeError(
            f"{path}: the weights do not fit the supernet of the run's space ({first})"
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the specialisation --------------------------------------------------------------------------
def _check_inputs(
    target_ms: float, finetune_epochs: int, label: str | None, refine_rounds: int | None = None
) -> None:
    if refine_rounds is not None and not 0 <= refine_rounds <= MAX_REFINE_ROUNDS:
        raise ConfigError(
            f"--refine-rounds: expected 0 to {MAX_REFINE_ROUNDS} measured rounds (0: no "
            f"refinement), got {refine_rounds}"
        )
    if not (isinstance(target_ms, (int, float)) and math.isfinite(target_ms) and target_ms > 0):
        raise ConfigError(f"--target-ms: expected a positive number of ms, got {target_ms!r}")
    if finetune_epochs < 0:
        raise ConfigError(f"--finetune-epochs: expected 0 or more, got {finetune_epochs}")
    if label is not None:
        try:
            check_run_name(label)
        except ValueError as exc:
            raise ConfigError(f"--name: {label!r} {exc}") from None


def default_label(backend: str, batch_size: int, target_ms: float) -> str:
    """``<backend>_b<batch>_<target>ms`` (``onnxruntime_b1_2ms``, ``torch_parallel_b32_0.5ms``)."""
    return f"{backend.replace(':', '_')}_b{batch_size}_{target_ms:g}ms"


def finetune_config(train: OFAConfig, epochs: int, seed: int) -> TrainConfig:
    """The fine-tune's recipe: the supernet's, ``epochs`` long, at a tenth of its lr."""
    return TrainConfig(
        epochs=epochs,
        batch_size=train.batch_size,
        optimizer=train.optimizer,
        lr=train.lr * FINETUNE_LR_FACTOR,
        weight_decay=train.weight_decay,
        momentum=train.momentum,
        label_smoothing=train.label_smoothing,
        seed=seed,
    )


def supernet_cost(run_dir: Path) -> dict[str, Any]:
    """The supernet's training cost from the run's store (meta ``ofa``, else its epoch
    records): ``cpu_seconds`` and ``train_seconds`` (``None`` when unknown)."""
    db = run_dir / "trials.db"
    if not db.is_file():
        return {"cpu_seconds": None, "train_seconds": None}
    with TrialStore(db, create=False) as store:
        meta = store.get_meta("ofa") or {}
        records = store.epochs("ofa")
    meta = meta if isinstance(meta, Mapping) else {}
    train = sum(float(r.get("seconds") or 0.0) for r in records) if records else None
    cpu = meta.get("cpu_seconds")
    return {
        "cpu_seconds": float(cpu) if isinstance(cpu, (int, float)) else None,
        "train_seconds": train,
    }


def specialize_run(
    run_dir: Path,
    target_ms: float,
    backend: str | None,
    table: Path | None,
    batch_size: int | None,
    finetune_epochs: int,
    label: str | None,
    console: Console,
    refine_rounds: int | None = None,
) -> dict[str, Any]:
    """Specialise the trained OFA run at ``run_dir`` for ``target_ms`` and write
    ``specialized/<label>/`` (see the module docstring); returns its card.

    Args:
        run_dir: a run trained by ``nasforge ofa train``.
        target_ms: the latency target in ms (> 0), in the table's statistic.
        backend: the target backend; default the table's (with ``table``) or the config's
            ``latency.backend``.
        table: a latency table measured on the target (default: see
            :func:`~nasforge.experiment.ofa_cache.resolve_table`).
        batch_size: default the table's, else the config's ``latency.batch_size``.
        finetune_epochs: epochs of fine-tuning after extraction (0: none).
        label: the folder name under ``specialized/`` (default :func:`default_label`).
        console: where progress and the summary line go.
        refine_rounds: measured refinement rounds at most, overriding the config's
            ``ofa.specialize.refine_rounds`` (0: no refinement; ``None``: the config's).

    Raises:
        NasforgeError: bad input, naming it (see the module docstring); another process
            holds the run (``RunLocked``).
    """
    _check_inputs(target_ms, finetune_epochs, label, refine_rounds)
    t_start = time.perf_counter()
    run = load_ofa_run(Path(run_dir))
    spec = run.specialize
    if refine_rounds is not None:
        spec = spec.model_copy(update={"refine_rounds": refine_rounds})
    with RunLock(run.run_dir, "specialize"):
        t0 = time.perf_counter()  # the table first: a wrong one fails before any sampling
        tab, source = resolve_table(
            run.run_dir,
            run.space,
            run.config.latency,
            run.config.space.options,
            backend,
            table,
            batch_size,
            console,
        )
        table_s = time.perf_counter() - t0
        samples, samples_info = load_or_make_samples(
            run.run_dir,
            run.space,
            lambda arch: run.trainer.accuracy(arch, "val"),
            run.final_sha256,
            run.specialize,
            run.config.latency.threads,
            console,
        )
        t0 = time.perf_counter()  # fitted once per sample, kind and seed, then loaded
        predictor, predictor_info = load_or_fit_predictor(
            run.run_dir, run.space, samples, spec.predictor, spec.seed, console
        )
        predictor_s = time.perf_counter() - t0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            latency_model = LatencyModel(
                "predict", table=tab, space=run.space, allow_untrusted_table=True
            )
        for w in caught:
            console.print(f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False)
        measurements: dict[str, dict[str, Any]] = {}
        result = specialize(
            run.space,
            predictor,
            latency_model.predict,
            float(target_ms),
            spec,
            measure_ms=_measurer(run, latency_model, measurements),
        )
        name = label or default_label(tab.backend.label, tab.batch_size, float(target_ms))
        staging = run.run_dir / SPECIALIZED_DIR / f".{name}.{os.getpid()}.tmp"
        try:
            card = _deploy(
                run,
                result,
                predictor,
                latency_model,
                finetune_epochs,
                name,
                staging,
                console,
                measurements.get(result.arch.key),
            )
        except BaseException:  # a failed or interrupted specialisation leaves no half folder
            shutil.rmtree(staging, ignore_errors=True)
            raise
        card.update(
            table={
                "path": str(tab.path) if tab.path else None,
                "source": source,
                "backend": tab.backend.label,
                "threads": tab.backend.threads,
                "batch_size": tab.batch_size,
                "statistic": latency_model.statistic,
                "verdict": latency_model.verdict.status if latency_model.verdict else None,
            },
            samples=samples_info,
            predictor_cache=predictor_info,
        )
        card["seconds"].update(
            table=table_s,
            samples=0.0 if samples_info["reused"] else samples_info["seconds"],
            predictor=predictor_s,
            search=sum(r["search_seconds"] for r in result.refinement) or result.seconds,
            total=time.perf_counter() - t_start,
        )
        out_dir = _publish(run.run_dir, name, staging, card)
        _summary(card, out_dir, console)
        _rewrite_report(run)
    return card


def _measurer(
    run: OFARun, latency_model: LatencyModel, measurements: dict[str, dict[str, Any]]
) -> Callable[[Arch], Measured]:
    """:func:`supernet_measurer` of ``run``'s supernet on its data's input shape."""
    return supernet_measurer(
        run.trainer.supernet, latency_model, run.dataset.input_shape, measurements
    )


def supernet_measurer(
    supernet: ElasticMobileSupernet,
    latency_model: LatencyModel,
    input_shape: tuple[int, ...],
    measurements: dict[str, dict[str, Any]] | None = None,
) -> Callable[[Arch], Measured]:
    """The refinement's ``measure_ms``: the arch extracted from ``supernet`` (weights copied,
    BN folded: the deployed net's structure) and timed by :func:`measure_final` on the
    latency model's backend; each figure's card fields are kept in ``measurements`` by arch
    key when given (a retry replaces the unstable first one, as the refinement uses the
    retry)."""

    def measure(arch: Arch) -> Measured:
        model = supernet.extract(arch)
        model.eval()
        fields = measure_final(latency_model, arch, fuse_bn(model), input_shape)
        if measurements is not None:
            measurements[arch.key] = fields
        stability = fields.get("latency_stability")
        unstable = isinstance(stability, Mapping) and stability.get("stable") is False
        return Measured(float(fields["latency_ms"]), unstable, stability)

    return measure


def _deploy(
    run: OFARun,
    result: Specialized,
    predictor: AccuracyPredictor,
    latency_model: LatencyModel,
    finetune_epochs: int,
    label: str,
    staging: Path,
    console: Console,
    measured: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Extract (BN recalibrated), fine-tune, test once, measure and export the chosen subnet
    into the folder ``staging`` (named ``.<label>.<pid>.tmp``); returns its card.
    ``measured``: the chosen arch's measurement from the refinement (card fields of
    :func:`measure_final`), used as it is instead of measuring again."""
    d, cfg, arch = run.dataset, run.config, result.arch
    shutil.rmtree(staging, ignore_errors=True)
    t0 = time.perf_counter()
    with training_threads(cfg.latency.threads):
        model = run.trainer.extract(arch)
        inherited = evaluate_accuracy(model, d.x_val, d.y_val)
        extract_s = time.perf_counter() - t0
        finetuned, finetune_s = None, 0.0
        if finetune_epochs > 0:
            t1 = time.perf_counter()
            recipe = finetune_config(run.train, finetune_epochs, cfg.seed)
            with console.status(f"fine-tuning the subnet for {finetune_epochs} epoch(s)"):
                train_model(model, d.x_train, d.y_train, recipe)
            finetuned = evaluate_accuracy(model, d.x_val, d.y_val)
            finetune_s = time.perf_counter() - t1
        test_acc = evaluate_accuracy(model, d.x_test, d.y_test)  # the one use of the test split
    model.eval()
    fused = fuse_bn(model)
    t2 = time.perf_counter()
    if measured is None:
        measured = measure_final(latency_model, arch, fused, d.input_shape)
    measure_s = time.perf_counter() - t2 + sum(r["measure_seconds"] for r in result.refinement)
    chosen_round = next(
        (r["round"] for r in reversed(result.refinement) if r["arch_key"] == arch.key), None
    )
    save_model(
        model,
        arch,
        staging,
        space=cfg.space.name,
        input_shape=d.input_shape,
        num_classes=d.num_classes,
        space_options=cfg.space.options,
        plugins=cfg.plugins,
    )
    onnx_bytes = export_onnx(fused, d.input_shape, staging / "model.onnx")
    predicted = float(result.predicted_latency_ms)
    value = float(measured["latency_ms"])
    card: dict[str, Any] = {
        "label": label,
        "kind": "ofa_specialized",
        "path": str(run.run_dir / SPECIALIZED_DIR / label),
        "target_ms": float(result.target_ms),
        "objective": result.objective,
        "feasible": bool(result.feasible),
        "limit_ms": result.limit_ms,
        "refinement": result.refinement,
        "refine_stop": result.refine_stop,
        "latency_from_round": chosen_round,
        "arch_key": arch.key,
        "arch": arch.to_dict(),
        "arch_description": run.space.describe(arch),
        "space": run.space.name,
        "dataset": d.summary(),
        "input_shape": list(d.input_shape),
        "classes": list(d.classes),
        "latency_ms_predicted": predicted,
        **{k: v for k, v in measured.items() if k != "latency_ms_predicted"},
        "within_10pct": abs(value - result.target_ms) <= WITHIN * result.target_ms,
        "above_limit": value > result.target_ms,
        "predicted_above_limit": predicted > result.target_ms,
        "val_acc_inherited": inherited,
        "val_acc_predicted": float(result.predicted_acc),
        "val_acc_finetuned": finetuned,
        "test_acc": test_acc,
        "finetune_epochs": finetune_epochs,
        "accuracy_predictor": predictor.summary(),
        "search": {
            "strategy": result.strategy,
            "evaluations": result.evaluations,
            "score": result.score,
        },
        "seconds": {"extract": extract_s, "finetune": finetune_s, "measure": measure_s},
        "search_cost_reference": supernet_cost(run.run_dir),
        "params": count_params(model),
        "flops": count_flops(model, d.input_shape),
        "size_bytes": model_size_bytes(fused),
        "onnx_max_abs_diff": onnx_max_abs_diff(fused, onnx_bytes, d.x_test[:64]),
        "onnx_size_bytes": len(onnx_bytes),
    }
    return card


def _publish(run_dir: Path, label: str, staging: Path, card: dict[str, Any]) -> Path:
    """Write the card into the staging folder and rename it over ``specialized/<label>/``
    (an old folder of that label is moved aside first and removed after)."""
    (staging / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    target = run_dir / SPECIALIZED_DIR / label
    old = target.with_name(f".{label}.{os.getpid()}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _summary(card: Mapping[str, Any], out_dir: Path, console: Console) -> None:
    """One line: the subnet, predicted vs measured latency against the target, accuracies,
    seconds; then, when the measurement stayed unstable, a loud warning."""
    target, value = card["target_ms"], card["latency_ms"]
    stability = card_stability(card)
    rounds = card.get("refinement") or []
    if not card["feasible"]:
        where = (
            f"NO subnet {'measured' if rounds else 'is predicted'} within the limit: this is "
            f"the fastest one {'measured' if rounds else 'found'}, "
        )
    else:
        where = ""
    kind = "limit" if card["objective"] == "limit" else "target"  # weighted: no hard limit
    if card["within_10pct"] and not (kind == "limit" and card["above_limit"]):
        where += f"within +-10% of the {target:g} ms {kind}"
    elif card["above_limit"]:
        where += f"ABOVE the {target:g} ms {kind} by {100 * (value / target - 1):.1f}%"
    else:
        where += f"under the {target:g} ms {kind} by {100 * (1 - value / target):.1f}%"
    lat = card["latency"]
    sec = card["seconds"]
    tuned = card.get("val_acc_finetuned")
    acc = (
        f"val acc {card['val_acc_inherited']:.4f} inherited "
        f"(predicted {card['val_acc_predicted']:.4f})"
    )
    if tuned is not None:
        acc += f", {tuned:.4f} after {card['finetune_epochs']} fine-tune epoch(s)"
    line = (
        f"specialized {card['label']}: predicted {card['latency_ms_predicted']:.3f} ms, measured "
        f"{latency_text(value, stability)} ({lat['statistic']} on {lat['backend']}, batch "
        f"{lat['batch_size']}): {where}; {_rounds_text(rounds)}; {acc}; test acc "
        f"{card['test_acc']:.4f}; {sec['total']:.1f}s (table {sec['table']:.1f}, predictor "
        f"{sec['predictor'] + sec['samples']:.1f}, search {sec['search']:.1f}, measure "
        f"{sec['measure']:.1f}); in {out_dir}"
    )
    color = "red" if card["above_limit"] or not card["feasible"] else "green"
    console.print(f"[{color}]{escape(line)}[/]", highlight=False, soft_wrap=True)
    if stability is not None and not stability.stable:
        warning = (
            f"WARNING: the measured latency {value:.3f} ms is {stability.label}: it is not a "
            "trustworthy figure; measure the model again on a quiet host before relying on it"
        )
        console.print(f"[bold red]{escape(warning)}[/]", highlight=False, soft_wrap=True)


def _rounds_text(rounds: list[dict[str, Any]]) -> str:
    """``not refined by measurement``, or ``2 measured rounds`` (``(1 unstable)`` added when
    the harness flagged any)."""
    if not rounds:
        return "not refined by measurement"
    n = len(rounds)
    text = f"{n} measured round{'s' if n != 1 else ''}"
    shaky = sum(1 for r in rounds if r.get("unstable"))
    if shaky:
        text += f" ({shaky} unstable)"
    return text


def _rewrite_report(run: OFARun) -> None:
    """Write the run's report.json/html again (its ``ofa`` section lists this target)."""
    db = run.run_dir / "trials.db"
    if not db.is_file():
        return
    with TrialStore(db, create=False) as store:
        write_report(run.run_dir, run.config, store, run.space, make_objective(run.config))
