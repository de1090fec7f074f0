"""The compression pipeline: the FP32 baseline, then the configured stages in order, then
every ONNX artifact timed on the target.

``run_pipeline`` takes a trained float model and a dataset, writes its artifacts to
``out_dir`` (``model.fp32.onnx``, and per stage e.g. ``pruning_plan.json``,
``model.pruned.onnx``, ``model.int8.onnx`` or ``model.int4.pt``; then ``report.json`` and
``report.html``) and returns the :class:`CompressionReport`. The stages come from
``compress.stages`` (or the legacy ``prune``/``quantize`` sections) through the stage
registry -- the pipeline knows none of them by name. Decisions (QAT or not, mixed precision)
use the validation split; the table reports test accuracy. Every latency is measured on the
target backend, all artifacts interleaved in one session, so ratios are comparable.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from nasforge.compression.config import CompressConfig, TargetConfig
from nasforge.compression.quantization import export_onnx
from nasforge.compression.quantization.runtime import compare_latency, file_size, ort_runner
from nasforge.compression.report import write_html
from nasforge.compression.results import CompressionReport, StageOutput, StageResult
from nasforge.compression.stages import PipelineState, Progress, build_stages
from nasforge.data import Dataset
from nasforge.train import TrainConfig, evaluate_accuracy

__all__ = ["CompressionReport", "StageResult", "run_pipeline"]
log = logging.getLogger("nasforge.compression")


def run_pipeline(
    model: nn.Module,
    dataset: Dataset,
    cfg: CompressConfig,
    out_dir: str | Path,
    teacher: nn.Module | None = None,
    progress: Progress | None = None,
    train: TrainConfig | None = None,
) -> CompressionReport:
    """Compress ``model`` (not modified) on ``dataset``; write artifacts and the report.

    Args:
        model: the trained float model.
        dataset: train (fine-tuning, calibration), val (decisions) and test (the table).
        cfg: the stages and their sections.
        out_dir: created if missing; artifacts and reports are written there.
        teacher: for distillation; defaults to a frozen copy of ``model``.
        progress: ``progress(message)`` is called as each step starts.
        train: the training recipe every training stage derives from; default
            ``cfg.finetune.train_config(cfg.seed)``.

    Raises:
        ConfigError: an unknown stage or stage option (before any work is done).
        CompressionError: subclasses for inputs a stage cannot handle (naming the layer
            or field).
    """
    say = progress or log.info
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = build_stages(cfg)
    recipe = train if train is not None else cfg.finetune.train_config(cfg.seed)
    warnings = [w for i, s in enumerate(stages) for w in s.check(stages[i + 1 :], recipe)]
    torch.manual_seed(cfg.seed)
    shape = tuple(dataset.input_shape)
    original = copy.deepcopy(model).eval()
    teacher = (teacher or copy.deepcopy(original)).eval()

    say("exporting the FP32 baseline")
    fp32 = export_onnx(original, out / "model.fp32.onnx", shape)
    baseline = StageOutput(
        "",
        "original",
        evaluate_accuracy(original, dataset.x_test, dataset.y_test),
        file_size(fp32),
        fp32.name,
    )
    state = PipelineState(
        model=copy.deepcopy(original),
        teacher=teacher,
        dataset=dataset,
        input_shape=shape,
        out_dir=out,
        train=recipe,
        distill=cfg.distill,
        target=cfg.target,
        seed=cfg.seed,
        say=say,
    )
    for stage in stages:
        result = stage.run(state)
        state.outputs.append(result)
        warnings.extend(result.warnings)
    outputs = tuple(state.outputs)

    say("measuring latency on onnxruntime")
    timed = {o.row: out / o.artifact for o in (baseline, *outputs) if o.artifact.endswith(".onnx")}
    lat = _measure(timed, dataset, cfg.target)
    details: dict[str, object] = {}
    for o in outputs:
        details.update(o.details())
    details["latency"] = lat
    base = lat["original"]
    rows = []
    for o in (baseline, *outputs):
        if not o.row:
            continue
        ms = lat.get(o.row, {})
        sp = {bs: base[bs] / v for bs, v in ms.items() if bs in base and v > 0}
        rows.append(
            StageResult(o.row, o.test_accuracy, o.size_bytes, dict(ms), sp, o.artifact, o.notes)
        )
    deployable = _verdict(rows, base, warnings)
    details["test_accuracy_drop"] = rows[0].test_accuracy - rows[-1].test_accuracy
    report = CompressionReport(
        tuple(rows), tuple(warnings), cfg.model_dump(mode="json"), details, deployable, outputs
    )
    (out / "report.json").write_text(report.to_json())
    write_html(report, out / "report.html")
    for w in warnings:
        say(f"WARNING: {w}")
    return report


def _verdict(rows: list[StageResult], base: dict[int, float], warnings: list[str]) -> bool:
    """Whether the last timed row is faster than the original at every batch size (a
    warning with the numbers is appended when it is not)."""
    final = next((r for r in reversed(rows) if r.latency_ms), rows[0])
    if final.name == "original":
        return True
    slow = [bs for bs, s in final.speedup.items() if s <= 1.0]
    if not slow:
        return True
    nums = ", ".join(
        f"batch {bs}: {base[bs]:.3f} -> {final.latency_ms[bs]:.3f} ms ({final.speedup[bs]:.2f}x)"
        for bs in slow
    )
    warnings.append(
        f"NOT FASTER: the compressed model ({final.name}) is not faster than "
        f"the original on onnxruntime ({nums})"
    )
    return False


def _measure(
    artifacts: dict[str, Path], ds: Dataset, target: TargetConfig
) -> dict[str, dict[int, float]]:
    """Median latency (ms) of every artifact at every batch size, interleaved per batch."""
    out: dict[str, dict[int, float]] = {k: {} for k in artifacts}
    for bs in target.batch_sizes:
        x = ds.x_test[:bs]
        if len(x) < bs:
            x = x.repeat((bs + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:bs]
        runners = {k: ort_runner(p, x, target.threads) for k, p in artifacts.items()}
        res = compare_latency(runners, {}, bs, target.threads, rounds=target.rounds, repeats=10)
        for k, r in res.items():
            out[k][bs] = r.median_ms
    return out
