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

Every stage is also compared with every earlier stage (:func:`~nasforge.compression.
quantization.runtime.paired` of their round medians from the same pass; the report's
``comparisons``). A stage measurably slower than an earlier one (stable interval below 1) is
flagged (``SLOWER`` warning) and not shipped: the shipped artifact is the last stage's that
is not measurably slower than any earlier stage's and within ``deploy.accuracy_budget``,
copied to ``model.deploy.onnx`` (the stage files keep their names; an INT8 stage's faster
runtime artifact, e.g. a ``.pt2`` for torch-inductor, is copied beside it as
``model.deploy.pt2``). An undecided comparison
is said (``UNDECIDED``), never resolved by a guess.

Inputs: ``compress.input_shape`` adapts the data (:func:`nasforge.data.adapt_input`); the
model is first run on two samples, and a model that does not run on the data's shape is a
one-line :class:`InputShapeError` naming the shape, the layer and the message.
:mod:`nasforge.compression.model_inputs` runs ONNX models and exported programs
(quantization only) through the same measurement and shipping code.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from nasforge.compression.config import CompressConfig, TargetConfig
from nasforge.compression.errors import UnsupportedModelError
from nasforge.compression.quantization import export_onnx
from nasforge.compression.quantization.runtime import (
    Latency,
    compare_speedups,
    file_size,
    ort_runner,
    paired,
    speedup_text,
    timing_config,
)
from nasforge.compression.report import write_html
from nasforge.compression.results import (
    Comparison,
    CompressionReport,
    StageOutput,
    StageResult,
)
from nasforge.compression.stages import PipelineState, Progress, build_stages
from nasforge.data import Dataset, adapt_input
from nasforge.hardware.timing import TimingConfig
from nasforge.train import TrainConfig, evaluate_accuracy

__all__ = [
    "DEPLOY_FILE",
    "CompressionReport",
    "InputShapeError",
    "StageResult",
    "prepare_inputs",
    "run_pipeline",
]
log = logging.getLogger("nasforge.compression")

#: the shipped artifact's file name in the output directory (a copy of one stage's file)
DEPLOY_FILE = "model.deploy.onnx"
#: stages that run on an ONNX model given as input
ONNX_STAGES = ("quantize_int8",)


class InputShapeError(UnsupportedModelError):
    """The model does not run on the data's shape (names both, and the layer)."""


def _shape_text(shape: tuple[int, ...]) -> str:
    return ",".join(str(d) for d in shape)


