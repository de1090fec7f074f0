"""Plain PyTorch building blocks for efficient networks (no search logic).

Every block takes ``nd`` (1 or 2 spatial dimensions) so that the same space serves images
and 1-D signals such as MNIST-1D.
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = ("relu", "hswish", "silu")


def make_act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "hswish":
        return nn.Hardswish(inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS + ('identity',)}")


def conv_cls(nd: int) -> type[nn.Module]:
    return {1: nn.Conv1d, 2: nn.Conv2d}[nd]


def bn_cls(nd: int) -> type[nn.Module]:
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[nd]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without going more than 10% down (MobileNet)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Convolution, batch norm, activation."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: str = "relu",
        nd: int = 2,
    ) -> None:
        super().__init__(
            conv_cls(nd)(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            bn_cls(nd)(out_ch),
            make_act(act),
        )


class SqueezeExcite(nn.Module):
    """Channel attention: global pool, reduce, expand, gate (hard-sigmoid)."""

    def __init__(self, channels: int, reduced: int, nd: int = 2) -> None:
        super().__init__()
        self.nd = nd
        self.reduce = conv_cls(nd)(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = conv_cls(nd)(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        s = x.mean(dim=dims, keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class DepthwiseSeparable(nn.Module):
    """Depthwise k x k conv + BN + act, optional SE, pointwise projection + BN."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        act: str = "relu",
        se: bool = False,
        nd: int = 2,
    ) -> None:
        super().__init__()
        self.dw = ConvBNAct(in_ch, in_ch, kernel, stride, groups=in_ch, act=act, nd=nd)
        self.se = SqueezeExcite(in_ch, make_divisible(in_ch / 4), nd) if se else nn.Identity()
        self.pw = nn.Sequential(conv_cls(nd)(in_ch, out_ch, 1, bias=False), bn_cls(nd)(out_ch))
        self.use_res = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.se(self.dw(x)))
        return x + y if self.use_res else y


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: 1x1 expand, depthwise k x k, optional SE, 1x1 linear projection.

    The residual add sits on the narrow representation and is used when stride is 1 and the
    channel count is unchanged. ``expand == 1`` skips the expansion conv.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        expand: int = 6,
        act: str = "relu",
        se: bool = False,
        nd: int = 2,
    ) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.expand = ConvBNAct(in_ch, hidden, 1, act=act, nd=nd) if expand != 1 else nn.Identity()
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=act, nd=nd)
        self.se = SqueezeExcite(hidden, make_divisible(hidden / 4), nd) if se else nn.Identity()
        self.project = nn.Sequential(
            conv_cls(nd)(hidden, out_ch, 1, bias=False), bn_cls(nd)(out_ch)
        )
        self.use_res = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.use_res else y


class ClassifierHead(nn.Module):
    """1x1 conv to ``features`` channels, activation, global average pool, dropout, linear."""

    def __init__(
        self,
        in_ch: int,
        features: int,
        num_classes: int,
        act: str = "relu",
        dropout: float = 0.0,
        nd: int = 2,
    ) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_ch, features, 1, act=act, nd=nd)
        self.pool = nn.AdaptiveAvgPool1d(1) if nd == 1 else nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv(x)).flatten(1)
        return self.fc(self.dropout(x))


def resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``x`` (N, C, *spatial) resized to ``size`` (bilinear in 2-D, linear in 1-D, no corner
    alignment); returned unchanged when it already has that size. The one resize that an
    elastic-resolution model, its supernet and its stand-alone net share."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return _interpolate(x, tuple(size))


def _interpolate(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    mode = "bilinear" if len(size) == 2 else "linear"
    return nn.functional.interpolate(x, size=size, mode=mode, align_corners=False)


class Resized(nn.Sequential):
    """An ``nn.Sequential`` that first resizes its input to ``size`` (:func:`resize`).

    Parameter-free, so a model's state-dict keys are those of the plain ``nn.Sequential``
    with the same children (weights move between the two unchanged); BN folding sees the
    children as usual, fx traces it (the resize is unconditional: use it only where the
    size differs) and the resize exports to ONNX as one ``Resize`` node.
    """

    def __init__(self, size: tuple[int, ...], *children: nn.Module) -> None:
        super().__init__(*children)
        self.size = tuple(int(s) for s in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _interpolate(x, self.size)
        for child in self:
            x = child(x)
        return x
