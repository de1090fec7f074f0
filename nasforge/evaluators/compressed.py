"""`CompressedEvaluator` (``evaluator.kind: compressed``): a candidate is worth what its
*compressed, exported* model is worth (issue 15, joint architecture x compression search).

Per trial: the joint arch is split (:func:`~nasforge.space.joint.split_arch`) into the
architecture, the training-recipe overrides and the compression settings
(``compress/prune_ratio``, ``compress/bits``); the architecture is built and trained with
its recipe, then compressed by the compression pipeline's own registered stages (the same
:class:`~nasforge.compression.config.CompressConfig` -> :func:`~nasforge.compression.stages.
build_stages` path as ``nasforge compress``): channel pruning to ``prune_ratio`` (group_l2),
fine-tuning when the ratio is above 0, INT8 post-training quantization exported as a QDQ
ONNX model when ``bits == 8``; a float candidate (``bits == 32``) is exported as float ONNX.
The exported file is then timed on the target backend by :mod:`nasforge.hardware`'s harness
(:func:`~nasforge.hardware.timing.measure_onnx`, noise verdict included). The latency of a
compressed model is never predicted.

The stages run on a view of the dataset whose ``test`` split *is* the validation split, so
every accuracy a stage computes (its "test" row, the INT8 drop decisions) is a validation
accuracy: the search never touches the test split. :func:`compress_final` compresses the
retrained winner with the same stages through :func:`~nasforge.compression.pipeline.
run_pipeline`, which reports test accuracy once, in the final step.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nasforge.data import Dataset
from nasforge.errors import ConfigError
from nasforge.evaluators.base import (
    STABILITY_INFO,
    UNSTABLE_METRIC,
    Evaluator,
    EvaluatorContext,
    Fidelity,
    Reporter,
    Result,
    StopTrial,
)
from nasforge.evaluators.rung_checkpoint import RungCheckpoints, RungPolicy
from nasforge.evaluators.rung_train import plan_rung, train_rung, training_arch
from nasforge.evaluators.train import build_seeded, file_lock, stratified_subset, trial_recipe
from nasforge.space import Arch, SearchSpace
from nasforge.space.joint import split_arch
from nasforge.train import TrainConfig, evaluate_accuracy

if TYPE_CHECKING:
    from nasforge.compression.config import CompressConfig
    from nasforge.hardware.backends import BackendSpec
    from nasforge.hardware.timing import TimingConfig

#: the compression settings a joint arch may carry (``compress/<name>``) and their defaults
SETTINGS_DEFAULTS: dict[str, float] = {"prune_ratio": 0.0, "bits": 32}
BITS = (32, 8)


class CompressionFailed(RuntimeError):
    """A candidate's compression failed; the trial is recorded as failed with this one line.

    A ``RuntimeError`` on purpose: the executors record those as their message alone
    (no traceback), which is the one-line reason the trial list shows."""


class CompressedOptions(BaseModel):
    """``evaluator.options`` of ``evaluator.kind: compressed``.

    Attributes:
        finetune_epochs: fine-tuning epochs after channel pruning (ratio > 0; 0 skips it).
        finetune_lr: the fine-tuning learning rate (SGD, like ``compress.finetune``).
        backend: where the exported model is timed: an onnxruntime backend
            (``onnxruntime``, ``onnxruntime:parallel``). Default: ``latency.backend`` when it
            is one, else ``onnxruntime`` (the INT8 QDQ model runs on onnxruntime's integer
            kernels; a torch backend cannot run it).
        calibration: training samples the INT8 ranges are calibrated on.
        activations: INT8 activation format. Fixed per search (``uint8``, onnxruntime's
            usual QDQ format) rather than ``auto``: ``auto`` times every candidate format
            for every trial (the final step may still use it).
        round_to: pruned channel counts are rounded up to a multiple of this.
        min_keep: no channel group keeps fewer channels than this.
        keep_artifacts: keep each trial's files (pruning plan, exported ONNX) under
            ``<run>/compressed/<arch key>/`` instead of a temporary directory.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    finetune_epochs: int = Field(1, ge=0)
    finetune_lr: float = Field(0.01, gt=0)
    backend: str | None = None
    calibration: int = Field(256, ge=8)
    activations: Literal["uint8", "int8", "auto"] = "uint8"
    round_to: int = Field(8, ge=1)
    min_keep: int = Field(8, ge=1)
    keep_artifacts: bool = False


