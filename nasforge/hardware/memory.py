"""Memory: parameter bytes and peak activation bytes, predicted statically and measured.

The prediction traces one forward pass on the ``meta`` device (shapes only, no arithmetic)
and records every operator's inputs and outputs. Each tensor produced during the pass is
live from the operator that allocates it to the last operator that reads it, or to the end of
the module call it was passed to (the caller holds a module's input until the call returns);
views and in-place operators share their base's storage; the model's output lives to the end.
The peak is the largest sum of live bytes at any operator. This is what eager PyTorch frees
by reference counting, except where a ``forward`` keeps intermediates in Python variables
longer (NB201 and DARTS cells keep every node in a list until the cell returns, so their
measured peaks run 20-70% above the prediction).

The measurement replays the same pass on real tensors under ``torch.profiler`` with
``profile_memory=True`` and takes the peak of the running sum of the allocator's events
(CUDA: ``torch.cuda.max_memory_allocated``), once at operator boundaries (comparable to the
prediction) and once including operator workspaces (im2col buffers, padded copies, which a
graph does not show; on this CPU build they add about 50-100% for small convolutions).
:func:`check_memory` reports all three.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass(frozen=True)
class MemoryEstimate:
    """Static memory of one forward pass (bytes).

    ``peak_activation_bytes`` counts tensors allocated during the pass (output included),
    not the input nor the parameters and buffers.
    """

    param_bytes: int
    buffer_bytes: int
    input_bytes: int
    output_bytes: int
    peak_activation_bytes: int
    operators: int

    @property
    def total_peak_bytes(self) -> int:
        """Parameters, buffers, input and the activation peak together."""
        return self.param_bytes + self.buffer_bytes + self.input_bytes + self.peak_activation_bytes

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class MemoryCheck:
    """Predicted vs measured activation peaks (bytes).

    ``ratio`` is measured tensor peak / predicted peak (1.0 when the static liveness model is
    exact); ``workspace_ratio`` is the peak with operator workspaces / predicted peak.
    """

    predicted: MemoryEstimate
    measured: MeasuredPeak
    device: str

    @property
    def ratio(self) -> float:
        p = self.predicted.peak_activation_bytes
        return self.measured.tensor_peak_bytes / p if p else float("nan")

    @property
    def workspace_ratio(self) -> float:
        p = self.predicted.peak_activation_bytes
        return self.measured.peak_bytes / p if p else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "predicted": self.predicted.to_dict(),
            "measured": asdict(self.measured),
            "ratio": self.ratio,
            "workspace_ratio": self.workspace_ratio,
            "device": self.device,
        }


def param_bytes(model: nn.Module) -> int:
    """Bytes of all parameters (shared parameters counted once)."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[id(p)] = p.numel() * p.element_size()
    return sum(seen.values())


