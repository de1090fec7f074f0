"""The peers and artifacts of ``benchmarks/compression_models.py`` (issue 14), split from it:
onnxruntime's own static and dynamic quantizers, torchao PT2E, ``torch.compile``, the
Torch-Pruning peer (``benchmarks/prune_peer.py``), runners of shipped artifacts (``.onnx`` on
onnxruntime, ``.pt2`` compiled) and the per-layer INT8 decisions a report records.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.compression.quantization.runtime import ort_predict, ort_runner, ort_session
from nasforge.compression.results import CompressionReport
from nasforge.data import Dataset

Runner = Callable[[], object]


def why() -> str:
    """The exception being handled, in one line: its type and the first non-blank line of
    its message (cut at 300 characters)."""
    e = sys.exc_info()[1]
    if e is None:
        return "unknown error"
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {first}"[:300]


# --- peers ------------------------------------------------------------------------------------


def ort_static_tuned(fp32: Path, out: Path, calib: torch.Tensor) -> Path:
    """onnxruntime's own static quantizer, tuned: ``quant_pre_process`` (shape inference +
    graph optimisation) then QDQ, QUInt8 activations, QInt8 per-channel weights, MinMax
    calibration on ``calib``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src = fp32
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = out.with_name(out.stem + ".pre.onnx")
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        src = pre
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; say so and go on
        print(f"    ORT quant_pre_process failed ({why()}); quantizing the plain export")
    name = ort_session(src).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: calib[i : i + 64].numpy()} for i in range(0, len(calib), 64)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return out


def ort_dynamic(fp32: Path, out: Path) -> Path:
    """onnxruntime's dynamic quantizer (QInt8 weights; MatMulInteger / DynamicQuantizeMatMul)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return out


def torchao_pt2e(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """torchao PT2E with the X86 Inductor quantizer's defaults (static, per-channel), through
    nasforge's own capture (strict export first: the non-strict one fails on a ReLU module
    called twice, as in ResNet's basic block); deploys through ``torch.compile``."""
    from nasforge.compression.quantization.inductor import quantize_pt2e

    return quantize_pt2e(model, calib, tuple(calib.shape[1:]))


def compiled(model: nn.Module, xs: dict[int, torch.Tensor]) -> nn.Module:
    """``torch.compile`` with frozen weights (the CPU inference recipe), warmed up at every
    batch size of ``xs``."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    c = torch.compile(model, dynamic=False)
    with torch.no_grad():
        for x in xs.values():
            c(x)
    return c  # type: ignore[return-value]


def no_grad_runner(model: Callable[[torch.Tensor], object], x: torch.Tensor) -> Runner:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def prune_peer() -> Any:
    """benchmarks/prune_peer.py (engineer C), or None (the reason printed)."""
    try:
        import prune_peer as pp
    except Exception:  # noqa: BLE001
        print(f"    Torch-Pruning peer: not available (benchmarks/prune_peer.py: {why()})")
        return None
    if not hasattr(pp, "tp_prune"):
        print("    Torch-Pruning peer: not available (prune_peer has no tp_prune)")
        return None
    return pp


def load_pt2(path: Path) -> Any:
    """An exported program's module: F's safe loader when present, else torch.export.load."""
    try:
        from nasforge.compression.quantization import inductor  # type: ignore[attr-defined]

        return inductor.load_program(path)
    except ImportError:
        return torch.export.load(str(path)).module()


def artifact_runner(
    path: Path, xs: dict[int, torch.Tensor], threads: int
) -> Callable[[int], Runner]:
    """Runner factory of a shipped artifact: ``.onnx`` on onnxruntime, ``.pt2`` as a compiled
    exported program (F's inductor runtime when present, else ``torch.export.load``)."""
    if path.suffix == ".onnx":
        return lambda bs: ort_runner(path, xs[bs], threads)
    prog = load_pt2(path)
    try:
        from nasforge.compression.quantization import inductor  # type: ignore[attr-defined]

        return lambda bs: inductor.compiled_runner(prog, xs[bs])  # type: ignore[no-any-return]
    except ImportError:
        comp = compiled(prog, xs)
        return lambda bs: no_grad_runner(comp, xs[bs])


def layer_decisions(details: Any) -> list[dict[str, Any]]:
    """Every per-layer INT8 decision found in a report's details: dicts with a layer name and
    a reason (the key names of D's/E's report are matched loosely)."""
    found: list[dict[str, Any]] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            keys = set(v)
            if "reason" in keys and keys & {"layer", "name", "node"}:
                found.append(v)
                return
            for w in v.values():
                walk(w)
        elif isinstance(v, list | tuple):
            for w in v:
                walk(w)

    walk(details)
    return found


def is_float_decision(d: dict[str, Any]) -> bool:
    for k in ("int8", "quantized"):
        if isinstance(d.get(k), bool):
            return not d[k]
    for k in ("decision", "precision", "dtype", "choice", "format", "kept"):
        if isinstance(d.get(k), str):
            return "float" in d[k].lower() or "fp32" in d[k].lower()
    return False


def print_decisions(report: CompressionReport | None, label: str) -> None:
    """Which layers stayed float and why: the report's own reading
    (``nasforge.compression.report.layer_decisions``) when it has one, else any decision
    records found in its details."""
    if report is None:
        return
    try:
        from nasforge.compression import report as rep_mod

        rows = rep_mod.layer_decisions(report)  # type: ignore[attr-defined]
        lines = rep_mod.float_layers_text(report)  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        rows = []
    if rows:
        print(f"    {label}: {len(rows)} layer decisions, {len(lines)} kept float:")
        for ln in lines:
            print(f"      {ln}")
        return
    ds = layer_decisions(report.details)
    if not ds:
        print(
            f"    {label}: no per-layer INT8 decisions in the report (details keys: "
            f"{', '.join(sorted(report.details)) or 'none'})"
        )
        return
    fl = [d for d in ds if is_float_decision(d)]
    print(f"    {label}: {len(ds)} layer decisions, {len(fl)} kept float:")
    for d in fl:
        name = d.get("layer") or d.get("name") or d.get("node")
        op = d.get("op") or d.get("op_kind") or d.get("kind") or ""
        print(f"      {name} ({op}): {d.get('reason')}")


def stage_artifact(report: CompressionReport, out: Path, stage: str) -> tuple[Path, float] | None:
    """The artifact file and test top-1 of the last output of ``stage`` in ``report``."""
    for o in reversed(report.outputs):
        if o.stage == stage and o.artifact:
            return out / o.artifact, o.test_accuracy
    return None


def top1_onnx(path: Path, ds: Dataset, threads: int) -> float:
    logits = ort_predict(ort_session(path, threads), ds.x_test)
    return float((logits.argmax(1) == ds.y_test).float().mean())