def parse_options(options: dict[str, Any]) -> CompressedOptions:
    """``options`` checked; a bad one is a one-line :class:`ConfigError` naming
    ``evaluator.options.<field>``."""
    try:
        return CompressedOptions.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or "?"
        names = ", ".join(CompressedOptions.model_fields)
        raise ConfigError(
            f"evaluator.options.{loc}: {err.get('msg')} (options of 'compressed': {names})"
        ) from None


def check_settings(settings: dict[str, Any]) -> dict[str, float]:
    """``{"prune_ratio": r, "bits": b}`` from a joint arch's ``compress/`` values, defaults
    filled in (ratio 0, 32 bits).

    Raises:
        ValueError: an unknown name, a ratio outside [0, 1) or bits other than 32 / 8."""
    unknown = sorted(set(settings) - set(SETTINGS_DEFAULTS))
    if unknown:
        raise ValueError(
            f"compress/{unknown[0]}: not a compression setting; known: "
            + ", ".join(f"compress/{k}" for k in SETTINGS_DEFAULTS)
        )
    out = {**SETTINGS_DEFAULTS, **settings}
    ratio, bits = float(out["prune_ratio"]), int(out["bits"])
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"compress/prune_ratio: must be in [0, 1), got {ratio}")
    if bits not in BITS:
        raise ValueError(f"compress/bits: must be one of {list(BITS)}, got {out['bits']}")
    return {"prune_ratio": ratio, "bits": bits}


def compress_config(
    settings: dict[str, Any],
    options: CompressedOptions,
    base: CompressConfig | None = None,
    seed: int = 0,
) -> CompressConfig:
    """The :class:`CompressConfig` that compresses a model with ``settings``: stages
    ``prune_channels`` (ratio, group_l2) and ``finetune`` when the ratio is above 0,
    ``quantize_int8`` when 8 bits. ``base`` (the config's ``compress:`` section, if any)
    gives every other section (target, deploy, distill ...); the stages list replaces its
    own. The per-trial evaluator and :func:`compress_final` both build their stages here,
    so the final model is compressed exactly as its trial was."""
    from nasforge.compression.config import CompressConfig

    s = check_settings(settings)
    stages: list[dict[str, Any]] = []
    if s["prune_ratio"] > 0:
        stages.append(
            {
                "name": "prune_channels",
                "ratio": s["prune_ratio"],
                "importance": "group_l2",
                "round_to": options.round_to,
                "min_keep": options.min_keep,
            }
        )
        stages.append({"name": "finetune", "epochs": options.finetune_epochs})
    if s["bits"] == 8:
        stages.append(
            {
                "name": "quantize_int8",
                "activations": options.activations,
                "calibration_size": options.calibration,
                # one fixed INT8 recipe per candidate: mixed precision and QAT would spend
                # a trial's budget on rescuing one candidate instead of comparing many
                "qat": "never",
                "mixed_precision": False,
            }
        )
    data = base.model_dump(mode="json", exclude={"stages"}) if base is not None else {}
    data.get("prune", {}).pop("method", None)  # the stages list is the whole pipeline
    data.get("quantize", {}).pop("mode", None)
    finetune = {**data.get("finetune", {}), "lr": options.finetune_lr}
    finetune["epochs"] = options.finetune_epochs
    return CompressConfig.model_validate(
        {**data, "stages": stages, "finetune": finetune, "seed": seed}
    )


