# channel_bench.py: a plugin module that registers a search space and its layers
"""Seven 3x3 conv layers whose widths are searched (each 1x or 2x its base width)."""

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from nasforge.nn.layers import register_layer
from nasforge.space import Int, LayerSpec, Plan, SearchSpace
from nasforge.space.plan import downsample
from nasforge.spaces import register_space

BASE = (8, 8, 16, 16, 32, 32, 64)  # base width of each layer
STRIDES = (1, 1, 2, 1, 2, 1, 1)


def conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def classifier(c_in: int, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c_in, num_classes))


class ChannelBenchSpace(SearchSpace):
    name = "channel_bench_macro"

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> None:
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        dims = [Int(f"c{i + 1}", low=b, high=2 * b, step=b) for i, b in enumerate(BASE)]
        super().__init__(dims)

    def widths(self, arch: Mapping[str, Any]) -> list[int]:
        return [int(arch[f"c{i + 1}"]) for i in range(len(BASE))]

    def build(self, arch: Mapping[str, Any]) -> nn.Module:
        layers: list[nn.Module] = []
        c_in = self.input_shape[0]
        for c_out, stride in zip(self.widths(arch), STRIDES):
            layers.append(conv_bn_relu(c_in, c_out, stride))
            c_in = c_out
        return nn.Sequential(*layers, classifier(c_in, self.num_classes))

    def plan(self, arch: Mapping[str, Any]) -> Plan:
        """The layers build() runs, with their input shapes: what latency tables time."""
        c_in, spatial = self.input_shape[0], self.input_shape[1:]
        layers = []
        for c_out, stride in zip(self.widths(arch), STRIDES):
            layers.append(LayerSpec("channel_bench.conv", (c_in, c_out, stride), (c_in, *spatial)))
            c_in, spatial = c_out, downsample(spatial, stride)
        layers.append(LayerSpec("channel_bench.head", (c_in, self.num_classes), (c_in, *spatial)))
        return tuple((layer, 1) for layer in layers)  # (segment, repeat count), run in order


register_layer("channel_bench.conv", lambda args, in_shape: conv_bn_relu(*args))
register_layer("channel_bench.head", lambda args, in_shape: classifier(*args))
register_space(
    "channel_bench_macro",
    ChannelBenchSpace,
    "7 conv layers, each 1x or 2x its base width (README example, synthetic table)",
)
