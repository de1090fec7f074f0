"""Plain PyTorch blocks: conv-BN-act, depthwise separable, inverted residual + SE, BN folding."""

from nasforge.nn.blocks import (
    ACTIVATIONS,
    ClassifierHead,
    ConvBNAct,
    DepthwiseSeparable,
    InvertedResidual,
    SqueezeExcite,
    make_act,
    make_divisible,
)
from nasforge.nn.fuse import fold_conv_bn, fuse_bn

__all__ = [
    "ACTIVATIONS",
    "ClassifierHead",
    "ConvBNAct",
    "DepthwiseSeparable",
    "InvertedResidual",
    "SqueezeExcite",
    "fold_conv_bn",
    "fuse_bn",
    "make_act",
    "make_divisible",
]
