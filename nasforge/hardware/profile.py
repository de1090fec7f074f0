"""Static model costs: parameters, FLOPs, size on disk."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> int:
    """FLOPs of one forward pass (multiply-add counted as 2), via torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(batch_size, *input_shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the serialized state dict (what ``torch.save`` would write)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes
