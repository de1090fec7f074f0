"""`mobile`: a MobileNet-style chain of stages of inverted-residual blocks.

Per stage: depth and width multiplier. Per block (exists only when the stage is deep
enough): kernel 3/5/7, expansion 1/3/6, squeeze-excitation on/off, activation.
Labels: ``stage2/depth``, ``stage2/width``, ``stage2/block1/kernel`` ...

Elastic input resolution (option ``resolutions``, multipliers of the input's spatial size):
with more than one multiplier the space's first dimension is ``resolution`` and a net whose
multiplier is not 1.0 resizes its input first (:class:`~nasforge.nn.blocks.Resized`), so
every net takes the dataset's input and computes at :meth:`MobileSpace.input_size`.

Compound scaling (EfficientNet; options ``width_mult``, ``depth_mult``, ``resolution_mult``,
default 1.0): ``width_mult`` multiplies the channels of the stem, every stage and the head
(rounded with :func:`~nasforge.nn.blocks.make_divisible`), ``depth_mult`` turns each stage's
``max_depth`` into ``ceil(max_depth * depth_mult)`` and ``resolution_mult`` multiplies every
entry of ``resolutions`` (the net resizes its input to the scaled size). They are applied once
in the constructor, so ``build``, ``plan``, ``all_layers`` and the Once-for-All supernets all
see the scaled stages. :mod:`nasforge.spaces.mobile_scale` maps a base arch to its scaled one.

Layer plan (for latency tables): the input resize (only when resized), the stem, one
``mobile.ir`` layer per block, the head; the four factories are registered when this module is
imported.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from operator import itemgetter
from typing import Any, NamedTuple

from torch import nn

from nasforge.errors import ConfigError, SpaceError
from nasforge.nn.blocks import (
    ACTIVATIONS,
    ClassifierHead,
    ConvBNAct,
    InvertedResidual,
    Resized,
    make_divisible,
)
from nasforge.nn.layers import register_layer
from nasforge.space import Arch, Categorical, Condition, Dimension, Int, SearchSpace
from nasforge.space.plan import LayerSpec, Plan, PlanCache, Segment, downsample


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

#: the label of the elastic input resolution (a multiplier of the input's spatial size)
RESOLUTION = "resolution"
#: the smallest side a resized input may have (a smaller one leaves the stages nothing to see)
MIN_SIDE = 4
_WHERE = "space.options.resolutions"
#: the largest multiplier ``width_mult`` / ``depth_mult`` / ``resolution_mult`` accept
MAX_MULT = 16.0


def check_multiplier(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number in (0, :data:`MAX_MULT`].

    Raises:
        ConfigError: naming ``space.options.<name>``.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(f"space.options.{name}: {value!r} is not a finite number")
    if not 0 < float(value) <= MAX_MULT:
        raise ConfigError(f"space.options.{name}: {value} must be > 0 and <= {MAX_MULT:g}")
    return float(value)


def resolution_size(spatial: Sequence[int], multiplier: float) -> tuple[int, ...]:
    """The spatial size an input of ``spatial`` has at ``multiplier``: ``spatial`` itself at
    1.0, else each side ``max(MIN_SIDE, round(side * multiplier))``."""
    if multiplier == 1.0:
        return tuple(int(s) for s in spatial)
    return tuple(max(MIN_SIDE, round(s * multiplier)) for s in spatial)


def check_resolutions(resolutions: Any, spatial: Sequence[int]) -> tuple[float, ...]:
    """``resolutions`` as a tuple of floats, in the given order.

    Raises:
        ConfigError: (naming ``space.options.resolutions``) not a non-empty list of numbers; a
            value that is not finite and positive; a multiplier other than 1.0 that makes a side
            of ``spatial`` smaller than :data:`MIN_SIDE`; two multipliers giving one size.
    """
    if isinstance(resolutions, (str, bytes, Mapping)) or not isinstance(resolutions, Sequence):
        raise ConfigError(
            f"{_WHERE}: must be a list of multipliers of the input size (e.g. [0.5, 0.75, 1.0]),"
            f" got {resolutions!r}"
        )
    if len(resolutions) == 0:
        raise ConfigError(f"{_WHERE}: must list at least one multiplier (1.0: the input size)")
    out: list[float] = []
    sizes: dict[tuple[int, ...], float] = {}
    for i, m in enumerate(resolutions):
        if isinstance(m, bool) or not isinstance(m, Real) or not math.isfinite(float(m)):
            raise ConfigError(f"{_WHERE}[{i}]: {m!r} is not a finite number")
        m = float(m)
        if m <= 0:
            raise ConfigError(f"{_WHERE}[{i}]: {m} must be > 0")
        raw = tuple(round(s * m) for s in spatial)
        if m != 1.0 and min(raw) < MIN_SIDE:
            raise ConfigError(
                f"{_WHERE}[{i}]: {m} turns the {'x'.join(map(str, spatial))} input into "
                f"{'x'.join(map(str, raw))}; every side must stay >= {MIN_SIDE}"
            )
        size = resolution_size(spatial, m)
        if size in sizes:
            raise ConfigError(
                f"{_WHERE}[{i}]: {m} gives the same {'x'.join(map(str, size))} input as "
                f"{sizes[size]}; list each resolution once"
            )
        sizes[size] = m
        out.append(m)
    return tuple(out)


def scaled_sizes(
    resolutions: Sequence[float], spatial: Sequence[int], resolution_mult: float
) -> dict[float, tuple[int, ...]]:
    """Per multiplier of ``resolutions`` (checked), the size the net computes at once scaled
    by ``resolution_mult``.

    Raises:
        ConfigError: (naming ``space.options.resolution_mult``) the scaled size makes a side
            smaller than :data:`MIN_SIDE` or gives two multipliers one size.
    """
    out: dict[float, tuple[int, ...]] = {}
    for m in resolutions:
        scaled = m * resolution_mult
        raw = tuple(round(s * scaled) for s in spatial)
        if scaled != 1.0 and min(raw) < MIN_SIDE:
            raise ConfigError(
                f"space.options.resolution_mult: {resolution_mult} turns the "
                f"{'x'.join(map(str, spatial))} input into {'x'.join(map(str, raw))} at "
                f"resolution {m}; every side must stay >= {MIN_SIDE}"
            )
        size = resolution_size(spatial, scaled)
        if size in out.values():
            raise ConfigError(
                f"space.options.resolution_mult: {resolution_mult} gives resolutions {m} and "
                f"another one the same {'x'.join(map(str, size))} input; list fewer resolutions"
            )
        out[m] = size
    return out


def _scaled_channels(channels: int, width_mult: float) -> int:
    """``channels`` times ``width_mult``, rounded like MobileNet / EfficientNet's filters
    (unchanged at 1.0, so unscaled spaces keep their exact channels)."""
    return int(channels) if width_mult == 1.0 else make_divisible(channels * width_mult)


def _scaled_stage(stage: StageSpec, space: MobileSpace) -> StageSpec:
    """``stage`` with channels times the space's ``width_mult`` and ``max_depth`` times its
    ``depth_mult`` (rounded up)."""
    depth = (
        stage.max_depth
        if space.depth_mult == 1.0
        else math.ceil(stage.max_depth * space.depth_mult - 1e-9)
    )
    return StageSpec(_scaled_channels(stage.channels, space.width_mult), stage.stride, depth)


class _ResolutionPlan(NamedTuple):
    """The plan tables of one resolution (see :meth:`MobileSpace._compile_plan`)."""

    #: the segments before the first block: (resize,) stem
    lead: tuple[tuple[Segment, int], ...]
    #: per stage: (width label, depth label, c_in -> width -> (c_out, depth -> blocks))
    stages: list[tuple[str, str, dict[int, dict[Any, Any]]]]
    #: last channels -> the head segment
    heads: dict[int, tuple[Segment, int]]


class MobileSpace(SearchSpace):
    """MobileNetV2/V3-style macro space; ``input_shape`` is (C, H, W) or (C, L).

    Args:
        resolutions: multipliers of the input's spatial size the nets may compute at (see
            :meth:`input_size`). With more than one, the categorical dimension ``resolution``
            (the multipliers as floats) is the space's first; with one (default ``(1.0,)``)
            there is no such dimension and every net computes at that one multiplier.
        width_mult: multiplies the stem's, every stage's and the head's channels.
        depth_mult: each stage's ``max_depth`` becomes ``ceil(max_depth * depth_mult)``.
        resolution_mult: multiplies every entry of ``resolutions`` (the arch's
            ``resolution`` label keeps the unscaled value).

    Raises:
        ConfigError: bad ``resolutions`` or multipliers (the message names the option, e.g.
            ``space.options.width_mult``).
    """

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
        resolutions: Sequence[float] = (1.0,),
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        resolution_mult: float = 1.0,
    ) -> None:
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) not in (2, 3):
            raise ValueError(
                f"mobile: input_shape must be (C, H, W) or (C, L), got {self.input_shape}"
            )
        self.nd = len(self.input_shape) - 1
        self.width_mult = check_multiplier("width_mult", width_mult)
        self.depth_mult = check_multiplier("depth_mult", depth_mult)
        self.resolution_mult = check_multiplier("resolution_mult", resolution_mult)
        self.resolutions = check_resolutions(resolutions, self.input_shape[1:])
        #: multiplier -> the spatial size the net computes at
        self._sizes = scaled_sizes(self.resolutions, self.input_shape[1:], self.resolution_mult)
        self._elastic_resolution = len(self.resolutions) > 1
        self.num_classes = int(num_classes)
        self.stages = tuple(
            _scaled_stage(s if isinstance(s, StageSpec) else StageSpec(*s), self) for s in stages
        )
        self.stem_channels = _scaled_channels(stem_channels, self.width_mult)
        self.head_features = _scaled_channels(head_features, self.width_mult)
        if stem_stride is None:
            stem_stride = 2 if min(self.input_shape[1:]) >= 24 else 1
        self.stem_stride = stem_stride
        dims: list[Dimension] = []
        if self._elastic_resolution:
            dims.append(Categorical(RESOLUTION, choices=self.resolutions))
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
        self._compile_plan()

    def resolution(self, arch: Mapping[str, Any]) -> float:
        """The input-size multiplier of ``arch`` (the space's one multiplier without the
        ``resolution`` dimension).

        Raises:
            SpaceError: ``arch`` lacks the label or has a value that is not a choice.
        """
        if not self._elastic_resolution:
            return self.resolutions[0]
        try:
            m = arch[RESOLUTION]
        except KeyError:
            raise SpaceError(
                f"{self.name}: missing label {RESOLUTION!r} (one of {self.resolutions})"
            ) from None
        if isinstance(m, bool) or not isinstance(m, Real) or m not in self._sizes:
            raise SpaceError(
                f"{self.name}: {RESOLUTION} = {m!r} is not allowed; expected one of "
                f"{', '.join(map(repr, self.resolutions))}"
            )
        return float(m)

    def input_size(self, arch: Mapping[str, Any]) -> tuple[int, ...]:
        """The spatial size ``arch``'s net computes at: ``input_shape[1:]`` at multiplier 1.0,
        else each side ``max(4, round(side * multiplier))``.

        Raises:
            SpaceError: as :meth:`resolution`.
        """
        return self._sizes[self.resolution(arch)]

    def blocks(self, arch: Mapping[str, Any]) -> list[BlockSpec]:
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
        """``nn.Sequential(features, head)``; ``features`` is a :class:`Resized` (stem, blocks)
        when the arch computes at another size than the input's, else an ``nn.Sequential``
        (same state-dict keys either way)."""
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
        size = self.input_size(arch)
        features = (
            nn.Sequential(*layers) if size == self.input_shape[1:] else Resized(size, *layers)
        )
        head = ClassifierHead(ch, self.head_features, self.num_classes, act="hswish", nd=nd)
        return nn.Sequential(features, head)

    def describe(self, arch: Mapping[str, Any]) -> str:
        """Compact timm-style spelling: one line per stage, ``ir_k5_e6_se_silu`` per block,
        after a ``resolution: 0.75 (21x21)`` line when the arch resizes its input."""
        blocks = self.blocks(arch)
        lines = []
        size = self.input_size(arch)
        if size != self.input_shape[1:]:
            m = self.resolution(arch) * self.resolution_mult
            lines.append(f"resolution: {m:g} ({'x'.join(map(str, size))})")
        for i, st in enumerate(self.stages):
            mine = [b for b in blocks if b.stage == i]
            spelled = [f"ir_k{b.kernel}_e{b.expand}{'_se' if b.se else ''}_{b.act}" for b in mine]
            lines.append(
                f"stage{i}: c{mine[0].out_ch} s{st.stride} x{len(mine)}: " + " ".join(spelled)
            )
        return "\n".join(lines)

    # -- layer plan -----------------------------------------------------------------------------
    def _choices(self, label: str) -> tuple[Any, ...]:
        dim = self.dimension(label)
        assert isinstance(dim, Categorical)  # every such label is built categorical above
        return dim.choices

    def _compile_plan(self) -> None:
        """Tables the plan walks with one dict read per resolution, a few per stage and one
        per block: :class:`_ResolutionPlan` per multiplier (see :meth:`_compile_resolution`)."""
        self._plan_by_resolution: dict[Any, _ResolutionPlan] = {
            m: self._compile_resolution(size) for m, size in self._sizes.items()
        }
        #: the tables of an arch without the ``resolution`` label (one multiplier)
        self._plan_fixed = self._plan_by_resolution[self.resolutions[0]]

    def _resize_spec(self, size: tuple[int, ...]) -> LayerSpec:
        """The ``mobile.resize`` layer from the input's size to ``size``."""
        return LayerSpec("mobile.resize", (*size, self.nd), self.input_shape)

    def _compile_resolution(self, size: tuple[int, ...]) -> _ResolutionPlan:
        """The plan tables of nets computing at ``size``.

        Per stage: its width and depth labels and, per input channels and width choice, the
        output channels and, per depth, the (labels reader, segments by labels) of its blocks.
        """
        spatial = downsample(size, self.stem_stride)
        stages: list[tuple[str, str, dict[int, dict[Any, Any]]]] = []
        cins = {self.stem_channels}
        for i, st in enumerate(self.stages):
            p = f"stage{i}"
            outs = {w: make_divisible(st.channels * float(w)) for w in self._choices(f"{p}/width")}
            by_cin: dict[int, dict[Any, Any]] = {}
            for cin in cins:
                by_width = by_cin[cin] = {}
                for w, cout in outs.items():
                    blocks, sp = [], spatial
                    for j in range(st.max_depth):
                        stride = st.stride if j == 0 else 1
                        b = f"{p}/block{j}"
                        read = itemgetter(f"{b}/kernel", f"{b}/expand", f"{b}/act", f"{b}/se")
                        c = cin if j == 0 else cout
                        blocks.append((read, _Blocks(c, cout, stride, sp, self.nd)))
                        sp = downsample(sp, stride)
                    depths = {d: tuple(blocks[:d]) for d in range(1, st.max_depth + 1)}
                    by_width[w] = (cout, depths)
            for j in range(st.max_depth):
                spatial = downsample(spatial, st.stride if j == 0 else 1)
            stages.append((f"{p}/width", f"{p}/depth", by_cin))
            cins = set(outs.values())
        lead: list[tuple[Segment, int]] = []
        if size != self.input_shape[1:]:
            lead.append((self._resize_spec(size), 1))
        lead.append((self._stem_spec(size), 1))
        heads: dict[int, tuple[Segment, int]] = {
            ch: (
                LayerSpec(
                    "mobile.head",
                    (ch, self.head_features, self.num_classes, "hswish", self.nd),
                    (ch, *spatial),
                ),
                1,
            )
            for ch in cins
        }
        return _ResolutionPlan(tuple(lead), stages, heads)

    def _stem_spec(self, size: tuple[int, ...]) -> LayerSpec:
        return LayerSpec(
            "mobile.stem",
            (self.input_shape[0], self.stem_channels, 3, self.stem_stride, "hswish", self.nd),
            (self.input_shape[0], *size),
        )

    def plan(self, arch: Mapping[str, Any]) -> Plan:
        """(Input resize,) stem, one ``mobile.ir`` layer per block, head (segments shared
        between archs).

        Raises:
            KeyError: a resolution, width or depth that is not a choice of the space.
        """
        v = arch.to_dict() if isinstance(arch, Arch) else arch
        lead, stages, heads = (
            self._plan_by_resolution[v[RESOLUTION]]
            if self._elastic_resolution
            else self._plan_fixed
        )
        out = list(lead)
        append = out.append
        ch = self.stem_channels
        for wl, dl, by_cin in stages:
            ch, depths = by_cin[ch][v[wl]]
            for read, blocks in depths[v[dl]]:
                append(blocks[read(v)])
        append(heads[ch])
        return tuple(out)

    def all_layers(self) -> list[LayerSpec]:
        """Every layer any arch can produce: per resolution, the stages walked with
        (channels, size) sets."""
        return list(
            dict.fromkeys(
                layer for size in self._sizes.values() for layer in self._enumerate_layers(size)
            )
        )

    def _enumerate_layers(self, size: tuple[int, ...]) -> Iterator[LayerSpec]:
        nd = self.nd
        if size != self.input_shape[1:]:
            yield self._resize_spec(size)
        yield self._stem_spec(size)
        spatial = downsample(size, self.stem_stride)
        ins = {self.stem_channels}
        kernels, expands = (
            self._choices("stage0/block0/kernel"),
            self._choices("stage0/block0/expand"),
        )
        acts, ses = self._choices("stage0/block0/act"), self._choices("stage0/block0/se")
        for i, st in enumerate(self.stages):
            widths = self._choices(f"stage{i}/width")
            outs = {make_divisible(st.channels * float(w)) for w in widths}
            pairs = {(c_in, c_out, st.stride) for c_in in ins for c_out in outs}
            if st.max_depth > 1:
                pairs |= {(c, c, 1) for c in outs}
            for c_in, c_out, stride in sorted(pairs):
                shape = (
                    c_in,
                    *(spatial if stride == st.stride else downsample(spatial, st.stride)),
                )
                for k in kernels:
                    for e in expands:
                        for act in acts:
                            for se in ses:
                                yield LayerSpec(
                                    "mobile.ir",
                                    (c_in, c_out, int(k), stride, int(e), str(act), bool(se), nd),
                                    shape,
                                )
            spatial = downsample(spatial, st.stride)
            ins = outs
        for c in sorted(ins):
            yield LayerSpec(
                "mobile.head",
                (c, self.head_features, self.num_classes, "hswish", nd),
                (c, *spatial),
            )


