"""Memory: static parameter and activation bytes, checked against the profiler's peak."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nasforge.hardware.memory import check_memory, param_bytes, predict_memory
from nasforge.hardware.profile import count_params
from nasforge.nn.blocks import ClassifierHead, ConvBNAct, InvertedResidual
from nasforge.spaces import create_space


def test_mlp_activation_peak_is_the_largest_adjacent_pair() -> None:
    model = nn.Sequential(
        nn.Linear(100, 200), nn.ReLU(), nn.Linear(200, 300), nn.ReLU(), nn.Linear(300, 10)
    )
    est = predict_memory(model, (100,), batch_size=8)
    # peak at the second (out-of-place) ReLU: its input and output, 8x300 each, float32
    assert est.peak_activation_bytes == 8 * (300 + 300) * 4
    inplace = nn.Sequential(
        nn.Linear(100, 200),
        nn.ReLU(inplace=True),
        nn.Linear(200, 300),
        nn.ReLU(inplace=True),
        nn.Linear(300, 10),
    )
    # in-place ReLUs allocate nothing: the peak is a Linear's input and output (8x200 + 8x300)
    assert predict_memory(inplace, (100,), batch_size=8).peak_activation_bytes == 8 * 500 * 4
    assert est.param_bytes == 4 * count_params(model) == param_bytes(model)
    assert est.input_bytes == 8 * 100 * 4 and est.output_bytes == 8 * 10 * 4


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)), (64,)),
        (lambda: ConvBNAct(3, 16, 3, 2, act="hswish"), (3, 32, 32)),
        (lambda: InvertedResidual(16, 24, 5, 2, 6, "silu", True), (16, 16, 16)),
        (lambda: InvertedResidual(16, 16, 7, 1, 3, "hswish", False), (16, 16, 16)),
        (lambda: ClassifierHead(80, 128, 10, "hswish"), (80, 4, 4)),
    ],
)
def test_prediction_equals_the_profilers_tensor_peak(make, shape) -> None:
    torch.manual_seed(0)
    check = check_memory(make(), shape, batch_size=4)
    assert check.ratio == pytest.approx(1.0, abs=1e-9)
    assert check.measured.peak_bytes >= check.measured.tensor_peak_bytes  # workspaces on top


def test_mobile_networks_are_predicted_within_5_percent() -> None:
    space = create_space("mobile", (3, 32, 32), 10)
    rng = np.random.default_rng(0)
    ratios = [check_memory(space.build(space.sample(rng)), (3, 32, 32), 1).ratio for _ in range(2)]
    assert all(0.99 <= r <= 1.05 for r in ratios), ratios


def test_prediction_does_not_touch_the_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    predict_memory(model, (3, 8, 8))
    assert model.training and isinstance(model[1], nn.BatchNorm2d)
    assert model[0].weight.device.type == "cpu"
