"""Small torchvision-style reference models built locally (no torchvision dependency).

``mobilenet_v2`` and ``resnet`` follow torchvision's module layout (``features`` /
``classifier``, ``layer1..4`` with ``downsample``), scaled for small inputs; they are the
models the compression benchmark and the pruning/quantization tests run on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasforge.nn.blocks import make_divisible


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class SqueezeExcitation(nn.Module):
    """torchvision's SE: avgpool, fc1, ReLU, fc2, hardsigmoid, scale (traceable by fx)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return s * x


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, se: bool = False) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, 1))
        layers.append(ConvBNReLU(hidden, hidden, 3, stride, groups=hidden))
        if se:
            layers.append(SqueezeExcitation(hidden, make_divisible(hidden // 4)))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expand t, channels c, repeats n, stride s) as in torchvision, shortened for 28x28 inputs.
MBV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))


class MobileNetV2(nn.Module):
    """torchvision-style MobileNetV2: ``features`` (stem, inverted residuals, last conv) and
    ``classifier`` (dropout, linear)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: float = 1.0,
        setting: Sequence[tuple[int, int, int, int]] = MBV2_SETTING,
        last_channels: int = 320,
        stem_stride: int = 1,
        se: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        cin = make_divisible(32 * width)
        layers: list[nn.Module] = [ConvBNReLU(in_channels, cin, 3, stem_stride)]
        for t, c, n, s in setting:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, se=se and t != 1))
                cin = cout
        last = make_divisible(last_channels * max(1.0, width))
        layers.append(ConvBNReLU(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-style ResNet with basic blocks: conv1/bn1/relu/maxpool, layer1..4, fc."""

    def __init__(
        self,
        layers: Sequence[int] = (1, 1, 1, 1),
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 16,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        cin = width
        stages = []
        for i, n in enumerate(layers):
            cout = width * 2**i
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
            blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mobilenet_v2(
    num_classes: int = 10, in_channels: int = 1, width: float = 1.0, se: bool = False
) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, width, se=se)


def resnet(
    num_classes: int = 10,
    in_channels: int = 1,
    width: int = 16,
    layers: Sequence[int] = (1, 1, 1, 1),
) -> ResNet:
    return ResNet(layers, num_classes, in_channels, width)