def _failing_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, str] | None:
    """``(layer, message)`` of the first failure when ``model`` runs on ``x``, or ``None``.
    The layer is the innermost module still running when the error was raised."""
    stack: list[str] = []
    failed: list[str] = []

    def pre(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:
            stack.append(name)

        return hook

    def post(*_: object) -> None:
        if stack:
            stack.pop()

    handles = []
    for name, m in model.named_modules():
        if name:
            handles.append(m.register_forward_pre_hook(pre(name)))
            handles.append(m.register_forward_hook(post))
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's model is reported
        failed = [f"layer {stack[-1]}" if stack else "the model's forward", str(exc).strip()]
    finally:
        for h in handles:
            h.remove()
    if not failed:
        return None
    first = failed[1].splitlines()[0] if failed[1] else "error"
    return failed[0], first[:300]


def prepare_inputs(
    model: nn.Module, dataset: Dataset, input_shape: tuple[int, ...] | None
) -> Dataset:
    """``dataset`` adapted to ``input_shape`` (when given), after checking that ``model``
    runs on two of its samples.

    Raises:
        DataError: the data cannot be adapted to ``input_shape`` (names both shapes).
        InputShapeError: the model fails on the data's shape (one line: the shape, the layer
            and its message, and what to pass).
    """
    ds = adapt_input(dataset, input_shape) if input_shape is not None else dataset
    shape = tuple(ds.input_shape)
    was = model.training
    model.eval()
    try:
        failure = _failing_layer(model, ds.x_train[:2])
    finally:
        model.train(was)
    if failure is None:
        return ds
    layer, msg = failure
    if input_shape is not None:
        raise InputShapeError(
            f"--input-shape {_shape_text(shape)}: the model does not run on inputs of shape "
            f"{shape} ({layer}: {msg})"
        )
    raise InputShapeError(
        f"the model does not run on {ds.name}'s input shape {shape} ({layer}: {msg}); "
        "pass --input-shape C,H,W (compress.input_shape) with the shape the model takes, "
        "and the data is adapted to it"
    )


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
    original = copy.deepcopy(model).eval()
    dataset = prepare_inputs(original, dataset, cfg.input_shape)
    shape = tuple(dataset.input_shape)
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
    return _finish(baseline, outputs, warnings, dataset, cfg, out, timing, say)


def _finish(
    baseline: StageOutput,
    outputs: tuple[StageOutput, ...],
    warnings: list[str],
    dataset: Dataset,
    cfg: CompressConfig,
    out: Path,
    timing: TimingConfig | None,
    say: Progress,
) -> CompressionReport:
    """Time every ONNX artifact in one interleaved pass per batch size, compare every stage
    with every earlier one, decide what ships, write the report."""
    say("measuring latency on onnxruntime (every artifact against every earlier one, interleaved)")
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
    comparisons = _comparisons(lat)
    deployable = _verdict(rows, warnings)
    deployable = _against_earlier(rows, comparisons, deployable, warnings)
    shipped, reason = _ship(rows, comparisons, cfg.deploy.accuracy_budget, warnings)
    shutil.copyfile(out / shipped.artifact, out / DEPLOY_FILE)
    runtime_file = next(
        (getattr(o, "runtime_artifact", "") for o in outputs if o.row == shipped.name), ""
    )
    if runtime_file and (out / runtime_file).is_file():
        target = DEPLOY_FILE.replace(".onnx", Path(runtime_file).suffix)
        shutil.copyfile(out / runtime_file, out / target)
        reason += f"; its INT8 runtime artifact {runtime_file} is shipped as {target}"
    details["test_accuracy_drop"] = rows[0].test_accuracy - rows[-1].test_accuracy
    details["shipped"] = {"row": shipped.name, "artifact": DEPLOY_FILE, "from": shipped.artifact}
    report = CompressionReport(
        tuple(rows),
        tuple(warnings),
        cfg.model_dump(mode="json"),
        details,
        deployable,
        outputs,
        tuple(comparisons),
        shipped.name,
        DEPLOY_FILE,
        reason,
    )
    (out / "report.json").write_text(report.to_json())
    write_html(report, out / "report.html")
    for w in warnings:
        say(f"WARNING: {w}")
    return report


def _comparisons(lat: dict[str, dict[int, Latency]]) -> list[Comparison]:
    """Every timed row against every earlier timed row, per batch size, paired over the
    rounds of the same pass (ratio = earlier / this: above 1, this row is faster)."""
    names = [k for k, m in lat.items() if m]
    out = []
    for j, stage in enumerate(names):
        for earlier in names[:j]:
            for bs, cand in lat[stage].items():
                base = lat[earlier].get(bs)
                if base is None:
                    continue
                s = paired(base, cand)
                out.append(
                    Comparison(
                        stage, earlier, bs, s.ratio, s.low, s.high, s.stable, speedup_text(s)
                    )
                )
    return out


def _against_earlier(
    rows: list[StageResult],
    comparisons: list[Comparison],
    deployable: bool | None,
    warnings: list[str],
) -> bool | None:
    """Warn about every row measurably slower than an earlier (non-original) row; the final
    row's verdict becomes ``False`` when it is one, ``None`` when it was faster than the
    original but a comparison with an earlier stage is undecided."""
    final = next((r for r in reversed(rows) if r.latency_ms), rows[0])
    original = rows[0].name
    slower: dict[str, list[Comparison]] = {}
    for c in comparisons:
        if c.verdict == "slower" and c.earlier != original:
            slower.setdefault(c.stage, []).append(c)
    for stage, cs in slower.items():
        what = "; ".join(f"vs {c.earlier} at batch {c.batch_size}: {c.label}" for c in cs)
        warnings.append(
            f"SLOWER: {stage} is measurably slower than an earlier stage ({what}); "
            "flagged, not shipped"
        )
    if final.name in slower or any(
        c.stage == final.name and c.verdict == "slower" for c in comparisons
    ):
        return False
    undecided = [
        c
        for c in comparisons
        if c.stage == final.name and c.earlier != original and c.verdict == "undecided"
    ]
    if undecided and deployable is not False:
        what = "; ".join(f"vs {c.earlier} at batch {c.batch_size}" for c in undecided)
        warnings.append(
            f"UNDECIDED: could not decide whether {final.name} is slower than an earlier stage "
            f"({what}: host busy or too few rounds); re-run on a quiet host"
        )
        return None
    return deployable


def _ship(
    rows: list[StageResult], comparisons: list[Comparison], budget: float, warnings: list[str]
) -> tuple[StageResult, str]:
    """The row whose artifact ships and why: the last timed ONNX row that is not measurably
    slower than any earlier row and loses at most ``budget`` test top-1 vs the original
    (the original when none qualifies)."""
    original = rows[0]
    timed = [r for r in rows if r.latency_ms and r.artifact.endswith(".onnx")]
    skipped: list[str] = []
    for r in reversed(timed):
        if r.name == original.name:
            break
        slow = [c for c in comparisons if c.stage == r.name and c.verdict == "slower"]
        drop = original.test_accuracy - r.test_accuracy
        if slow:
            c = slow[0]
            skipped.append(f"{r.name} is slower than {c.earlier} at batch {c.batch_size}")
        elif drop > budget:
            skipped.append(
                f"{r.name} loses {drop * 100:.2f} test points (budget {budget * 100:.2f})"
            )
        else:
            undecided = [c for c in comparisons if c.stage == r.name and c.verdict == "undecided"]
            why = (
                f"{r.name}: the last stage not measurably slower than an earlier one and within "
                f"the accuracy budget ({budget * 100:.2f} points)"
            )
            if undecided:
                why += (
                    f"; UNDECIDED against {len(undecided)} earlier stage/batch pair(s) "
                    "(host busy or too few rounds): not shown slower, not shown faster"
                )
            if skipped:
                why += "; not shipped: " + "; ".join(skipped)
            return r, why
    why = "original: no compressed stage qualified"
    if skipped:
        why += " (" + "; ".join(skipped) + ")"
    elif len(timed) <= 1:
        why = "original: no stage produced an ONNX artifact"
    if len(timed) > 1:
        warnings.append(f"SHIPPED THE ORIGINAL: {why}")
    return original, why


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
