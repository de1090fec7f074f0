"""ONNX Runtime helpers for compressed models: sessions, batched inference, and interleaved
latency comparison.

Sessions come from hardware's one session builder (:func:`nasforge.hardware.onnx.ort_session`)
and latency from hardware's one timing harness (:mod:`nasforge.hardware.timing`): comparing
models on a busy machine is noisy, so they are interleaved in rounds (a fresh seeded order each
round, stray rounds re-measured), and drift and other processes hit all of them alike.

A speed-up is never two medians divided: :func:`compare_speedups` times every model against a
baseline in ONE interleaved pass (:func:`~nasforge.hardware.timing.compare_runners`: one ratio
per round, geometric mean, 95% Student-t interval, re-measured with more rounds when the
interval is wide or the host busy) and hands back each model's
:class:`~nasforge.hardware.noise.Speedup` with its verdict; :func:`paired` compares two models
of the same pass the same way. :func:`speedup_text` is the one way a speed-up is printed:
``2.63x [2.51, 2.76]``, or ``unstable: host busy (<reasons>)`` when it cannot be trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasforge.hardware.backend_base import Runner, threads_pinned
from nasforge.hardware.noise import UNSTABLE, Speedup, Stability, paired_speedup
from nasforge.hardware.onnx import ort_session as _hardware_session
from nasforge.hardware.timing import TimingConfig, compare_runners, time_runners

#: fewer paired rounds than this give no usable 95% interval: such a speed-up is unstable
MIN_ROUNDS = 3


@dataclass(frozen=True)
class Latency:
    """Median and interquartile range of one model's latency, in milliseconds.

    From :func:`compare_speedups` also: ``speedup`` (vs the comparison's baseline, measured
    in the same interleaved pass, with its 95% interval and verdict), ``stability`` (the
    pass's noise verdict for this model) and ``round_medians_ms`` (every round's median in
    visiting order, paired with the other models' rounds of the pass; see :func:`paired`).
    """

    name: str
    backend: str
    batch_size: int
    threads: int
    median_ms: float
    iqr_ms: float
    repeats: int
    speedup: Speedup | None = None
    stability: Stability = field(default_factory=Stability)
    round_medians_ms: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "backend": self.backend,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "median_ms": self.median_ms,
            "iqr_ms": self.iqr_ms,
            "repeats": self.repeats,
            "speedup": None if self.speedup is None else self.speedup.to_dict(),
            "speedup_label": None if self.speedup is None else speedup_text(self.speedup),
            "stability": self.stability.to_dict(),
            "round_medians_ms": list(self.round_medians_ms),
        }


def speedup_text(s: Speedup) -> str:
    """The one printed form of a speed-up: ``2.63x [2.51, 2.76]`` when stable, else
    ``unstable: host busy (<reasons>); interval [1.90, 3.60]`` (the point estimate is left
    out on purpose: it is not a figure to act on)."""
    if s.stable:
        return f"{s.ratio:.2f}x [{s.low:.2f}, {s.high:.2f}]"
    return f"{UNSTABLE} ({'; '.join(s.reasons)}); interval [{s.low:.2f}, {s.high:.2f}]"


def _enough_rounds(s: Speedup) -> Speedup:
    if s.rounds >= MIN_ROUNDS or s.name == s.baseline:
        return s
    why = f"only {s.rounds} paired round(s): too few for a 95% interval (need >= {MIN_ROUNDS})"
    return replace(s, stable=False, reasons=(*s.reasons, why))


def paired(baseline: Latency, candidate: Latency) -> Speedup:
    """How many times faster ``candidate`` ran than ``baseline``, from their paired rounds.

    Both must come from the same :func:`compare_speedups` call (the same interleaved pass);
    the verdicts of both are merged into the result, and fewer than :data:`MIN_ROUNDS`
    rounds make it unstable.

    Raises:
        ValueError: either has no round medians (not from :func:`compare_speedups`).
    """
    if not baseline.round_medians_ms or not candidate.round_medians_ms:
        raise ValueError("paired: both latencies must come from compare_speedups")
    s = paired_speedup(
        baseline.round_medians_ms,
        candidate.round_medians_ms,
        candidate.name,
        baseline.name,
        baseline.stability.merge(candidate.stability),
    )
    return _enough_rounds(s)


def timing_config(rounds: int = 7, repeats: int = 10, warmup: int = 5) -> TimingConfig:
    """The harness settings of a comparison: ``rounds`` interleaved rounds of ``repeats``
    calls per model each (wall clock: ONNX Runtime and torch runners alike), after
    ``warmup`` untimed calls; the reference kernel and the default noise policy on."""
    return TimingConfig(
        warmup=warmup, repeats=rounds * repeats, rounds=rounds, clock="wall", seed=0
    )


def compare_speedups(
    runners: Mapping[str, Callable[[], object] | Runner],
    baseline: str,
    batch_size: int,
    threads: int,
    config: TimingConfig | None = None,
    backend: Mapping[str, str] | None = None,
) -> dict[str, Latency]:
    """Time every runner against ``runners[baseline]`` in one interleaved pass.

    Uses :func:`~nasforge.hardware.timing.compare_runners` (A B A B ..., a fresh order each
    round; re-measured with twice the rounds when an interval is wide or the pass
    unstable), with torch pinned to ``threads`` intra-op threads meanwhile. A plain
    callable is wrapped in a :class:`~nasforge.hardware.backend_base.Runner`; a ``Runner``
    is used as given (e.g. a scripted one in a test). ``config`` defaults to
    :func:`timing_config`; ``backend`` labels the results (name -> backend).

    Returns:
        name -> :class:`Latency` in the order of ``runners``, each with its
        :class:`~nasforge.hardware.noise.Speedup` over the baseline (the baseline's is 1);
        a speed-up from fewer than :data:`MIN_ROUNDS` rounds is marked unstable.

    Raises:
        ValueError: ``baseline`` is not one of ``runners``.
    """
    if baseline not in runners:
        raise ValueError(f"compare_speedups: baseline {baseline!r} is not one of {list(runners)}")
    names = list(runners)
    wrapped = [r if isinstance(r, Runner) else Runner(r, k) for k, r in runners.items()]
    cfg = config or timing_config()
    with threads_pinned(threads):
        stats, ups = compare_runners(wrapped, cfg, clock="wall", baseline=names.index(baseline))
    labels = backend or {}
    return {
        k: Latency(
            k,
            labels.get(k, ""),
            batch_size,
            threads,
            s.median_ms,
            s.iqr_ms,
            s.samples,
            _enough_rounds(replace(u, name=k, baseline=baseline)),
            s.stability,
            s.all_round_medians_ms,
        )
        for k, s, u in zip(names, stats, ups)
    }


def ort_session(path: str | Path | bytes, threads: int = 1) -> Any:
    """A CPU ``InferenceSession`` from hardware's session builder: full graph optimisation,
    ``threads`` intra-op threads and no spinning (idle pool threads would steal cores on a
    shared machine); every model a comparison times gets the same options."""
    return _hardware_session(path, threads=threads)


def ort_predict(session: Any, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``x`` from an ONNX Runtime session, in batches."""
    name = session.get_inputs()[0].name
    outs = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].numpy().astype(np.float32)
        outs.append(torch.from_numpy(session.run(None, {name: xb})[0]))
    return torch.cat(outs)


def ort_runner(path: str | Path, x: torch.Tensor, threads: int = 1) -> Callable[[], object]:
    """One call of the ONNX model at ``path`` on ``x`` (for :func:`compare_latency`)."""
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    feed = {name: x.numpy().astype(np.float32)}
    return lambda: sess.run(None, feed)


def torch_runner(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One inference-mode call of ``model`` (switched to eval) on ``x``."""
    model.eval()

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def compare_latency(
    runners: Mapping[str, Callable[[], object]],
    backend: Mapping[str, str],
    batch_size: int,
    threads: int,
    rounds: int = 7,
    repeats: int = 10,
    warmup: int = 5,
) -> dict[str, Latency]:
    """Interleaved wall-clock timing of several calls with hardware's harness (latencies
    only; for speed-ups use :func:`compare_speedups`, never a ratio of these medians).

    Each runner is warmed up with ``warmup`` calls, then timed in ``rounds`` rounds of
    ``repeats`` calls, the runners visited in a fresh seeded order each round; a round whose
    median strays from the runner's others is re-measured (see
    :mod:`nasforge.hardware.timing`). torch is pinned to ``threads`` intra-op threads
    meanwhile. ``backend`` labels the results (name -> backend, default ``""``).

    Returns:
        name -> :class:`Latency` (median and IQR over the kept calls, ``repeats`` = their
        number), in the order of ``runners``.
    """
    names = list(runners)
    config = TimingConfig(warmup=warmup, repeats=rounds * repeats, rounds=rounds, clock="wall")
    with threads_pinned(threads):
        stats = time_runners([Runner(runners[k], k) for k in names], config, clock="wall")
    return {
        k: Latency(
            k,
            backend.get(k, ""),
            batch_size,
            threads,
            s.median_ms,
            s.iqr_ms,
            s.samples,
            stability=s.stability,
            round_medians_ms=s.all_round_medians_ms,
        )
        for k, s in zip(names, stats)
    }


def file_size(path: str | Path) -> int:
    return Path(path).stat().st_size


def optimized_op_counts(path: str | Path) -> dict[str, int]:
    """Op types in ONNX Runtime's optimised graph (shows which INT8 kernels were fused)."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as d:
        optimized = Path(d) / "opt.onnx"
        _hardware_session(path, graph_optimization="extended", optimized_model_path=optimized)
        m = onnx.load(str(optimized))
    counts: dict[str, int] = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement and max/mean absolute logit difference between two logit tensors."""
    a, b = a.detach().float(), b.detach().float()
    return {
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
        "max_abs_diff": float((a - b).abs().max()),
        "mean_abs_diff": float((a - b).abs().mean()),
    }


def batches(x: torch.Tensor, batch_size: int) -> Sequence[torch.Tensor]:
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
