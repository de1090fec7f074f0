"""ONNX Runtime helpers for compressed models: sessions, batched inference, and interleaved
latency comparison.

Sessions come from hardware's one session builder (:func:`nasforge.hardware.onnx.ort_session`)
and latency from hardware's one timing harness (:func:`nasforge.hardware.timing.time_runners`):
comparing models on a busy machine is noisy, so :func:`compare_latency` interleaves them in
rounds (a fresh seeded order each round, stray rounds re-measured): drift and other processes
hit all of them alike, and the ratios are robust.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasforge.hardware.backend_base import Runner, threads_pinned
from nasforge.hardware.onnx import ort_session as _hardware_session
from nasforge.hardware.timing import TimingConfig, time_runners


@dataclass(frozen=True)
class Latency:
    """Median and interquartile range of one model's latency, in milliseconds."""

    name: str
    backend: str
    batch_size: int
    threads: int
    median_ms: float
    iqr_ms: float
    repeats: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


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
    """Interleaved wall-clock timing of several calls with hardware's harness.

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
        k: Latency(k, backend.get(k, ""), batch_size, threads, s.median_ms, s.iqr_ms, s.samples)
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
