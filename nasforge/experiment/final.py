"""After the search: retrain the best (or the Pareto set) on train+val, test once, export, measure.

The final model is trained with the thread count the search's workers trained with
(``latency.threads``, see :class:`~nasforge.experiment.executors.ProcessExecutor`), not
torch's default of one thread per core: with another process busy on one of two cores, two
intra-op threads trained 2.3-7.8x slower per image than one (each step waits at a barrier for
the preempted thread), which is what made the demo's final retrain ~6x slower per image than
its trials. Latency is measured once, on the configured backend with the configured timing,
through :class:`~nasforge.hardware.model.LatencyModel`; its noise verdict goes on the card
(``latency_stability``) and, when the host stayed too busy to trust the figure, the console
says so loudly instead of printing it as a fact.

A joint architecture x compression search's winner ships as its compressed ONNX model, so
its card's top-level latency and test accuracy are that model's (timed on the onnxruntime
backend its trial was timed on), the float model's kept beside them under ``*_float`` names.

The latency model and the training recipe are the run's own
(:class:`~nasforge.experiment.setup.RunObjects`) when the caller passes them, so the final step
measures and trains exactly as the search did; without them they are built from the config.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nasforge.compression.pipeline import run_pipeline
from nasforge.data import Dataset
from nasforge.experiment.config import ExperimentConfig
from nasforge.experiment.export import export_onnx, onnx_max_abs_diff
from nasforge.experiment.fidelity_view import full_fidelity
from nasforge.experiment.latency_verdict import card_stability, latency_text
from nasforge.experiment.progress import RunLog
from nasforge.experiment.setup import RunObjects, make_latency_model, train_config
from nasforge.experiment.store import TrialRecord, TrialStore
from nasforge.hardware import count_flops, count_params, model_size_bytes
from nasforge.hardware.model import LatencyModel
from nasforge.modelfile import save_model
from nasforge.nn import fuse_bn
from nasforge.objectives import Objective, pareto_front
from nasforge.space import Arch, SearchSpace
from nasforge.space.joint import inner_space, recipe_train_config, split_arch
from nasforge.strategies.base import scalar
from nasforge.train import TrainConfig, TrainSection, evaluate_accuracy, train_model


def select_final(store: TrialStore, objective: Objective, top_k: int) -> list[TrialRecord]:
    """The best ``top_k`` trials by score, or up to ``top_k`` of the Pareto front (by accuracy).

    In a multi-fidelity run only the trials at the highest budget reached compete
    (:func:`~nasforge.experiment.fidelity_view.full_fidelity`): a cheap rung's score is not
    comparable with a full training's.
    """
    complete = full_fidelity([t for t in store.trials(("complete",)) if t.score is not None])
    if not complete:
        return []
    if objective.multi:
        front = [complete[i] for i in pareto_front([list(t.score) for t in complete])]  # type: ignore[arg-type]
        front.sort(key=lambda t: -t.metrics.get(objective.metric, 0.0))
        if len(front) <= top_k:
            return front
        # spread the picks along the front
        idx = sorted({round(i * (len(front) - 1) / max(top_k - 1, 1)) for i in range(top_k)})
        return [front[i] for i in idx]
    complete.sort(key=lambda t: -scalar(t.score))
    return complete[:top_k]


def finalize(
    cfg: ExperimentConfig,
    run_dir: Path,
    store: TrialStore,
    dataset: Dataset,
    space: SearchSpace,
    objective: Objective,
    console: Console,
    log: RunLog | None = None,
    objects: RunObjects | None = None,
) -> dict[str, Any] | None:
    """Retrain, test, measure and export the chosen trial(s); returns the first card.

    Cards go to ``best/card.json`` (and ``best/candidate<k>/`` for ``final.top_k > 1``) and
    to the store's ``final`` meta. Progress goes to ``log`` (one line per epoch). ``objects``:
    the run's built objects, whose latency model and training recipe are used (default:
    built from ``cfg``).
    """
    chosen = select_final(store, objective, cfg.final.top_k)
    if not chosen:
        console.print("[red]no trial completed: nothing to retrain[/]")
        return None
    latency_model = final_latency_model(cfg, space, objects.latency if objects else None)
    train = (
        objects.train.model_copy(update={"epochs": cfg.final.epochs})
        if objects is not None
        else train_config(cfg, cfg.final.epochs)
    )
    models = []
    for rank, trial in enumerate(chosen):
        out_dir = run_dir / "best" if rank == 0 else run_dir / "best" / f"candidate{rank}"
        msg = f"final: retraining trial {trial.id} on train+val for {cfg.final.epochs} epochs"
        searched = split_arch(space, trial.arch)[1]
        if searched:
            msg += (
                " with its searched recipe ("
                + ", ".join(f"{k}={_short(v)}" for k, v in searched.items() if k != "epochs")
                + ")"
            )
        if log is not None:
            log.say(msg)
        else:
            console.print(msg)
        models.append(
            finalize_one(cfg, trial, out_dir, dataset, space, console, log, latency_model, train)
        )
    store.set_meta("final", models)
    return models[0]


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def finalize_table(
    cfg: ExperimentConfig,
    run_dir: Path,
    store: TrialStore,
    space: SearchSpace,
    objective: Objective,
    console: Console,
) -> dict[str, Any] | None:
    """For a table benchmark: the best-by-validation arch and the table's reported (test) value."""
    chosen = select_final(store, objective, cfg.final.top_k)
    if not chosen:
        console.print("[red]no trial completed[/]")
        return None
    cards = []
    for trial in chosen:
        cards.append(
            {
                "trial_id": trial.id,
                "arch_key": trial.arch.key,
                "arch": trial.arch.to_dict(),
                "arch_description": space.describe(trial.arch),
                "space": space.name,
                "search_metrics": trial.metrics,
                "test_acc": trial.metrics.get("test_acc"),
                "latency_ms": trial.metrics.get("latency_ms"),
            }
        )
    out_dir = run_dir / "best"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "card.json").write_text(json.dumps(cards[0], indent=2, default=str))
    store.set_meta("final", cards)
    console.print(
        f"final: best by validation is trial {chosen[0].id}; the table reports "
        f"test accuracy {cards[0]['test_acc']}"
    )
    return cards[0]


