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
format at random. To keep this affordable, a cheap screening pass (3 rounds x 3 calls, smallest
batch size first) first drops candidates clearly slower than the default (or than the fastest
at every batch size); only the survivors get their validation accuracy and the deciding pass
(the notes and :attr:`FormatTrial.screened` say what was screened out and why).

Candidates are more than activation formats (:func:`format_candidates`, pruned by what the
model contains): op kinds kept in float (``QuantSpec.float_ops``), onnxruntime's own static
QDQ quantizer and, for models with Linear/attention, its dynamic quantization
(:mod:`~nasforge.compression.quantization.ortquant`), and -- when torchao is installed --
torchao PT2E run by torch inductor, timed in the same pass as the ONNX Runtime sessions. With
a validation split and a drop budget, a faster candidate that loses more than the budget is
not chosen.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from nasforge.compression.quantization.candidates import (
    MAX_OP_KIND_CANDIDATES,
    METHODS,
    OP_KIND_CANDIDATES,
    Candidate,
    _Builder,
    _inductor,
    _SameGraph,
    as_candidate,
    format_candidates,
    op_kinds,
)
from nasforge.compression.quantization.export import export_onnx
from nasforge.compression.quantization.qsim import QuantSim, QuantSpec, prepare
from nasforge.compression.quantization.runtime import (
    Latency,
    compare_speedups,
    ort_predict,
    ort_runner,
    ort_session,
    paired,
    speedup_text,
    timing_config,
)
from nasforge.hardware.noise import Speedup
from nasforge.hardware.timing import TimingConfig