class _Blocks(PlanCache[tuple[Any, ...], tuple[Segment, int]]):
    """The ``mobile.ir`` segments of one block position (channels, stride, input size), by
    the block's (kernel, expand, act, se) labels, made on first use."""

    def __init__(self, cin: int, cout: int, stride: int, spatial: tuple[int, ...], nd: int) -> None:
        super().__init__()
        self.where = (cin, cout, stride, spatial, nd)

    def __missing__(self, labels: tuple[Any, ...]) -> tuple[Segment, int]:
        cin, cout, stride, spatial, nd = self.where
        k, e, act, se = labels
        args = (cin, cout, int(k), stride, int(e), str(act), bool(se), nd)
        return self.put(labels, (LayerSpec("mobile.ir", args, (cin, *spatial)), 1))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.where)


# -- layer factories (the ops of MobileSpace.plan) --------------------------------------------
def _stem(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    cin, cout, k, stride, act, nd = args
    return ConvBNAct(cin, cout, k, stride, act=act, nd=nd)


def _ir(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    cin, cout, k, stride, expand, act, se, nd = args
    return InvertedResidual(
        cin, cout, kernel=k, stride=stride, expand=expand, act=act, se=se, nd=nd
    )


def _resize(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    *size, _nd = args
    return Resized(tuple(size))  # no children: the resize alone


def _head_layer(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    cin, features, num_classes, act, nd = args
    return ClassifierHead(cin, features, num_classes, act=act, nd=nd)


register_layer("mobile.stem", _stem)
register_layer("mobile.ir", _ir)
register_layer("mobile.head", _head_layer)
register_layer("mobile.resize", _resize)
