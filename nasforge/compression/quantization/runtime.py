"""ONNX Runtime helpers: sessions, batched inference, and interleaved latency measurement.

Latency is measured as the median of repeated single calls after warm-up. Comparing two
models on a busy machine is noisy, so :func:`compare_latency` interleaves them (A, B, A, B,
...) in rounds: drift and other processes hit both alike, and the ratio is robust.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch


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


def ort_session(path: str | Path | bytes, threads: int = 1) -> object:
    """A CPU ``InferenceSession`` with full graph optimisation, ``threads`` intra-op threads
    and no spinning (idle pool threads would steal cores on a shared machine); every model
    a comparison times gets the same options."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def ort_predict(session: object, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``x`` from an ONNX Runtime session, in batches."""
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    outs = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].numpy().astype(np.float32)
        outs.append(torch.from_numpy(session.run(None, {name: xb})[0]))  # type: ignore[attr-defined]
    return torch.cat(outs)


def ort_runner(path: str | Path, x: torch.Tensor, threads: int = 1) -> Callable[[], object]:
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name  # type: ignore[attr-defined]
    feed = {name: x.numpy().astype(np.float32)}
    return lambda: sess.run(None, feed)  # type: ignore[attr-defined]


def torch_runner(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    model.eval()

    def run() -> object:
        with torch.inference_mode():
            return model(x)

    return run


def compare_latency(
    runners: dict[str, Callable[[], object]],
    backend: dict[str, str],
    batch_size: int,
    threads: int,
    rounds: int = 7,
    repeats: int = 10,
    warmup: int = 5,
) -> dict[str, Latency]:
    """Interleaved timing of several runners; each round times ``repeats`` calls of each.

    The reported median is over all calls of a runner; rounds alternate the order.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for run in runners.values():
            for _ in range(warmup):
                run()
        samples: dict[str, list[float]] = {k: [] for k in runners}
        names = list(runners)
        for r in range(rounds):
            for k in names if r % 2 == 0 else names[::-1]:
                run = runners[k]
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    run()
                    samples[k].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(prev)
    out = {}
    for k, s in samples.items():
        q = statistics.quantiles(s, n=4) if len(s) >= 4 else [min(s), 0, max(s)]
        out[k] = Latency(
            k, backend.get(k, ""), batch_size, threads, statistics.median(s), q[2] - q[0], len(s)
        )
    return out


def file_size(path: str | Path) -> int:
    return Path(path).stat().st_size


def optimized_op_counts(path: str | Path) -> dict[str, int]:
    """Op types in ONNX Runtime's optimised graph (shows which INT8 kernels were fused)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        m = onnx.load(so.optimized_model_filepath)
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
