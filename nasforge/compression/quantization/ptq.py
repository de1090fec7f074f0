"""Post-training static INT8 quantization, executed on ONNX Runtime's integer kernels.

``quantize_static_int8`` folds BN, calibrates activation ranges on a calibration set
(min-max, percentile, MSE or entropy), fake-quantizes weights per channel and exports a QDQ
ONNX model with INT8 weights. :func:`select_int8_format` measures -- rather than assumes --
which INT8 format (activation signedness, a 1-channel stem kept in FP32) the target runs
fastest: every candidate and the FP32 reference are timed in the same interleaved pass
(:func:`~nasforge.compression.quantization.runtime.compare_speedups`), so each candidate's
speed-up over FP32 has a 95% interval and a noise verdict. A candidate replaces the default
format only when it is measurably faster (the paired interval against the default above 1 at
some batch size, below it at none) on a stable pass; otherwise the default is kept and the
notes say why (an unstable pass, or intervals that overlap), so a busy host never picks a
format at random.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from nasforge.compression.quantization.export import export_onnx, export_qdq
from nasforge.compression.quantization.qsim import QuantSim, QuantSpec, prepare
from nasforge.compression.quantization.runtime import (
    Latency,
    compare_speedups,
    ort_runner,
    paired,
    speedup_text,
    timing_config,
)
from nasforge.hardware.noise import Speedup
from nasforge.hardware.timing import TimingConfig

#: the name the FP32 reference has in the format comparison
FP32_REFERENCE = "fp32"


def quantize_static_int8(
    model: nn.Module, calib_x: torch.Tensor, spec: QuantSpec | None = None, batch_size: int = 64
) -> QuantSim:
    """Prepare and calibrate a :class:`QuantSim` of ``model`` (not modified) on ``calib_x``."""
    sim = prepare(model, spec)
    return sim.calibrate([calib_x[i : i + batch_size] for i in range(0, len(calib_x), batch_size)])


@dataclass(frozen=True)
class FormatTrial:
    """End-to-end ONNX Runtime latency of one INT8 format candidate, and its speed-up over
    the FP32 reference measured in the same interleaved pass (batch size -> ``Speedup``
    with its 95% interval and verdict)."""

    name: str
    spec: QuantSpec
    latency_ms: dict[int, float]
    speedup: dict[int, Speedup] = field(default_factory=dict)

    @property
    def stable(self) -> bool:
        """Whether every speed-up of this candidate could be trusted."""
        return all(s.stable for s in self.speedup.values())

    def score(self) -> float:
        """Geometric mean of the speed-ups over FP32 across batch sizes (higher is faster);
        without speed-ups, the inverse geometric mean latency."""
        vals = [s.ratio for s in self.speedup.values()] or [
            1.0 / v for v in self.latency_ms.values() if v > 0
        ]
        return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else 0.0


@dataclass(frozen=True)
class FormatChoice:
    """The outcome of :func:`select_int8_format`.

    Attributes:
        trials: every candidate, the chosen one first, then the others fastest first.
        chosen: the chosen candidate's name.
        default: the default candidate (the first one given), kept unless another is
            measurably faster on a stable pass.
        notes: why the choice was made, in words (an unstable or overlapping comparison is
            said here).
        fp32_ms: batch size -> the FP32 reference's median latency in the same pass.
    """

    trials: tuple[FormatTrial, ...]
    chosen: str
    default: str
    notes: tuple[str, ...] = ()
    fp32_ms: dict[int, float] = field(default_factory=dict)

    @property
    def spec(self) -> QuantSpec:
        """The chosen format."""
        return self.trials[0].spec


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


def select_int8_format(
    model: nn.Module,
    calib_x: torch.Tensor,
    input_shape: Sequence[int],
    candidates: dict[str, QuantSpec],
    batch_sizes: Sequence[int] = (1, 32),
    threads: int = 1,
    workdir: str | Path | None = None,
    timing: TimingConfig | None = None,
) -> FormatChoice:
    """Measure every candidate format end to end against the FP32 model, all in one
    interleaved pass per batch size, and choose one.

    The first candidate is the default. Another replaces it only when, on a stable pass,
    its paired speed-up over the default has its 95% interval above 1 at some batch size
    and below 1 at none; otherwise the default is kept and :attr:`FormatChoice.notes` says
    why. ``timing`` defaults to 5 rounds of 10 calls (3 at batch sizes over 4).

    Raises:
        ValueError: no candidates.
    """
    if not candidates:
        raise ValueError("select_int8_format: no candidate formats")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(workdir or tmp)
        paths = {FP32_REFERENCE: export_onnx(model, d / "cand_fp32_reference.onnx", input_shape)}
        for name, spec in candidates.items():
            paths[name] = export_qdq(
                quantize_static_int8(model, calib_x, spec), d / f"cand_{name}.onnx", input_shape
            )
        passes: dict[int, dict[str, Latency]] = {}
        for bs in batch_sizes:
            x = calib_x[:1].expand(bs, *calib_x.shape[1:]).contiguous()
            cfg = timing or timing_config(rounds=5, repeats=10 if bs <= 4 else 3, warmup=3)
            runners = {n: ort_runner(p, x, threads) for n, p in paths.items()}
            passes[bs] = compare_speedups(runners, FP32_REFERENCE, bs, threads, cfg)
    trials = [
        FormatTrial(
            n,
            candidates[n],
            {bs: p[n].median_ms for bs, p in passes.items()},
            {bs: s for bs, p in passes.items() if (s := p[n].speedup) is not None},
        )
        for n in candidates
    ]
    return _choose(trials, passes)


def _choose(trials: list[FormatTrial], passes: dict[int, dict[str, Latency]]) -> FormatChoice:
    """The deterministic choice of :func:`select_int8_format` from its measured passes."""
    default = trials[0]
    ranked = sorted(trials, key=lambda t: -t.score())
    best = ranked[0]
    fp32_ms = {bs: p[FP32_REFERENCE].median_ms for bs, p in passes.items()}
    notes: list[str] = []
    chosen = default
    if best.name == default.name:
        shaky = [t.name for t in trials if not t.stable]
        if shaky:
            notes.append(
                f"INT8 format: kept the default {default.name}; the comparison was unstable "
                f"for {', '.join(shaky)} ({_reasons(trials)})"
            )
        else:
            notes.append(f"INT8 format: the default {default.name} measured fastest")
    else:
        vs = {bs: paired(p[default.name], p[best.name]) for bs, p in passes.items()}
        shown = ", ".join(f"b{bs} {speedup_text(v)}" for bs, v in vs.items())
        if not all(v.stable for v in vs.values()):
            notes.append(
                f"INT8 format: {best.name} looked faster than the default {default.name}, "
                f"but the comparison was unstable ({shown}); kept the default"
            )
        elif any(v.high < 1 for v in vs.values()) or not any(v.low > 1 for v in vs.values()):
            notes.append(
                f"INT8 format: {best.name} vs the default {default.name}: the 95% intervals "
                f"overlap ({shown}), no measurable difference; kept the default"
            )
        else:
            chosen = best
            notes.append(
                f"INT8 format: {best.name}, faster than the default {default.name} ({shown})"
            )
    vs_fp32 = ", ".join(f"b{bs} {speedup_text(s)}" for bs, s in chosen.speedup.items())
    if vs_fp32:
        notes.append(f"{chosen.name} vs FP32 in the same pass: {vs_fp32}")
    order = (chosen, *[t for t in ranked if t.name != chosen.name])
    return FormatChoice(order, chosen.name, default.name, tuple(notes), fp32_ms)


def _reasons(trials: Sequence[FormatTrial]) -> str:
    seen = [r for t in trials for s in t.speedup.values() for r in s.reasons]
    return "; ".join(dict.fromkeys(seen)) or "no reason recorded"


def choose_int8_format(
    model: nn.Module,
    calib_x: torch.Tensor,
    input_shape: Sequence[int],
    candidates: dict[str, QuantSpec],
    batch_sizes: Sequence[int] = (1, 32),
    threads: int = 1,
    workdir: str | Path | None = None,
    timing: TimingConfig | None = None,
) -> list[FormatTrial]:
    """:func:`select_int8_format`'s trials, the chosen one first (kept for callers that
    only need the list; the choice's notes are in :func:`select_int8_format`'s result)."""
    choice = select_int8_format(
        model, calib_x, input_shape, candidates, batch_sizes, threads, workdir, timing
    )
    return list(choice.trials)