def timed_backend_name(option: str | None, latency_backend: str) -> str:
    """The name of the backend compressed models are timed on, from the config alone:
    ``evaluator.options.backend`` (``option``), else ``latency.backend`` when it is an
    onnxruntime backend, else ``onnxruntime`` (:func:`onnx_backend`'s rule, for readers that
    build no latency model: doctor, the report).

    Raises:
        BackendError: ``latency.backend`` is not a registered backend."""
    from nasforge.hardware.backends import BackendSpec, OnnxRuntimeBackend

    if option:
        return option
    spec = BackendSpec.parse(latency_backend, threads=1)
    return latency_backend if isinstance(spec.backend, OnnxRuntimeBackend) else "onnxruntime"


def onnx_backend(name: str | None, latency: Any) -> BackendSpec:
    """The onnxruntime backend spec compressed models are timed on: ``name`` (the option),
    else ``latency.backend`` when it is an onnxruntime backend, else ``onnxruntime``; threads
    from the latency model (1 without one).

    Raises:
        ConfigError: ``name`` is not an onnxruntime backend (names the option)."""
    from nasforge.hardware.backends import BackendSpec, OnnxRuntimeBackend

    threads = latency.backend.threads if latency is not None else 1
    if name is not None:
        try:
            spec = BackendSpec.parse(name, threads=threads)
        except Exception as exc:  # noqa: BLE001 - BackendError names the registered ones
            raise ConfigError(f"evaluator.options.backend: {exc}") from None
        if not isinstance(spec.backend, OnnxRuntimeBackend):
            raise ConfigError(
                f"evaluator.options.backend: {name!r} cannot run the exported (INT8 QDQ) "
                "ONNX model; use onnxruntime or onnxruntime:parallel"
            )
        return spec
    if latency is not None and isinstance(latency.backend.backend, OnnxRuntimeBackend):
        chosen: BackendSpec = latency.backend
        return chosen
    return BackendSpec("onnxruntime", threads=threads)


def _validation_view(ds: Dataset) -> Dataset:
    """``ds`` whose test split is its validation split: what the stages call "test" accuracy
    is then validation accuracy, and the search never reads the test split."""
    return dataclasses.replace(
        ds, name=f"{ds.name} (validation as test)", x_test=ds.x_val, y_test=ds.y_val
    )


