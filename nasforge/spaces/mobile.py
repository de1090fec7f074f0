"""`mobile`: a MobileNet-style chain of stages of inverted-residual blocks.

Per stage: depth and width multiplier. Per block (exists only when the stage is deep
enough): kernel 3/5/7, expansion 1/3/6, squeeze-excitation on/off, activation.
Labels: ``stage2/depth``, ``stage2/width``, ``stage2/block1/kernel`` ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from nasforge.nn.blocks import (
    ACTIVATIONS,
    ClassifierHead,
    ConvBNAct,
    InvertedResidual,
    make_divisible,
)
from nasforge.space import Arch, Categorical, Condition, Int, SearchSpace


@dataclass(frozen=True)
class StageSpec:
    channels: int
    stride: int
    max_depth: int


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block of an arch: where it sits and what it computes."""

    stage: int
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    expand: int
    act: str
    se: bool


DEFAULT_STAGES = (
    StageSpec(16, 1, 2),
    StageSpec(24, 2, 3),
    StageSpec(40, 2, 3),
    StageSpec(80, 1, 3),
)


class MobileSpace(SearchSpace):
    """MobileNetV2/V3-style macro space; ``input_shape`` is (C, H, W) or (C, L)."""

    name = "mobile"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        stages: Sequence[StageSpec | Sequence[int]] = DEFAULT_STAGES,
        kernels: Sequence[int] = (3, 5, 7),
        expands: Sequence[int] = (1, 3, 6),
        widths: Sequence[float] = (0.5, 0.75, 1.0),
        activations: Sequence[str] = ACTIVATIONS,
        se: Sequence[bool] = (False, True),
        stem_channels: int = 16,
        head_features: int = 128,
        stem_stride: int | None = None,
    ) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) not in (2, 3):
            raise ValueError(
                f"mobile: input_shape must be (C, H, W) or (C, L), got {self.input_shape}"
            )
        self.nd = len(self.input_shape) - 1
        self.num_classes = int(num_classes)
        self.stages = tuple(s if isinstance(s, StageSpec) else StageSpec(*s) for s in stages)
        self.stem_channels = stem_channels
        self.head_features = head_features
        if stem_stride is None:
            stem_stride = 2 if min(self.input_shape[1:]) >= 24 else 1
        self.stem_stride = stem_stride
        dims = []
        for i, st in enumerate(self.stages):
            p = f"stage{i}"
            dims.append(Int(f"{p}/depth", low=1, high=st.max_depth))
            dims.append(Categorical(f"{p}/width", choices=tuple(float(w) for w in widths)))
            for j in range(st.max_depth):
                when = (Condition(f"{p}/depth", ">=", j + 1),) if j > 0 else ()
                b = f"{p}/block{j}"
                dims.append(Categorical(f"{b}/kernel", choices=tuple(kernels), when=when))
                dims.append(Categorical(f"{b}/expand", choices=tuple(expands), when=when))
                dims.append(Categorical(f"{b}/se", choices=tuple(se), when=when))
                dims.append(Categorical(f"{b}/act", choices=tuple(activations), when=when))
        super().__init__(dims)

    def blocks(self, arch: Arch) -> list[BlockSpec]:
        """The inverted-residual blocks of ``arch`` in order, with their channel counts.

        The one walk over stages that ``build``, ``describe`` and the latency table share.
        """
        out: list[BlockSpec] = []
        ch = self.stem_channels
        for i, st in enumerate(self.stages):
            p = f"stage{i}"
            out_ch = make_divisible(st.channels * float(arch[f"{p}/width"]))
            for j in range(int(arch[f"{p}/depth"])):
                b = f"{p}/block{j}"
                out.append(
                    BlockSpec(
                        i,
                        ch,
                        out_ch,
                        int(arch[f"{b}/kernel"]),
                        st.stride if j == 0 else 1,
                        int(arch[f"{b}/expand"]),
                        str(arch[f"{b}/act"]),
                        bool(arch[f"{b}/se"]),
                    )
                )
                ch = out_ch
        return out

    def build(self, arch: Arch) -> nn.Module:
        self.validate(arch)
        nd = self.nd
        layers: list[nn.Module] = [
            ConvBNAct(
                self.input_shape[0], self.stem_channels, 3, self.stem_stride, act="hswish", nd=nd
            )
        ]
        ch = self.stem_channels
        for blk in self.blocks(arch):
            layers.append(
                InvertedResidual(
                    blk.in_ch,
                    blk.out_ch,
                    kernel=blk.kernel,
                    stride=blk.stride,
                    expand=blk.expand,
                    act=blk.act,
                    se=blk.se,
                    nd=nd,
                )
            )
            ch = blk.out_ch
        features = nn.Sequential(*layers)
        head = ClassifierHead(ch, self.head_features, self.num_classes, act="hswish", nd=nd)
        return nn.Sequential(features, head)

    def describe(self, arch: Arch) -> str:
        """Compact timm-style spelling: one line per stage, ``ir_k5_e6_se_silu`` per block."""
        blocks = self.blocks(arch)
        lines = []
        for i, st in enumerate(self.stages):
            mine = [b for b in blocks if b.stage == i]
            spelled = [f"ir_k{b.kernel}_e{b.expand}{'_se' if b.se else ''}_{b.act}" for b in mine]
            lines.append(
                f"stage{i}: c{mine[0].out_ch} s{st.stride} x{len(mine)}: " + " ".join(spelled)
            )
        return "\n".join(lines)
