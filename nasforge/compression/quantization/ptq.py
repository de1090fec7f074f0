"""Post-training static INT8 quantization, executed on ONNX Runtime's integer kernels.

``quantize_static_int8`` folds BN, calibrates activation ranges on a calibration set
(min-max, percentile, MSE or entropy), fake-quantizes weights per channel and exports a QDQ
ONNX model with INT8 weights. :func:`select_float_layers` measures -- rather than assumes --
which layers the target runs faster in FP32 than in INT8 (on x86, a 1-channel stem or a
wide-spatial depthwise conv can be), so the chosen format is the fast one on this machine.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from nasforge.compression.quantization.export import export_qdq
from nasforge.compression.quantization.qsim import QuantSim, QuantSpec, prepare
from nasforge.compression.quantization.runtime import compare_latency, ort_runner


def quantize_static_int8(
    model: nn.Module, calib_x: torch.Tensor, spec: QuantSpec | None = None, batch_size: int = 64
) -> QuantSim:
    """Prepare and calibrate a :class:`QuantSim` of ``model`` (not modified) on ``calib_x``."""
    sim = prepare(model, spec)
    return sim.calibrate([calib_x[i : i + batch_size] for i in range(0, len(calib_x), batch_size)])


@dataclass(frozen=True)
class FormatTrial:
    """End-to-end ONNX Runtime latency of one INT8 format candidate."""

    name: str
    spec: QuantSpec
    latency_ms: dict[int, float]


def format_candidates(model: nn.Module, base: QuantSpec | None = None) -> dict[str, QuantSpec]:
    """INT8 formats worth measuring: uint8 vs int8 activations, per-channel weights, and the
    same with a narrow-input stem (<= 4 input channels) kept in FP32, where integer kernels
    have too little work per output to win."""
    base = base or QuantSpec()
    cands = {
        "u8act_s8w_per_channel": replace(base, activations="uint8"),
        "s8act_s8w_per_channel": replace(base, activations="int8"),
    }
    stem = next(
        (n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))),
        None,
    )
    if stem is not None and cast(Any, model.get_submodule(stem)).in_channels <= 4:
        cands["u8act_s8w_per_channel_fp32_stem"] = replace(
            base, activations="uint8", exclude=tuple(base.exclude) + (stem,)
        )
    return cands


def choose_int8_format(
    model: nn.Module,
    calib_x: torch.Tensor,
    input_shape: Sequence[int],
    candidates: dict[str, QuantSpec],
    batch_sizes: Sequence[int] = (1, 32),
    threads: int = 1,
    workdir: str | Path | None = None,
) -> list[FormatTrial]:
    """Measure every candidate format end to end (interleaved with each other) and return
    the trials fastest first, ranked by the geometric mean over ``batch_sizes``."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(workdir or tmp)
        paths = {}
        for name, spec in candidates.items():
            paths[name] = export_qdq(
                quantize_static_int8(model, calib_x, spec), d / f"cand_{name}.onnx", input_shape
            )
        lat: dict[str, dict[int, float]] = {n: {} for n in candidates}
        for bs in batch_sizes:
            x = calib_x[:1].expand(bs, *calib_x.shape[1:]).contiguous()
            res = compare_latency(
                {n: ort_runner(p, x, threads) for n, p in paths.items()},
                {},
                bs,
                threads,
                rounds=5,
                repeats=10 if bs <= 4 else 3,
                warmup=3,
            )
            for n, r in res.items():
                lat[n][bs] = r.median_ms
    trials = [FormatTrial(n, candidates[n], lat[n]) for n in candidates]

    def score(t: FormatTrial) -> float:
        prod = 1.0
        for v in t.latency_ms.values():
            prod *= v
        return prod ** (1.0 / max(len(t.latency_ms), 1))

    return sorted(trials, key=score)
