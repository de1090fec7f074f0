"""The compression pipeline: the FP32 baseline, then the configured stages in order, then
every ONNX artifact timed on the target.

``run_pipeline`` takes a trained float model and a dataset, writes its artifacts to
``out_dir`` (``model.fp32.onnx``, and per stage e.g. ``pruning_plan.json``,
``model.pruned.onnx``, ``model.int8.onnx`` or ``model.int4.pt``; then ``report.json`` and
``report.html``) and returns the :class:`CompressionReport`. The stages come from
``compress.stages`` (or the legacy ``prune``/``quantize`` sections) through the stage
registry -- the pipeline knows none of them by name. Decisions (QAT or not, mixed precision)
use the validation split; the table reports test accuracy. Every latency is measured on the
target backend, all artifacts interleaved in one pass per batch size, and every speed-up is
the paired ratio against the original in that same pass, with its 95% interval and noise
verdict (:func:`~nasforge.compression.quantization.runtime.compare_speedups`). A speed-up the
host was too busy to pin down is shown as ``unstable: host busy (...)`` and the "faster than
the original" verdict is then left undecided (``deployable is None``), never guessed.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from nasforge.compression.config import CompressConfig, TargetConfig
from nasforge.compression.quantization import export_onnx
from nasforge.compression.quantization.runtime import (
    Latency,
    compare_speedups,
    file_size,
    ort_runner,
    speedup_text,
    timing_config,
)
from nasforge.compression.report import write_html
from nasforge.compression.results import CompressionReport, StageOutput, StageResult
from nasforge.compression.stages import PipelineState, Progress, build_stages
from nasforge.data import Dataset
from nasforge.hardware.timing import TimingConfig
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
    timing: TimingConfig | None = None,
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
        timing: the harness settings of the final latency pass (default: ``cfg.target.rounds``
            rounds of 10 calls, reference kernel and noise policy on; see
            :func:`~nasforge.compression.quantization.runtime.timing_config`).

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

    say("measuring latency on onnxruntime (every artifact against the original, interleaved)")
    timed = {o.row: out / o.artifact for o in (baseline, *outputs) if o.artifact.endswith(".onnx")}
    lat = _measure(timed, dataset, cfg.target, timing or timing_config(cfg.target.rounds))
    details: dict[str, object] = {}
    for o in outputs:
        details.update(o.details())
    details["latency"] = {k: {bs: v.median_ms for bs, v in m.items()} for k, m in lat.items()}
    details["timing"] = {k: {bs: v.to_dict() for bs, v in m.items()} for k, m in lat.items()}
    rows = [
        _row(o, lat.get(o.row, {}), o.row == baseline.row) for o in (baseline, *outputs) if o.row
    ]
    deployable = _verdict(rows, warnings)
    details["test_accuracy_drop"] = rows[0].test_accuracy - rows[-1].test_accuracy
    report = CompressionReport(
        tuple(rows), tuple(warnings), cfg.model_dump(mode="json"), details, deployable, outputs
    )
    (out / "report.json").write_text(report.to_json())
    write_html(report, out / "report.html")
    for w in warnings:
        say(f"WARNING: {w}")
    return report


def _row(o: StageOutput, lat: dict[int, Latency], is_baseline: bool) -> StageResult:
    """The table row of ``o``: its latencies and, per batch size, its paired speed-up over
    the original with interval, verdict and printed label (an unstable one's reasons go to
    the notes)."""
    notes = list(o.notes)
    sp, ci, ok, label = {}, {}, {}, {}
    for bs, m in lat.items():
        if m.speedup is None:
            continue
        s = m.speedup
        sp[bs], ci[bs], ok[bs] = s.ratio, (s.low, s.high), s.stable
        label[bs] = "baseline" if is_baseline else speedup_text(s)
        if not s.stable and not is_baseline:
            notes.append(f"batch {bs} speed-up {label[bs]}")
    return StageResult(
        o.row,
        o.test_accuracy,
        o.size_bytes,
        {bs: m.median_ms for bs, m in lat.items()},
        sp,
        o.artifact,
        tuple(notes),
        speedup_ci=ci,
        speedup_stable=ok if not is_baseline else {bs: True for bs in ok},
        speedup_label=label,
    )


def _verdict(rows: list[StageResult], warnings: list[str]) -> bool | None:
    """Whether the last timed row is faster than the original at every batch size: ``True``
    when every speed-up is stable with its whole interval above 1; ``None`` (undecided, with
    a warning naming the batch sizes and reasons) when any is unstable; ``False`` (with a
    warning giving the intervals) when a stable one is not above 1."""
    final = next((r for r in reversed(rows) if r.latency_ms), rows[0])
    if final.name == rows[0].name:
        return True
    unstable = final.unstable_batches()
    if unstable:
        why = "; ".join(f"batch {bs}: {final.speedup_label[bs]}" for bs in unstable)
        warnings.append(
            f"UNDECIDED: could not decide whether the compressed model ({final.name}) is "
            f"faster than the original on onnxruntime ({why}); re-run on a quiet host"
        )
        return None
    slow = [bs for bs, (low, _) in final.speedup_ci.items() if low <= 1.0]
    if not slow:
        return True
    nums = ", ".join(
        f"batch {bs}: {rows[0].latency_ms[bs]:.3f} -> {final.latency_ms[bs]:.3f} ms "
        f"({final.speedup_label[bs]})"
        for bs in slow
    )
    warnings.append(
        f"NOT FASTER: the compressed model ({final.name}) is not faster than "
        f"the original on onnxruntime ({nums})"
    )
    return False


def _measure(
    artifacts: dict[str, Path], ds: Dataset, target: TargetConfig, timing: TimingConfig
) -> dict[str, dict[int, Latency]]:
    """Every artifact at every batch size, timed against ``original`` in one interleaved
    pass per batch size (see
    :func:`~nasforge.compression.quantization.runtime.compare_speedups`)."""
    out: dict[str, dict[int, Latency]] = {k: {} for k in artifacts}
    for bs in target.batch_sizes:
        x = ds.x_test[:bs]
        if len(x) < bs:
            x = x.repeat((bs + len(x) - 1) // len(x), *([1] * (x.dim() - 1)))[:bs]
        runners = {k: ort_runner(p, x, target.threads) for k, p in artifacts.items()}
        res = compare_speedups(runners, "original", bs, target.threads, timing)
        for k, r in res.items():
            out[k][bs] = r
    return out