@contextlib.contextmanager
def training_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the caller's count."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def final_latency_model(
    cfg: ExperimentConfig, space: SearchSpace, search_model: LatencyModel | None = None
) -> LatencyModel:
    """The latency model of the search (``search_model``, else built from ``cfg``), or for
    ``latency.mode: flops`` (where the search timed nothing) one that measures on
    ``latency.backend`` with the section's settings. The user's ``warmup`` and ``repeats`` are
    used as given."""
    model = search_model if search_model is not None else make_latency_model(cfg, space)
    if model is None:
        section = cfg.latency.model_copy(update={"mode": "measure", "table": None})
        model = LatencyModel.from_config(section, space)
    return model


def measure_final(
    latency_model: LatencyModel, arch: Arch, fused: torch.nn.Module, input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """Card fields for the chosen model's latency, measured once on the latency model's backend.

    Returns ``latency_ms`` (the configured statistic), ``latency_ms_<backend>`` (the same number
    under a name that says where it was measured), ``latency`` (backend, statistic, batch
    size, threads, warmup, repeats), ``latency_check`` (measured beside the search's
    prediction, if any), ``latency_ms_predicted``, the host ``fingerprint`` and
    ``latency_stability`` (the measurement's noise verdict,
    :meth:`~nasforge.hardware.noise.Stability.to_dict`: ``stable`` false with ``reasons`` when
    the host stayed too busy to trust ``latency_ms``).
    """
    check = latency_model.final_check(arch, fused, input_shape)
    fingerprint = check.pop("fingerprint", None)
    stability = check.pop("latency_stability", None)
    backend = latency_model.backend
    value = float(check["latency_ms_measured"])
    out: dict[str, Any] = {
        "latency_ms": value,
        f"latency_ms_{backend.label.replace(':', '_')}": value,
        "latency": {
            "backend": backend.label,
            "statistic": latency_model.statistic,
            "batch_size": latency_model.batch_size,
            "threads": backend.threads,
            "warmup": latency_model.timing.warmup,
            "repeats": latency_model.timing.repeats,
            "iqr_ms": check.get("latency_iqr_ms"),
        },
        "latency_check": check,
        "fingerprint": fingerprint,
        "latency_stability": stability,
    }
    if check.get("latency_ms_predicted") is not None:
        out["latency_ms_predicted"] = check["latency_ms_predicted"]
    return out


def _epoch_progress(log: RunLog | None, console: Console, epochs: int, what: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
        disable=log is None or not log.live,
        transient=False,
    )


def finalize_one(
    cfg: ExperimentConfig,
    trial: TrialRecord,
    out_dir: Path,
    dataset: Dataset,
    space: SearchSpace,
    console: Console,
    log: RunLog | None = None,
    latency_model: LatencyModel | None = None,
    train: TrainConfig | None = None,
) -> dict[str, Any]:
    """Retrain ``trial`` on train+val, test it once, measure it, export it; returns its card.

    ``latency_model`` and ``train`` (with the final epochs) default to those built from
    ``cfg`` (:func:`final_latency_model`, :func:`~nasforge.experiment.setup.train_config`).

    A trial of a joint space (``automl:``) is retrained with its own recipe (the searched
    ``recipe/...`` values over ``train``), for ``final.epochs`` even when the search chose
    the epochs too: a trial's epochs are a search-time budget, the final's are the user's
    (the card keeps both: ``recipe_searched`` and ``final_epochs``). The saved arch is the
    architecture part, so ``nasforge export`` and the model file rebuild it with the plain
    space; with ``compress/...`` settings (or ``evaluator.kind: compressed``), the retrained
    model is compressed with them (``compression`` on the card), and the card's ``latency_ms``
    and ``test_acc`` are the compressed model's, timed as its trial was
    (:func:`compressed_card`; the float model's under ``latency_float_ms`` and
    ``test_acc_float``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    d = dataset
    epochs = cfg.final.epochs
    threads = cfg.latency.threads  # what the search's workers trained with
    arch, searched, settings = split_arch(space, trial.arch)
    arch_space = inner_space(space)
    base = train if train is not None else train_config(cfg, epochs)
    recipe = recipe_train_config(base, {k: v for k, v in searched.items() if k != "epochs"})
    t0 = time.perf_counter()
    model = arch_space.build(arch)
    x = torch.cat([d.x_train, d.x_val])
    y = torch.cat([d.y_train, d.y_val])
    what = f"final trial {trial.id}"
    progress = _epoch_progress(log, console, epochs, what)
    task = progress.add_task(what, total=epochs, loss="-")

    def report_epoch(epoch: int, metrics: dict[str, float]) -> None:
        loss = metrics.get("loss", float("nan"))
        progress.update(task, completed=epoch + 1, loss=f"{loss:.4f}")
        if log is not None:
            log.line(
                f"{what}: epoch {epoch + 1}/{epochs} loss {loss:.4f} "
                f"({time.perf_counter() - t0:.1f}s, {len(y)} images, {threads} thread(s))"
            )

    with progress, training_threads(threads):
        train_model(model, x, y, recipe, reporter=report_epoch)
        test_acc = evaluate_accuracy(model, d.x_test, d.y_test)  # the one use of the test split
    train_seconds = time.perf_counter() - t0
    model.eval()
    fused = fuse_bn(model)
    # weights + the arch that rebuilds them, never a pickled module (loading runs no code)
    save_model(
        model,
        arch,
        out_dir,
        space=cfg.space.name,
        input_shape=d.input_shape,
        num_classes=d.num_classes,
        space_options=cfg.space.options,
        plugins=cfg.plugins,
    )
    card: dict[str, Any] = {
        "trial_id": trial.id,
        "arch_key": arch.key,
        "arch": arch.to_dict(),
        "arch_description": arch_space.describe(arch),
        "space": space.name,
        "dataset": d.summary(),
        "input_shape": list(d.input_shape),
        "classes": list(d.classes),
        "search_metrics": trial.metrics,
        "test_acc": test_acc,
        "final_epochs": epochs,
        "final_train_seconds": train_seconds,
        "final_train_threads": threads,
        # the recipe the final model was trained with (every train: field but the older
        # cosine switch, folded into schedule)
        "recipe": recipe.model_dump(include=set(TrainSection.model_fields) - {"cosine"}),
    }
    if searched or settings:
        card["joint_arch"] = trial.arch.to_dict()
        card["recipe_searched"] = dict(searched)  # the trial's values (its epochs included)
    latency_model = latency_model if latency_model is not None else final_latency_model(cfg, space)
    card.update(measure_final(latency_model, arch, fused, d.input_shape))
    card.update(
        params=count_params(model),
        flops=count_flops(model, d.input_shape),
        size_bytes=model_size_bytes(fused),
    )
    if cfg.final.export_onnx:
        onnx_bytes = export_onnx(fused, d.input_shape, out_dir / "model.onnx")
        card["onnx_max_abs_diff"] = onnx_max_abs_diff(fused, onnx_bytes, d.x_test[:64])
        card["onnx_size_bytes"] = len(onnx_bytes)
    if settings or cfg.evaluator.kind == "compressed":
        # the joint search scored the trial after compressing it with these settings (the
        # report holds them; none searched: the evaluator's defaults, an exported float
        # model timed on onnxruntime); the compress: section's other stages apply as in the
        # trials
        from nasforge.evaluators.compressed import compress_final, measure_final_compressed

        card["compression"] = compress_final(cfg, model, dataset, dict(settings), out_dir)
        measured = measure_final_compressed(
            cfg, card["compression"], out_dir, tuple(d.input_shape), latency_model
        )
        card["compression"]["measured"] = measured
        compressed_card(card, measured)
    elif cfg.compress:
        card["compression"] = _compress(cfg, model, dataset, out_dir)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2, default=str))
    stability = card_stability(card)
    msg = final_line(card, train_seconds)
    if "onnx_max_abs_diff" in card:
        what = "float model.onnx" if "latency_float" in card else "ONNX"
        msg += f"; {what} max abs diff {card['onnx_max_abs_diff']:.2e}"
    if settings and isinstance(card.get("compression"), dict):
        told = ", ".join(f"{k} {_short(v)}" for k, v in settings.items())
        verdict = card["compression"].get("verdict") or "see the compression report"
        msg += f"\nfinal: compressed with the searched {told}: {verdict}"
        measured = card["compression"].get("measured") or {}
        if measured.get("shipped"):
            msg += (
                f"\nfinal: the card's latency and test accuracy are of {measured['artifact']} "
                f"(what the search scored); the pipeline shipped {measured['shipped']} instead: "
                f"{measured.get('shipped_reason', '')}"
            )
    if log is not None:
        log.say(msg)
    else:
        console.print(msg)
    if stability is not None and not stability.stable:
        _warn_unstable(card["latency_ms"], stability.label, console, log)
    return card


#: the float model's latency fields of a compressed winner's card, renamed so that the
#: top-level ``latency_ms`` (what ``nasforge show`` and the report read) is the compressed one
FLOAT_LATENCY_KEYS = {
    "latency_ms": "latency_float_ms",
    "latency": "latency_float",
    "latency_check": "latency_float_check",
    "latency_stability": "latency_float_stability",
}


def compressed_card(card: dict[str, Any], measured: dict[str, Any]) -> None:
    """Make ``card`` (changed in place) tell the compressed winner's figures.

    A joint architecture x compression search scored each trial by its compressed, exported
    model timed on onnxruntime, and that model is what ships; so the card's top-level
    ``latency_ms``, ``latency``, ``latency_stability`` and ``latency_ms_<backend>`` become
    ``measured``'s (:func:`~nasforge.evaluators.compressed.measure_final_compressed`: the
    compressed artifact timed as its trial was), and ``test_acc`` the compressed model's
    (the pipeline's test accuracy of that artifact). The float model's figures stay, under
    ``latency_float_ms``, ``latency_float`` (its backend and settings),
    ``latency_float_check``, ``latency_float_stability`` and ``test_acc_float``.
    """
    float_lat = card.get("latency") or {}
    card.pop(f"latency_ms_{str(float_lat.get('backend', '')).replace(':', '_')}", None)
    card.pop("latency_ms_predicted", None)  # the float arch's prediction: kept in its check
    for key, float_key in FLOAT_LATENCY_KEYS.items():
        card[float_key] = card.pop(key, None)
    m = measured["measurement"]
    value = float(measured["latency_ms"])
    card["latency_ms"] = value
    card[f"latency_ms_{str(m['backend']).replace(':', '_')}"] = value
    card["latency"] = {
        "backend": m["backend"],
        "statistic": "median",  # as the trials' latency_ms
        "batch_size": m["batch_size"],
        "threads": m["threads"],
        "warmup": measured["timing"]["warmup"],
        "repeats": measured["timing"]["repeats"],
        "iqr_ms": m.get("iqr_ms"),
        "model": (
            f"compressed ({measured['artifact']})"
            if measured.get("row") != "original"
            else f"exported float model ({measured['artifact']})"
        ),
    }
    card["latency_stability"] = m.get("stability")
    card["test_acc_float"] = card.get("test_acc")
    if measured.get("test_acc") is not None:
        card["test_acc"] = float(measured["test_acc"])


def final_line(card: dict[str, Any], train_seconds: float) -> str:
    """The console's and the log's ``final:`` line: test accuracy and latency of what the
    card describes (for a compressed winner, the compressed model's, with the float model's
    beside them)."""
    lat = card["latency"]
    compressed = "latency_float" in card
    what = f"; {lat['model']}" if compressed else ""
    acc = f"{card['test_acc']:.4f}"
    if compressed and isinstance(card.get("test_acc_float"), float):
        acc += f" (float model {card['test_acc_float']:.4f})"
    msg = (
        f"final: test accuracy {acc}, latency "
        f"{latency_text(card['latency_ms'], card_stability(card))} "
        f"({lat['statistic']} on {lat['backend']}, batch {lat['batch_size']}, "
        f"{lat['threads']} thread(s), {lat['repeats']} repeats{what})"
    )
    flat = card.get("latency_float") or {}
    if compressed and card.get("latency_float_ms") is not None:
        stab = card_stability({"latency_stability": card.get("latency_float_stability")})
        msg += (
            f"; float model {latency_text(card['latency_float_ms'], stab)} "
            f"({flat.get('statistic')} on {flat.get('backend')})"
        )
    return msg + f"; trained in {train_seconds:.1f}s"


def _warn_unstable(value_ms: float, label: str, console: Console, log: RunLog | None) -> None:
    """Say loudly (bold red on the console, and in the log) that the final latency stayed
    unstable after the harness re-measured it."""
    warning = (
        f"WARNING: the final latency {value_ms:.3f} ms is {label}: it is not a trustworthy "
        "figure; measure the model again on a quiet host before relying on it"
    )
    console.print(f"[bold red]{escape(warning)}[/]", highlight=False, soft_wrap=True)
    if log is not None:
        log.line(warning, echo=False)


def _compress(
    cfg: ExperimentConfig, model: torch.nn.Module, dataset: Dataset, out_dir: Path
) -> dict[str, Any]:
    if cfg.compress is None:
        raise ValueError("compress: no compress section")
    return run_pipeline(model, dataset, cfg.compress, out_dir).to_dict()