__all__ = [  # the candidate names stay importable from here (split into candidates.py)
    "FP32_REFERENCE",
    "MAX_OP_KIND_CANDIDATES",
    "METHODS",
    "OP_KIND_CANDIDATES",
    "Candidate",
    "FormatChoice",
    "FormatTrial",
    "as_candidate",
    "choose_int8_format",
    "format_candidates",
    "full_config",
    "op_kinds",
    "predict_built",
    "quantize_static_int8",
    "screen",
    "screening_config",
    "select_int8_format",
]

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
    """End-to-end latency of one INT8 candidate, and its speed-up over the FP32 reference
    measured in the same interleaved pass (batch size -> ``Speedup`` with its 95% interval
    and verdict). ``method`` says how it was built (see :class:`Candidate`); ``drop`` is
    its validation top-1 drop vs the FP32 model (fraction), when measured; ``screened``:
    why it was left out of the deciding pass (its figures are then from the screening pass,
    at the batch sizes it ran), else ``""``."""

    name: str
    spec: QuantSpec
    latency_ms: dict[int, float]
    speedup: dict[int, Speedup] = field(default_factory=dict)
    method: str = "qdq"
    drop: float | None = None
    screened: str = ""

    @property
    def stable(self) -> bool:
        """Whether every speed-up of this candidate could be trusted."""
        return all(s.stable for s in self.speedup.values())

    @property
    def runtime(self) -> str:
        return Candidate(self.spec, self.method).runtime

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
            measurably faster on a stable pass (and, when accuracy was measured, within
            the drop budget).
        notes: why the choice was made, in words (an unstable or overlapping comparison,
            a faster candidate over the drop budget, a skipped candidate are said here).
        fp32_ms: batch size -> the FP32 reference's median latency in the same pass.
        built: candidate name -> its ONNX file (valid while ``workdir`` exists) or its
            torch module (``pt2e``).
        fp32_accuracy: the FP32 reference's validation top-1, when measured.
        runtime_chosen: the torch-runtime candidate (``pt2e``) that measured faster than
            the chosen ONNX Runtime candidate in the same pass (and within the drop
            budget), or ``""``. :attr:`chosen` is always an ONNX Runtime build (the
            artifact every stage is timed with); this one is the faster way to deploy it.
    """

    trials: tuple[FormatTrial, ...]
    chosen: str
    default: str
    notes: tuple[str, ...] = ()
    fp32_ms: dict[int, float] = field(default_factory=dict)
    built: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    fp32_accuracy: float | None = None
    runtime_chosen: str = ""

    @property
    def spec(self) -> QuantSpec:
        """The chosen format."""
        return self.trials[0].spec

    @property
    def method(self) -> str:
        """How the chosen candidate is built (see :class:`Candidate`)."""
        return self.trials[0].method

    @property
    def runtime(self) -> str:
        """Where the chosen candidate runs: ``onnxruntime`` or ``torch-inductor``."""
        return self.trials[0].runtime

    def trial(self, name: str) -> FormatTrial:
        return next(t for t in self.trials if t.name == name)


def _runner(built: Path | nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    if isinstance(built, Path):
        return ort_runner(built, x, threads)
    return cast(Callable[[], object], _inductor().compiled_runner(built, x, threads))


def predict_built(
    built: Path | nn.Module, x: torch.Tensor, threads: int = 1, batch_size: int = 256
) -> torch.Tensor:
    """Logits of a built candidate (ONNX file on onnxruntime, or a torch module)."""
    if isinstance(built, Path):
        return ort_predict(ort_session(built, threads), x, batch_size)
    with torch.no_grad():
        return torch.cat([built(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


#: the screening pass: this many interleaved rounds of :data:`SCREEN_CALLS` calls per
#: candidate, no re-measurement; it only drops candidates clearly slower than another
SCREEN_ROUNDS = 3
SCREEN_CALLS = 3


def screening_config(timing: TimingConfig | None = None) -> TimingConfig:
    """The cheap first pass of :func:`select_int8_format`: :data:`SCREEN_ROUNDS` rounds of
    :data:`SCREEN_CALLS` calls, one warm-up call (``timing``'s when given), no stray-round
    re-measurement, no reference kernel and no retry."""
    base = timing or timing_config(rounds=SCREEN_ROUNDS, repeats=SCREEN_CALLS, warmup=1)
    return replace(
        base,
        rounds=SCREEN_ROUNDS,
        repeats=SCREEN_ROUNDS * SCREEN_CALLS,
        max_remeasure=0,
        reference=False,
        policy=replace(base.policy, retries=0),
    )


def full_config(batch_size: int, timing: TimingConfig | None = None) -> TimingConfig:
    """The deciding pass of :func:`select_int8_format`: ``timing`` or 5 rounds of 10 calls
    (3 at batch sizes over 4), with at most one re-measurement: the whole pass again (twice
    the rounds) when unstable, no separate re-measurement of stray rounds."""
    cfg = timing or timing_config(rounds=5, repeats=10 if batch_size <= 4 else 3, warmup=3)
    return replace(
        cfg,
        max_remeasure=0,
        policy=replace(cfg.policy, retries=min(cfg.policy.retries, 1)),
    )


class _Runners:
    """Runners made on first use, one per batch size and model, and kept (sessions and torch
    compilations are shared by the screening and the deciding pass; a candidate screened
    out at a small batch size is never compiled for a larger one)."""

    def __init__(
        self, built: Mapping[str, Path | nn.Module], fp32: Path, x0: torch.Tensor, threads: int
    ) -> None:
        self.built, self.fp32, self.x0, self.threads = built, fp32, x0, threads
        self.made: dict[tuple[int, str], Callable[[], object]] = {}

    def get(self, bs: int, names: Sequence[str]) -> dict[str, Callable[[], object]]:
        x = self.x0[:1].expand(bs, *self.x0.shape[1:]).contiguous()
        out: dict[str, Callable[[], object]] = {}
        for n in (FP32_REFERENCE, *names):
            if (bs, n) not in self.made:
                self.made[bs, n] = (
                    ort_runner(self.fp32, x, self.threads)
                    if n == FP32_REFERENCE
                    else _runner(self.built[n], x, self.threads)
                )
            out[n] = self.made[bs, n]
        return out


def _pass(
    runners: _Runners, bs: int, names: Sequence[str], config: TimingConfig
) -> dict[str, Latency]:
    """One interleaved pass at ``bs`` over the FP32 reference and ``names``."""
    return compare_speedups(runners.get(bs, names), FP32_REFERENCE, bs, runners.threads, config)


def _trials(
    names: Sequence[str],
    cands: Mapping[str, Candidate],
    passes: dict[int, dict[str, Latency]],
    drops: Mapping[str, float],
) -> list[FormatTrial]:
    return [
        FormatTrial(
            n,
            cands[n].spec,
            {bs: p[n].median_ms for bs, p in passes.items()},
            {bs: s for bs, p in passes.items() if (s := p[n].speedup) is not None},
            cands[n].method,
            drops.get(n),
        )
        for n in names
    ]


def _screened(
    name: str,
    cand: Candidate,
    scr: dict[int, dict[str, Latency]],
    drop: float | None,
    why: str,
) -> FormatTrial:
    """The trial of a candidate left out of the deciding pass, from its screening rounds
    (at the batch sizes it ran)."""
    ps = {bs: p[name] for bs, p in scr.items() if name in p}
    return FormatTrial(
        name,
        cand.spec,
        {bs: v.median_ms for bs, v in ps.items()},
        {bs: v.speedup for bs, v in ps.items() if v.speedup is not None},
        cand.method,
        drop,
        why,
    )


def _geo_ratio(passes: dict[int, dict[str, Latency]], name: str) -> float:
    vals = [s.ratio for p in passes.values() if (s := p[name].speedup) is not None]
    vals = [v for v in vals if v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else 0.0


def _interval(v: Speedup) -> str:
    return f"{v.ratio:.2f}x [{v.low:.2f}, {v.high:.2f}]"


def screen(
    passes: dict[int, dict[str, Latency]],
    default: str,
    against_best: bool = True,
) -> dict[str, str]:
    """Candidates of a screening pass that are clearly slower, each with why; the default is
    never dropped. A candidate is clearly slower when its paired 95% interval lies below 1:

    * against the default at some batch size: an ONNX Runtime candidate could never
      replace the default, and a torch-runtime one could never replace the ONNX Runtime
      choice (the default, or one not measurably slower than it anywhere);
    * with ``against_best`` (all batch sizes measured), against the fastest candidate of
      the pass at every batch size.

    Noise can only keep a candidate (a wide interval does not lie below 1), never drop one.
    """
    names = [n for n in next(iter(passes.values())) if n != FP32_REFERENCE]
    if not names or default not in names:
        return {}
    best = max(names, key=lambda n: _geo_ratio(passes, n))
    out: dict[str, str] = {}
    for n in names:
        if n == default:
            continue
        slower = {bs: v for bs, p in passes.items() if (v := paired(p[default], p[n])).high < 1}
        if slower:
            shown = ", ".join(f"b{bs} {_interval(v)}" for bs, v in slower.items())
            out[n] = f"clearly slower than the default {default} ({shown})"
        if n in out or not against_best or n == best:
            continue
        vs_best = {bs: paired(p[best], p[n]) for bs, p in passes.items()}
        if all(v.high < 1 for v in vs_best.values()):
            shown = ", ".join(f"b{bs} {_interval(v)}" for bs, v in vs_best.items())
            out[n] = f"clearly slower than {best} ({shown})"
    return out


def select_int8_format(
    model: nn.Module,
    calib_x: torch.Tensor,
    input_shape: Sequence[int],
    candidates: Mapping[str, QuantSpec | Candidate],
    batch_sizes: Sequence[int] = (1, 32),
    threads: int = 1,
    workdir: str | Path | None = None,
    timing: TimingConfig | None = None,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    drop_budget: float | None = None,
) -> FormatChoice:
    """Measure the candidates end to end against the FP32 model and choose one.

    1. Every candidate is built (a non-default one that fails to build, or builds the same
       graph as an earlier one, is skipped: noted).
    2. Screening: all of them and the FP32 model in one cheap interleaved pass per batch
       size (:func:`screening_config`); candidates clearly slower (:func:`screen`) are
       dropped, with their screening latencies kept in the trials and the reason in the
       notes.
    3. With ``val``: the validation top-1 drop vs FP32 of the survivors (onnxruntime on the
       built file, in batches); with ``drop_budget``, a survivor over it cannot be chosen
       and is not timed further (noted).
    4. The deciding pass: the default and the remaining survivors with the FP32 model, one
       interleaved pass per batch size (ONNX Runtime sessions and, for ``pt2e``, a compiled
       torch runner side by side; :func:`full_config`: ``timing`` or 5 rounds of 10 calls,
       3 at batch sizes over 4, at most one re-measurement when unstable).

    The first candidate is the default; torch-runtime candidates (``pt2e``) are compared
    with the ONNX Runtime choice afterwards, paired in the same pass, by the same rule
    (:attr:`FormatChoice.runtime_chosen`). Another replaces the default only when, on a
    stable pass, its paired speed-up over the default has its 95% interval above 1 at some
    batch size and below 1 at none, and its drop is within the budget. Otherwise the
    default is kept and :attr:`FormatChoice.notes` says why. Built ONNX files stay in
    ``workdir`` when given (:attr:`FormatChoice.built`).

    Raises:
        ValueError: no candidates.
    """
    if not candidates:
        raise ValueError("select_int8_format: no candidate formats")
    cands = {n: as_candidate(c) for n, c in candidates.items()}
    default_name = next(iter(cands))
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(workdir or tmp)
        fp32 = export_onnx(model, d / "cand_fp32_reference.onnx", input_shape)
        built: dict[str, Path | nn.Module] = {}
        graphs: dict[bytes, str] = {}
        builder = _Builder(model, calib_x, input_shape, d)
        for name, cand in cands.items():
            try:
                b = builder.build(name, cand, fp32)
            except _SameGraph as e:
                notes.append(f"INT8 candidate {name}: same graph as {e}, not timed")
                continue
            except Exception as e:
                if name == default_name:
                    raise
                notes.append(f"INT8 candidate {name} skipped: {_first_line(e)}")
                continue
            if isinstance(b, Path):
                data = b.read_bytes()
                if data in graphs:
                    notes.append(f"INT8 candidate {name}: same graph as {graphs[data]}, not timed")
                    continue
                graphs[data] = name
            built[name] = b
        runners = _Runners(built, fp32, calib_x, threads)
        # screening, smallest batch size first: what is clearly slower there is not run
        # (nor compiled) at the larger ones
        scr: dict[int, dict[str, Latency]] = {}
        dropped: dict[str, str] = {}
        alive = list(built)
        for i, bs in enumerate(sorted(batch_sizes)):
            if len(alive) < 2:
                break
            scr[bs] = _pass(runners, bs, alive, screening_config(timing))
            last = i == len(batch_sizes) - 1
            alive_passes = {b: {n: p[n] for n in (FP32_REFERENCE, *alive)} for b, p in scr.items()}
            for n, why in screen(
                alive_passes if last else {bs: scr[bs]}, default_name, last
            ).items():
                dropped[n] = why
                notes.append(
                    f"INT8 candidate {n} screened out ({SCREEN_ROUNDS} rounds x "
                    f"{SCREEN_CALLS} calls): {why}"
                )
            alive = [n for n in alive if n not in dropped]
        fp32_acc: float | None = None
        drops: dict[str, float] = {}
        if val is not None:
            xv, yv = val
            fp32_acc = float((predict_built(fp32, xv, threads).argmax(1) == yv).float().mean())
            for name, b in built.items():
                if name in dropped:
                    continue
                acc = float((predict_built(b, xv, threads).argmax(1) == yv).float().mean())
                drops[name] = fp32_acc - acc
                if name != default_name and drop_budget is not None and drops[name] > drop_budget:
                    dropped[name] = (
                        f"validation drop {drops[name] * 100:.2f} points over the budget "
                        f"{drop_budget * 100:.2f}"
                    )
                    notes.append(
                        f"INT8 format: {name}: its validation drop {drops[name] * 100:.2f} "
                        f"points exceeds the budget {drop_budget * 100:.2f}: not chosen "
                        "(not timed further)"
                    )
        timed = [n for n in built if n not in dropped]
        passes = {bs: _pass(runners, bs, timed, full_config(bs, timing)) for bs in batch_sizes}
    trials = _trials(timed, cands, passes, drops)
    ort = [t for t in trials if t.runtime == "onnxruntime"]
    torch_trials = [t for t in trials if t.runtime != "onnxruntime"]
    if not ort:  # only torch candidates: the first is the default
        ort, torch_trials = trials, []
    choice = _choose(ort, passes, drop_budget)
    runtime_chosen = ""
    for t in torch_trials:
        # the torch runtime against the ONNX Runtime choice, paired in the same pass
        rt = _choose([choice.trials[0], t], passes, drop_budget)
        notes.append(
            rt.notes[0].replace("INT8 format:", "INT8 runtime:")
            + (" (torch inductor)" if rt.chosen == t.name else " (onnxruntime)")
        )
        if rt.chosen == t.name and not runtime_chosen:
            runtime_chosen = t.name
    out = [_screened(n, cands[n], scr, drops.get(n), why) for n, why in dropped.items()]
    return replace(
        choice,
        trials=(
            *choice.trials,
            *sorted(torch_trials, key=lambda t: -t.score()),
            *sorted(out, key=lambda t: -t.score()),
        ),
        runtime_chosen=runtime_chosen,
        notes=(*choice.notes, *notes),
        built=dict(built)
        if workdir is not None
        else {n: b for n, b in built.items() if not isinstance(b, Path)},
        fp32_accuracy=fp32_acc,
    )


def _choose(
    trials: list[FormatTrial],
    passes: dict[int, dict[str, Latency]],
    drop_budget: float | None = None,
) -> FormatChoice:
    """The deterministic choice of :func:`select_int8_format` from its measured passes."""
    default = trials[0]

    def within(t: FormatTrial) -> bool:
        return t is default or drop_budget is None or t.drop is None or t.drop <= drop_budget

    ranked_all = sorted(trials, key=lambda t: -t.score())
    ranked = [t for t in ranked_all if within(t)]
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
    for t in ranked_all:
        if not within(t) and t.score() > chosen.score():
            notes.append(
                f"INT8 format: {t.name} scored faster but its validation drop "
                f"{cast(float, t.drop) * 100:.2f} points exceeds the budget "
                f"{cast(float, drop_budget) * 100:.2f}: not chosen"
            )
    order = (chosen, *[t for t in ranked_all if t.name != chosen.name])
    return FormatChoice(order, chosen.name, default.name, tuple(notes), fp32_ms)


def _reasons(trials: Sequence[FormatTrial]) -> str:
    seen = [r for t in trials for s in t.speedup.values() for r in s.reasons]
    return "; ".join(dict.fromkeys(seen)) or "no reason recorded"


def choose_int8_format(
    model: nn.Module,
    calib_x: torch.Tensor,
    input_shape: Sequence[int],
    candidates: Mapping[str, QuantSpec | Candidate],
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