def buffer_bytes(model: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


def _storage_key(t: torch.Tensor) -> int:
    return int(t.untyped_storage()._cdata)


class _Trace(TorchDispatchMode):
    """Records, per operator, the storages it reads and the storages it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[list[int]] = []
        self.writes: list[list[int]] = []
        self.nbytes: dict[int, int] = {}
        self._keep: list[torch.Tensor] = []  # keeps storages alive so keys are never reused

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        ins = [_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = []
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                k = _storage_key(t)
                if k not in self.nbytes:
                    self.nbytes[k] = int(t.untyped_storage().nbytes())
                    self._keep.append(t)
                outs.append(k)
        self.reads.append(ins)
        self.writes.append(outs)
        return out


def _prepared(model: nn.Module, fold_bn: bool) -> nn.Module:
    from nasforge.nn.fuse import fuse_bn

    return fuse_bn(model) if fold_bn else copy.deepcopy(model).eval()


def predict_memory(
    model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, fold_bn: bool = True
) -> MemoryEstimate:
    """Static parameter bytes and peak activation bytes of one inference pass (float32).

    ``model`` is not mutated: a (BN-folded, if ``fold_bn``) copy is traced on the meta device.
    """
    prepared = _prepared(model, fold_bn)
    p_bytes, b_bytes = param_bytes(prepared), buffer_bytes(prepared)
    meta = prepared.to("meta")
    x = torch.empty(batch_size, *[int(s) for s in input_shape], device="meta")
    pre_existing = {_storage_key(t) for t in (*meta.parameters(), *meta.buffers(), x)}
    trace = _Trace()
    # The caller of a module holds its input until the call returns (``input = module(input)``
    # in nn.Sequential): record each call's input storages and extend them to its end.
    held: list[tuple[list[int], int, int]] = []
    starts: dict[int, list[tuple[list[int], int]]] = {}

    def pre(mod: nn.Module, args: Any) -> None:
        keys = [_storage_key(t) for t in tree_leaves(args) if isinstance(t, torch.Tensor)]
        starts.setdefault(id(mod), []).append((keys, len(trace.writes)))

    def post(mod: nn.Module, args: Any, out: Any) -> None:
        keys, begin = starts[id(mod)].pop()
        held.append((keys, begin, len(trace.writes) - 1))

    handles = [
        h
        for mod in meta.modules()
        for h in (mod.register_forward_pre_hook(pre), mod.register_forward_hook(post))
    ]
    try:
        with torch.inference_mode(), trace:
            y = meta(x)
    finally:
        for h in handles:
            h.remove()
    out_keys = {_storage_key(t) for t in tree_leaves(y) if isinstance(t, torch.Tensor)}
    n_ops = len(trace.writes)
    born: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, (ins, outs) in enumerate(zip(trace.reads, trace.writes)):
        for k in outs:
            if k in pre_existing:
                continue
            born.setdefault(k, i)
            last[k] = i
        for k in ins:
            if k in born:
                last[k] = i
    for keys, _, end in held:
        for k in keys:
            if k in born and end > last[k]:
                last[k] = end
    for k in out_keys:
        if k in born:
            last[k] = n_ops
    delta = [0] * (n_ops + 2)
    for k, b in born.items():
        delta[b] += trace.nbytes[k]
        delta[last[k] + 1] -= trace.nbytes[k]
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return MemoryEstimate(
        param_bytes=p_bytes,
        buffer_bytes=b_bytes,
        input_bytes=x.numel() * x.element_size(),
        output_bytes=sum(trace.nbytes.get(k, 0) for k in out_keys if k in born),
        peak_activation_bytes=peak,
        operators=n_ops,
    )


@dataclass(frozen=True)
class MeasuredPeak:
    """Measured activation peaks (bytes): between operators, and including operator workspaces.

    ``tensor_peak_bytes`` is the peak of live tensors seen at operator boundaries (what the
    static prediction models); ``peak_bytes`` also counts allocations made and freed inside one
    operator (convolution workspaces, padded copies).
    """

    tensor_peak_bytes: int
    peak_bytes: int


def _profiled_peaks(prof: Any) -> MeasuredPeak:
    events = list(prof.profiler.kineto_results.events())
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    ops = sorted(
        (e.start_ns(), e.start_ns() + e.duration_ns())
        for e in events
        if e.name() != "[memory]" and e.duration_ns() > 0
    )
    top: list[list[int]] = []  # outermost operator intervals
    for s, e in ops:
        if top and s <= top[-1][1]:
            top[-1][1] = max(top[-1][1], e)
        else:
            top.append([s, e])
    live = peak = 0
    for _, b in mem:
        live += b
        peak = max(peak, live)
    # The same events with every change inside an operator applied at the operator's end.
    shifted = []
    j = 0
    for t, b in mem:
        while j < len(top) and top[j][1] < t:
            j += 1
        shifted.append((top[j][1] if j < len(top) and top[j][0] <= t else t, b))
    shifted.sort()
    live = tensor_peak = 0
    i = 0
    while i < len(shifted):
        t = shifted[i][0]
        while i < len(shifted) and shifted[i][0] == t:
            live += shifted[i][1]
            i += 1
        tensor_peak = max(tensor_peak, live)
    return MeasuredPeak(int(tensor_peak), int(peak))


def measure_peak_activation_bytes(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int = 1,
    device: str = "cpu",
    fold_bn: bool = True,
) -> MeasuredPeak:
    """Peak bytes allocated during one inference pass, as the profiler (or CUDA allocator) saw it.

    One untimed pass runs first so that one-off allocations (weight reordering) are not
    counted. On CUDA both figures are the allocator's peak. ``model`` is not mutated.
    """
    prepared = _prepared(model, fold_bn)
    x = torch.randn(batch_size, *[int(s) for s in input_shape])
    if device == "cuda":
        prepared, x = prepared.cuda(), x.cuda()
        with torch.inference_mode():
            prepared(x)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            y = prepared(x)
            torch.cuda.synchronize()
            peak = int(torch.cuda.max_memory_allocated() - base)
        del y
        return MeasuredPeak(peak, peak)
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        prepared(x)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            y = prepared(x)
    del y
    return _profiled_peaks(prof)


def check_memory(
    model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, device: str = "cpu"
) -> MemoryCheck:
    """Predicted (static) and measured (profiler) activation peaks side by side."""
    return MemoryCheck(
        predict_memory(model, input_shape, batch_size),
        measure_peak_activation_bytes(model, input_shape, batch_size, device),
        device,
    )
