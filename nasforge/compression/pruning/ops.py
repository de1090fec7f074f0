"""The channel graph's whitelist: ops that pass a channel layout through unchanged,
binary ops that couple their operands, concatenations, and the weighted/normalising layers
the walk knows natively. An op in none of these (and without a leaf rule) is refused."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Hardswish,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
PASS_FUNCTIONS: set[object] = {
    F.relu,
    F.relu6,
    F.hardswish,
    F.silu,
    F.gelu,
    F.sigmoid,
    F.hardsigmoid,
    F.hardtanh,
    F.leaky_relu,
    F.elu,
    F.dropout,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.max_pool1d,
    F.max_pool2d,
    F.adaptive_max_pool2d,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.clip,
    F.mish,
    F.softplus,
    F.selu,
    F.celu,
    F.dropout1d,
    F.dropout2d,
    torch.exp,
    torch.erf,
    torch.sqrt,
    torch.rsqrt,
    torch.abs,
    torch.neg,
    torch.clone,
    operator.neg,
}
"""Elementwise (or channel-wise in evaluation, like dropout) functions of their first argument."""
PASS_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "clamp",
    "clamp_",
    "clip",
    "contiguous",
    "hardswish",
    "float",
    "half",
    "to",
    "type_as",
    "clone",
    "detach",
    "exp",
    "erf",
    "sqrt",
    "rsqrt",
    "abs",
    "neg",
}
BINARY = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    operator.pow,
    torch.pow,
}
"""Elementwise ops of two operands (with broadcasting): they couple both operands' channels."""
BINARY_METHODS = {"add", "add_", "sub", "mul", "mul_", "div", "pow"}
CAT = {torch.cat, torch.concat}
POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
"""Pass-through modules that pool the dims after dim 1: the channels must be at dim 1."""
POOL_FUNCTIONS: set[object] = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.max_pool1d,
    F.max_pool2d,
    F.adaptive_max_pool2d,
}
SOFTMAX = {torch.softmax, F.softmax, torch.log_softmax, F.log_softmax, "softmax", "log_softmax"}
"""Normalise along one dim: pass-through unless that dim is the channel axis."""
PERMUTE = {torch.permute, "permute"}
TRANSPOSE = {torch.transpose, "transpose", torch.swapaxes, "swapaxes"}
RESHAPE = {"view", "reshape", torch.reshape, torch.squeeze, "squeeze", torch.unsqueeze, "unsqueeze"}
"""Shape-only ops: the channel axis survives when it is neither split nor merged."""