class CompressedEvaluator(Evaluator):
    """Train, compress, export and time each candidate (see the module docstring).

    Metrics: ``val_acc`` (the compressed model, validation split), ``val_acc_float`` (the
    trained float model before compression, validation), ``latency_ms`` (the exported
    compressed model measured on the onnxruntime target) with ``latency_unstable``,
    ``params`` and ``flops`` (of the compressed float graph: pruning shrinks them, INT8
    keeps them), ``size_bytes`` (the exported file), ``prune_ratio``, ``bits``,
    ``train_seconds``, ``compress_seconds``. :attr:`Result.info` has the noise verdict
    (``latency_stability``), the stages' rows and warnings, and the backend.

    Args:
        space: the (joint) space; the architecture is built by ``space.inner`` when joint.
        dataset: train (training, fine-tuning, calibration) and validation splits.
        train: the base training recipe (the trial's ``recipe/`` values override it).
        options: the evaluator's options.
        backend: the onnxruntime spec the exported model is timed on.
        batch_size: the timing batch size.
        timing: the harness settings.
        run_dir: the run directory: its ``.latency.lock`` is held while timing (parallel
            workers time one at a time); kept artifacts go under its ``compressed/``, rung
            checkpoints under its ``rungs/``.
        rungs: how multi-fidelity rungs train (``None``: each from scratch).

    Multi-fidelity (a :class:`Fidelity` budget with ``rungs``): the training continues the
    lower rung's checkpoint exactly as :class:`~nasforge.evaluators.train.TrainEvaluator`'s
    (:func:`~nasforge.evaluators.rung_train.train_rung`; ``budget_started_from``,
    ``info["epochs_trained"]``, cost = the increment, curve from epoch 1); compression then
    runs on the continued model as for any trial. The checkpoint is the float model, saved
    before compression, and is filed under the arch *without* its ``compress/`` labels
    (:func:`~nasforge.evaluators.rung_train.training_arch`): configurations that differ only
    in their compression share its training.
    """

    def __init__(
        self,
        space: SearchSpace,
        dataset: Dataset,
        train: TrainConfig,
        options: CompressedOptions,
        backend: BackendSpec,
        batch_size: int,
        timing: TimingConfig,
        run_dir: str | Path | None = None,
        rungs: RungPolicy | None = None,
    ) -> None:
        self.space = space
        self.dataset = dataset
        self.train = train
        self.options = options
        self.backend = backend
        self.batch_size = batch_size
        self.timing = timing
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.lock_path = self.run_dir / ".latency.lock" if self.run_dir is not None else None
        self.rungs = rungs
        self.checkpoints = RungCheckpoints(self.run_dir) if self.run_dir is not None else None

    def produces(self) -> frozenset[str]:
        return frozenset(
            (
                "val_acc",
                "val_acc_float",
                "latency_ms",
                UNSTABLE_METRIC,
                "params",
                "flops",
                "size_bytes",
                "prune_ratio",
                "bits",
                "train_seconds",
                "compress_seconds",
            )
        )

    def evaluate(
        self, arch: Arch, budget: float | Fidelity | None = None, reporter: Reporter | None = None
    ) -> Result:
        t0 = time.perf_counter()
        inner, recipe, settings = split_arch(self.space, arch)
        s = check_settings(dict(settings))
        cfg, fidelity = trial_recipe(self.train, dict(recipe), budget)
        fraction = fidelity.data_fraction
        ds = self.dataset
        if fraction < 1.0:  # the train evaluator's subset: same seed and fraction, same samples
            if not 0.0 < fraction:
                raise ConfigError(
                    f"budget data_fraction: expected a value in (0, 1], got {fraction}"
                )
            idx = stratified_subset(ds.y_train, fraction, self.train.seed)
            ds = dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx])
        model = build_seeded(self.space, inner, cfg.seed)
        trained = training_arch(self.space, arch)  # its checkpoint: before compression
        n = len(ds.y_train)
        rung = plan_rung(self.rungs, self.checkpoints, trained, cfg, budget, fraction, n)
        val = (ds.x_val, ds.y_val)
        run = train_rung(model, ds.x_train, ds.y_train, cfg, val, reporter, rung, arch.key)
        model.eval()
        metrics: dict[str, float] = {
            "val_acc_float": evaluate_accuracy(model, ds.x_val, ds.y_val),
            "train_seconds": time.perf_counter() - t0,
            "prune_ratio": s["prune_ratio"],
            "bits": s["bits"],
        }
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="nasforge-compressed-") as tmp:
            out = Path(tmp)
            if self.options.keep_artifacts:
                out = (self.run_dir or Path(tmp)) / "compressed" / arch.key
                out.mkdir(parents=True, exist_ok=True)
            compressed, info = self.compress_and_measure(model, ds, s, out, cfg.seed)
        metrics.update(compressed)
        metrics["compress_seconds"] = time.perf_counter() - t1
        stability = info.pop("_stability")
        if self.options.keep_artifacts and self.run_dir is not None:
            info["compression"]["dir"] = str(out)
        info.update(
            epochs=cfg.epochs,
            data_fraction=fraction,
            train_samples=len(ds.y_train),
            stopped_early=run.stopped,
            curve=run.whole,  # the float model's validation accuracy per epoch, from epoch 1
        )
        run.record(metrics, info)
        if recipe:
            info["recipe"] = dict(recipe)
        info[STABILITY_INFO] = stability
        return Result(metrics, cost_seconds=time.perf_counter() - t0, info=info)

    def compress_and_measure(
        self,
        model: torch.nn.Module,
        ds: Dataset,
        settings: dict[str, float],
        out: Path,
        seed: int,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Compress a trained ``model`` (changed in place) with ``settings`` by the pipeline's
        stages on ``ds``'s validation view, export it under ``out``, time the file on the
        target. Returns the metrics (``val_acc`` of the compressed model, ``latency_ms``,
        ``latency_unstable``, ``params``, ``flops``, ``size_bytes``) and the info
        (``compression``: settings, artifact, stage rows, warnings; ``latency_backend``;
        ``_stability``: the noise verdict). Also used to compress a model searched without
        compression (benchmarks/automl_joint.py).

        Raises:
            CompressionFailed: a stage, the export or the timing failed (one line).
        """
        from nasforge.compression.quantization import export_onnx
        from nasforge.compression.stages import PipelineState, build_stages
        from nasforge.hardware import count_flops, count_params
        from nasforge.hardware.timing import measure_onnx

        what = f"prune_ratio {settings['prune_ratio']:g}, bits {int(settings['bits'])}"
        view = _validation_view(ds)
        step = "configuring the stages"
        try:
            cc = compress_config(settings, self.options, seed=seed)
            state = PipelineState(
                model=model,
                teacher=model,
                dataset=view,
                input_shape=tuple(view.input_shape),
                out_dir=out,
                train=cc.finetune.train_config(seed),
                distill=cc.distill,
                target=cc.target,
                seed=seed,
                say=lambda _msg: None,
            )
            for stage in build_stages(cc):
                step = stage.name
                state.outputs.append(stage.run(state))
            step = "export"
            last = next((o for o in reversed(state.outputs) if o.artifact.endswith(".onnx")), None)
            if last is None:  # nothing compressed: the float model itself, exported
                path = export_onnx(state.model, out / "model.fp32.onnx", state.input_shape)
                val_acc = evaluate_accuracy(state.model, ds.x_val, ds.y_val)
            else:
                path, val_acc = out / last.artifact, last.test_accuracy  # test = validation
            onnx_bytes = path.read_bytes()
            step = "timing"
            with file_lock(self.lock_path):
                measured = measure_onnx(
                    onnx_bytes, state.input_shape, self.batch_size, self.backend, self.timing
                )
        except (CompressionFailed, StopTrial):
            raise
        except Exception as exc:  # noqa: BLE001 - any stage failure fails this trial only
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise CompressionFailed(
                f"compression failed ({what}) in {step}: {type(exc).__name__}: {first}"
            ) from exc
        metrics = {
            "val_acc": float(val_acc),
            "latency_ms": float(measured.median_ms),
            UNSTABLE_METRIC: 1.0 if measured.unstable else 0.0,
            "params": float(count_params(state.model)),
            "flops": float(count_flops(state.model, state.input_shape)),
            "size_bytes": float(len(onnx_bytes)),
        }
        info: dict[str, Any] = {
            "compression": {
                "settings": settings,
                "artifact": path.name,
                "stages": [
                    {
                        "stage": o.stage,
                        "row": o.row,
                        "val_acc": o.test_accuracy,
                        "size_bytes": o.size_bytes,
                    }
                    for o in state.outputs
                ],
                "warnings": [w for o in state.outputs for w in o.warnings],
            },
            "latency_backend": self.backend.label,
            "latency_batch_size": self.batch_size,
            "_stability": measured.stability.to_dict(),
        }
        return metrics, info


def _timing_setup(opts: CompressedOptions, latency: Any) -> tuple[BackendSpec, int, TimingConfig]:
    """Where and how a compressed model is timed: the onnxruntime spec
    (:func:`onnx_backend`), the batch size and the harness settings of the run's latency
    model (batch 1 and the model timing without one). The evaluator and
    :func:`measure_final_compressed` both take them from here, so the final figure is
    measured as the trials' were."""
    from nasforge.hardware.table import MODEL_TIMING

    spec = onnx_backend(opts.backend, latency)
    batch_size = latency.batch_size if latency is not None else 1
    timing = latency.timing if latency is not None else MODEL_TIMING
    return spec, batch_size, timing


def compressed_evaluator(context: EvaluatorContext, **options: Any) -> CompressedEvaluator:
    """``evaluator.kind: compressed`` (see :class:`CompressedOptions` for the options)."""
    opts = parse_options(options)
    if context.dataset is None:
        raise ConfigError("evaluator.kind: 'compressed' needs a dataset (data: section)")
    spec, batch_size, timing = _timing_setup(opts, context.latency)
    return CompressedEvaluator(
        context.space,
        context.dataset,
        context.train,
        opts,
        spec,
        batch_size,
        timing,
        context.run_dir,
        context.rungs,
    )


def _final_options(cfg: Any) -> CompressedOptions:
    """The experiment's ``evaluator.options`` when its evaluator is ``compressed`` (else the
    defaults): what its trials were compressed and timed with."""
    evaluator = getattr(cfg, "evaluator", None)
    raw = (
        dict(evaluator.options) if evaluator is not None and evaluator.kind == "compressed" else {}
    )
    return parse_options(raw)


def compress_final(
    cfg: Any, model: torch.nn.Module, dataset: Dataset, settings: dict[str, Any], out_dir: Path
) -> dict[str, Any]:
    """Compress the retrained winner (``model``, not modified) with its trial's compression
    ``settings`` (``prune_ratio``, ``bits``; the joint arch's ``compress/`` values) through
    :func:`~nasforge.compression.pipeline.run_pipeline`: the same stages as its trial
    (:func:`compress_config`, with the experiment's ``evaluator.options`` when the evaluator
    is ``compressed`` and its ``compress:`` section's other sections), artifacts and report
    under ``out_dir``. Test accuracy is reported here, once, as the final step's.

    Returns:
        The pipeline's report dict (``CompressionReport.to_dict``) with ``settings`` added.
    """
    from nasforge.compression.pipeline import run_pipeline

    opts = _final_options(cfg)
    cc = compress_config(settings, opts, getattr(cfg, "compress", None), getattr(cfg, "seed", 0))
    report = run_pipeline(model, dataset, cc, out_dir).to_dict()
    report["settings"] = check_settings(dict(settings))
    return report


def measure_final_compressed(
    cfg: Any,
    report: dict[str, Any],
    out_dir: Path,
    input_shape: tuple[int, ...],
    latency: Any,
) -> dict[str, Any]:
    """Time the compressed winner as its trial was timed: the artifact its trial was scored
    by (the last stage's ONNX file in ``report``, :func:`compress_final`'s; the float
    export when no stage made one) on the same onnxruntime backend, batch size and harness
    (:func:`_timing_setup` with the run's latency model ``latency``).

    Why measure again rather than take the pipeline's row: the pipeline times every
    artifact on plain onnxruntime at ``compress.target``'s batch sizes and threads, for its
    speed-up comparisons; the search's figure is the evaluator's backend and batch size, and
    the card's ``latency_ms`` must compare with the leaderboard's.

    Returns:
        ``artifact`` (file name under ``out_dir``), ``row`` (its report row),
        ``test_acc`` (the pipeline's test accuracy of that row), ``latency_ms`` (median, as
        the trials' ``latency_ms``), ``measurement``
        (:meth:`~nasforge.hardware.timing.LatencyMeasurement.to_dict`, its ``stability``
        the noise verdict), ``timing`` (warmup, repeats) and, when the pipeline shipped
        another row as its deployable file, ``shipped`` and ``shipped_reason``.
    """
    from nasforge.hardware.timing import measure_onnx

    outputs = [o for o in report.get("outputs", []) if str(o.get("artifact", "")).endswith(".onnx")]
    if outputs:
        row, artifact = str(outputs[-1].get("row", "")), str(outputs[-1]["artifact"])
        test_acc = outputs[-1].get("test_accuracy")
    else:  # nothing compressed: the trial timed the float model's export
        stages = report.get("stages") or [{}]
        row, artifact = "original", "model.fp32.onnx"
        test_acc = stages[0].get("test_accuracy")
    spec, batch_size, timing = _timing_setup(_final_options(cfg), latency)
    measured = measure_onnx(
        (out_dir / artifact).read_bytes(), input_shape, batch_size, spec, timing
    )
    out: dict[str, Any] = {
        "artifact": artifact,
        "row": row,
        "test_acc": test_acc,
        "latency_ms": float(measured.median_ms),
        "measurement": measured.to_dict(),
        "timing": {"warmup": timing.warmup, "repeats": timing.repeats},
    }
    shipped = report.get("shipped")
    if shipped and shipped != row:
        out["shipped"] = shipped
        out["shipped_reason"] = report.get("shipped_reason", "")
    return out
