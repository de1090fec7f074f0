"""Quantization-aware training: fine-tune through fake quantization with the STE.

Starts from a pretrained float model: BN is folded, ranges are calibrated as for PTQ, then
the :class:`QuantSim` trains in ``qat`` mode -- weights are fake-quantized per channel from
their current values, activation ranges follow an EMA of the observed min/max, and
gradients pass the rounding by the straight-through estimator (``torch.fake_quantize_*``).
The result exports with :func:`export_qdq` to the same ONNX Runtime INT8 graph as PTQ.
"""

from __future__ import annotations

import torch
from torch import nn

from nasforge.compression.quantization.ptq import quantize_static_int8
from nasforge.compression.quantization.qsim import QuantSim, QuantSpec
from nasforge.train import LossFn, TrainConfig, TrainHistory, train_model


def quantization_aware_training(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    calib_x: torch.Tensor,
    train: TrainConfig,
    spec: QuantSpec | None = None,
    loss_fn: LossFn | None = None,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
) -> tuple[QuantSim, TrainHistory]:
    """Return a QAT-trained, frozen :class:`QuantSim` of ``model`` (``model`` is not modified).

    ``loss_fn`` replaces cross-entropy, e.g. a :class:`~nasforge.compression.DistillationLoss`
    with the float model as teacher. Use a small learning rate (about 1/10 of training).
    """
    sim = quantize_static_int8(model, calib_x, spec)
    sim.set_mode("qat")
    hist = train_model(sim, x, y, train, x_val, y_val, loss_fn=loss_fn)
    sim.set_mode("quant")
    sim.eval()
    return sim, hist
