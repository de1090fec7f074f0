"""The Once-for-All elastic supernet of the ``mobile`` space (Cai et al., ICLR 2020).

One network holds the weights of every arch of a :class:`~nasforge.spaces.mobile.MobileSpace`;
unlike the single-path supernet (:mod:`nasforge.oneshot.supernet_mobile`, one choice block per
(kernel, expansion)), every block position owns ONE expand conv, depthwise conv, SE and
projection at the position's largest widths, shared by all choices, as OFA does:

* **elastic kernel**: the depthwise conv holds the largest kernel; a smaller kernel is the
  centre of the next larger (already transformed) kernel passed through a learned per-layer
  transform matrix, one per (larger -> smaller) step (``kernel_transforms["7to5"]``,
  ``["5to3"]``), a ``k**nd x k**nd`` matrix shared by all channels and initialised to the
  identity (so at first a small kernel is the plain centre crop). The transforms let a small
  kernel differ from the centre of the large one without separate weights (OFA, section 3.2).
* **elastic depth**: a stage of depth ``d`` runs its first ``d`` block positions.
* **elastic expansion**: a block's hidden channels are the first ``c_in * expand`` of the
  position's max hidden channels; :meth:`ElasticMobileSupernet.reorganize_channels` sorts them
  by importance (L1 norm of the projection's input weights) so the first ones are the most
  important. ``expand == 1`` has no expand conv: the depthwise conv runs on the block's input
  channels with its first ``c_in`` filters (as the stand-alone block does).
* **elastic width**: a stage's output channels are the first of the position's max width, and
  BN statistics are sliced the same way (:func:`~nasforge.oneshot.supernet_mobile.sliced_bn`).
* **SE** is sliced like the hidden channels; **activations** have no weights.
* **elastic resolution**: the input is resized to ``space.input_size(arch)`` first; every
  resolution shares every weight (and the BN statistics, recalibrated per arch later).

Labels map to :data:`ELASTIC_DIMS` by their last component (``stage1/block0/kernel`` ->
``kernel``). :meth:`ElasticMobileSupernet.extract` returns ``space.build(arch)`` with the
weights this supernet computes for ``arch`` copied in (kernel transforms applied), whose output
equals the supernet's under that arch in eval mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nasforge.errors import ConfigError
from nasforge.nn.blocks import ConvBNAct, bn_cls, conv_cls, make_divisible, resize
from nasforge.oneshot.supernet_mobile import DynamicConvBN, DynamicSE, sliced_bn
from nasforge.space import Arch, Categorical, Dimension, Float, Int, SearchSpace
from nasforge.space.arch import Value
from nasforge.spaces.mobile import BlockSpec, MobileSpace

#: The elastic dimensions of the mobile space, in the order progressive shrinking adds them.
ELASTIC_DIMS = ("resolution", "kernel", "depth", "expand", "width", "act", "se")

_ACT = {"relu": F.relu, "hswish": F.hardswish, "silu": F.silu}

Tensor = torch.Tensor


def elastic_dim(label: str) -> str:
    """The elastic dimension (one of :data:`ELASTIC_DIMS`) of a ``mobile`` label.

    Raises:
        ConfigError: the label is not one of an elastic dimension.
    """
    dim = label.rsplit("/", 1)[-1]
    if dim not in ELASTIC_DIMS:
        raise ConfigError(f"ofa: label {label!r} is of no elastic dimension {ELASTIC_DIMS}")
    return dim


def _values(dim: Dimension) -> tuple[Any, ...]:
    if isinstance(dim, Categorical):
        return tuple(dim.choices)
    if isinstance(dim, Int):
        return tuple(range(dim.low, dim.high + 1, dim.step))
    raise ConfigError(f"ofa: {dim.label} must be categorical or an integer, got {type(dim)}")


def extreme_arch(space: SearchSpace, largest: bool = True) -> Arch:
    """The largest (or smallest) arch of ``space``, read off its dimensions: the supernet's
    largest arch (the teacher of progressive shrinking) and the two ends of the space the
    subnet sample starts from.

    Per dimension: the highest (lowest) value of an integer, float or numeric categorical
    dimension; ``True`` (``False``) where a boolean choice such as squeeze-excitation offers
    it; an unordered choice (an activation) takes the space's first choice, as Once-for-All's
    largest network does. Conditional dimensions follow the values chosen before them.
    """
    values: dict[str, Value] = {}
    for d in space.dimensions():
        if d.active(values):
            values[d.label] = _extreme(d, largest)
    return space.make(values)


def _extreme(d: Dimension, largest: bool) -> Value:
    if isinstance(d, Int):
        vals = range(d.low, d.high + 1, d.step)
        return int(vals[-1] if largest else vals[0])
    if isinstance(d, Float):
        return float(d.high if largest else d.low)
    if isinstance(d, Categorical):
        ch = d.choices
        if all(isinstance(c, bool) for c in ch):
            return largest if largest in ch else ch[0]
        if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in ch):
            return max(ch) if largest else min(ch)  # type: ignore[type-var]
        return ch[0]
    return d.sample(np.random.default_rng(0))  # a dimension kind with no order


def _require_mobile(space: SearchSpace) -> MobileSpace:
    if not isinstance(space, MobileSpace):
        raise ConfigError(
            f"space: Once-for-All needs the mobile space, got {space.name!r} ({type(space)})"
        )
    return space


def elastic_values(space: SearchSpace) -> dict[str, tuple[Any, ...]]:
    """Every elastic dimension's values over all labels of ``space`` (sorted; ``act`` in the
    space's order, its first the largest). ``resolution`` is ``(1.0,)`` when the space has no
    resolution dimension. A dimension with one value is not elastic in this space.

    Raises:
        ConfigError: ``space`` is not a :class:`MobileSpace`.
    """
    _require_mobile(space)
    out: dict[str, list[Any]] = {name: [] for name in ELASTIC_DIMS}
    for dim in space.dimensions():
        values = out[elastic_dim(dim.label)]
        values.extend(v for v in _values(dim) if v not in values)
    if not out["resolution"]:
        out["resolution"] = [1.0]
    return {name: tuple(vals if name == "act" else sorted(vals)) for name, vals in out.items()}


class ElasticDepthwise(nn.Module):
    """A depthwise conv at the largest kernel (``conv``), its BN (``bn``) and the kernel
    transforms (``kernel_transforms["<larger>to<smaller>"]``) of OFA's elastic kernel."""

    def __init__(self, channels: int, kernels: Sequence[int], stride: int, nd: int) -> None:
        super().__init__()
        self.kernels = tuple(sorted({int(k) for k in kernels}))
        big = self.kernels[-1]
        if any((big - k) % 2 for k in self.kernels):
            raise ConfigError(
                f"space.kernels: elastic kernels need a common centre (all odd or all even), "
                f"got {self.kernels}"
            )
        self.stride, self.nd = stride, nd
        self.conv: Any = conv_cls(nd)(
            channels, channels, big, stride, big // 2, groups=channels, bias=False
        )
        self.bn: Any = bn_cls(nd)(channels)
        self.kernel_transforms = nn.ParameterDict(
            {
                f"{large}to{small}": nn.Parameter(torch.eye(small**nd))
                for small, large in zip(self.kernels, self.kernels[1:])
            }
        )

    def kernel_weight(self, kernel: int, channels: int) -> Tensor:
        """The first ``channels`` filters at ``kernel``: the largest kernel, then for each
        step down to ``kernel`` the centre of the previous one times its transform
        (``flat @ M.T``, as OFA's ``F.linear``)."""
        w: Tensor = self.conv.weight[:channels]
        if kernel not in self.kernels:
            raise ValueError(f"kernel {kernel} is not one of {self.kernels}")
        for large, small in zip(reversed(self.kernels), reversed(self.kernels[:-1])):
            if large <= kernel:
                break
            lo = (large - small) // 2
            crop = w[(slice(None), slice(None), *([slice(lo, lo + small)] * self.nd))]
            flat = crop.reshape(channels, small**self.nd)
            w = F.linear(flat, self.kernel_transforms[f"{large}to{small}"]).reshape(crop.shape)
        return w

    def run(self, x: Tensor, kernel: int) -> Tensor:
        """Depthwise conv of ``x`` (its ``x.shape[1]`` channels) at ``kernel``, then BN."""
        c = x.shape[1]
        fn = F.conv1d if self.nd == 1 else F.conv2d
        y = fn(x, self.kernel_weight(kernel, c), None, self.stride, kernel // 2, 1, c)
        return sliced_bn(self.bn, y)


class ElasticBlock(nn.Module):
    """One block position at its max widths: ``expand`` (absent when every expansion is 1),
    ``dw`` (:class:`ElasticDepthwise`), ``se`` (absent when SE is never on), ``project``."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        hidden: int,
        kernels: Sequence[int],
        stride: int,
        nd: int,
        se_reduced: int | None,
        has_expand: bool,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.has_expand = has_expand
        if has_expand:
            self.expand = DynamicConvBN(c_in, hidden, 1, 1, False, nd)
        self.dw = ElasticDepthwise(hidden, kernels, stride, nd)
        if se_reduced is not None:
            self.se = DynamicSE(hidden, se_reduced, nd)
        self.project = DynamicConvBN(hidden, c_out, 1, 1, False, nd)

    def run(self, x: Tensor, blk: BlockSpec) -> Tensor:
        """The stand-alone ``InvertedResidual`` of ``blk`` on ``x`` (``blk.in_ch`` channels)."""
        f = _ACT[blk.act]
        hidden = blk.in_ch * blk.expand
        h = f(self.expand.run(x, hidden)) if blk.expand != 1 else x
        h = f(self.dw.run(h, blk.kernel))
        if blk.se:
            h = self.se.run(h)
        y = self.project.run(h, blk.out_ch)
        return x + y if blk.stride == 1 and blk.in_ch == blk.out_ch else y


def _bn_state(bn: _BatchNorm, c: int) -> dict[str, Tensor]:
    assert bn.running_mean is not None and bn.running_var is not None  # built tracking
    assert bn.num_batches_tracked is not None
    return {
        "weight": bn.weight[:c],
        "bias": bn.bias[:c],
        "running_mean": bn.running_mean[:c],
        "running_var": bn.running_var[:c],
        "num_batches_tracked": bn.num_batches_tracked,
    }


def _prefixed(prefix: str, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


class ElasticMobileSupernet(nn.Module):
    """The OFA supernet of a mobile space: ``stem``, ``stages[i][j]`` (:class:`ElasticBlock`),
    ``head_conv``, ``head_fc`` (see the module docstring for what is shared how).

    Args:
        space: the mobile space; its kernels must share a centre (all odd, say).

    Raises:
        ConfigError: ``space`` is not a :class:`MobileSpace`, or its kernels are not centred.
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = _require_mobile(space)
        sp, nd = self.space, self.space.nd
        self.stem = ConvBNAct(
            sp.input_shape[0], sp.stem_channels, 3, sp.stem_stride, act="hswish", nd=nd
        )
        cins = {sp.stem_channels}
        stages: list[nn.Module] = []
        for i, st in enumerate(sp.stages):
            p = f"stage{i}"
            outs = {
                make_divisible(st.channels * float(w)) for w in _values(sp.dimension(f"{p}/width"))
            }
            positions: list[nn.Module] = []
            for j in range(st.max_depth):
                b = f"{p}/block{j}"
                ins = cins if j == 0 else outs
                expands = [int(e) for e in _values(sp.dimension(f"{b}/expand"))]
                hiddens = [c * e for c in ins for e in expands]
                with_se = True in _values(sp.dimension(f"{b}/se"))
                reduced = max(make_divisible(h / 4) for h in hiddens) if with_se else None
                kernels = [int(k) for k in _values(sp.dimension(f"{b}/kernel"))]
                positions.append(
                    ElasticBlock(
                        max(ins),
                        max(outs),
                        max(hiddens),
                        kernels,
                        st.stride if j == 0 else 1,
                        nd,
                        reduced,
                        max(expands) != 1,
                    )
                )
            stages.append(nn.ModuleList(positions))
            cins = outs
        self.stages = nn.ModuleList(stages)
        self.head_conv = DynamicConvBN(max(cins), sp.head_features, 1, 1, False, nd)
        self.head_fc = nn.Linear(sp.head_features, sp.num_classes)

    def largest_arch(self) -> Arch:
        """The LARGEST arch: max resolution, depth, width, kernel and expansion, the space's
        first activation, SE on where it is a choice (the teacher of progressive shrinking)."""
        return extreme_arch(self.space, largest=True)

    def _path(self, arch: Mapping[str, Any]) -> list[tuple[ElasticBlock, BlockSpec]]:
        """Per stand-alone block in order: its block position and its spec."""
        out = []
        position: dict[int, int] = {}
        for blk in self.space.blocks(arch):
            j = position.get(blk.stage, 0)
            position[blk.stage] = j + 1
            block: Any = self.stages[blk.stage][j]  # type: ignore[index]
            out.append((block, blk))
        return out

    def forward(self, x: Tensor, arch: Mapping[str, Any]) -> Tensor:
        """Logits of ``arch`` on ``x`` (resized to ``space.input_size(arch)``) with the
        shared weights.

        Raises:
            SpaceError: ``arch`` is not in the space.
        """
        self.space.validate(arch)
        x = self.stem(resize(x, self.space.input_size(arch)))
        for block, blk in self._path(arch):
            x = block.run(x, blk)
        x = F.hardswish(self.head_conv.run(x, self.space.head_features))
        out: Tensor = self.head_fc(x.mean(dim=tuple(range(2, x.dim()))))
        return out

    @torch.no_grad()
    def extract(self, arch: Mapping[str, Any]) -> nn.Module:
        """``space.build(arch)`` with the weights this supernet computes for ``arch``: kernel
        transforms applied, channels sliced, BN statistics copied as they are (recalibrate
        afterwards). A new module in eval mode sharing no storage with the supernet; its
        output equals ``self.eval()(x, arch)`` up to float rounding.

        Raises:
            SpaceError: ``arch`` is not in the space.
        """
        self.space.validate(arch)
        arch = arch if isinstance(arch, Arch) else self.space.make(arch)
        net: nn.Module = self.space.build(arch)
        state: dict[str, Tensor] = {}
        state.update(_prefixed("0.0", self.stem.state_dict()))
        ch = self.space.stem_channels
        for n, (block, blk) in enumerate(self._path(arch), start=1):
            state.update(_prefixed(f"0.{n}", self._block_state(block, blk)))
            ch = blk.out_ch
        head: Any = self.head_conv
        state["1.conv.0.weight"] = head[0].weight[:, :ch]
        state.update(_prefixed("1.conv.1", _bn_state(head[1], self.space.head_features)))
        state.update(_prefixed("1.fc", self.head_fc.state_dict()))
        net.load_state_dict({k: v.detach().clone() for k, v in state.items()})
        return net.eval()

    @staticmethod
    def _block_state(block: ElasticBlock, blk: BlockSpec) -> dict[str, Tensor]:
        """The state of the stand-alone ``InvertedResidual`` of ``blk`` (its own key names)."""
        hidden = blk.in_ch * blk.expand
        state: dict[str, Tensor] = {}
        if blk.expand != 1:
            ex: Any = block.expand
            state["expand.0.weight"] = ex[0].weight[:hidden, : blk.in_ch]
            state.update(_prefixed("expand.1", _bn_state(ex[1], hidden)))
        state["dw.0.weight"] = block.dw.kernel_weight(blk.kernel, hidden)
        state.update(_prefixed("dw.1", _bn_state(block.dw.bn, hidden)))
        if blk.se:
            se: Any = block.se
            r = make_divisible(hidden / 4)
            state["se.reduce.weight"] = se.reduce.weight[:r, :hidden]
            state["se.reduce.bias"] = se.reduce.bias[:r]
            state["se.expand.weight"] = se.expand.weight[:hidden, :r]
            state["se.expand.bias"] = se.expand.bias[:hidden]
        pr: Any = block.project
        state["project.0.weight"] = pr[0].weight[: blk.out_ch, :hidden]
        state.update(_prefixed("project.1", _bn_state(pr[1], blk.out_ch)))
        return state

    @torch.no_grad()
    def reorganize_channels(self) -> None:
        """OFA's importance sort of the hidden channels, in place (call it before an optimizer
        holds state for these parameters).

        Per block position with an expand conv: hidden channels are sorted by descending L1
        norm of the projection's input weights, and the expand conv's outputs + BN, the
        depthwise filters + BN, SE's reduce inputs / expand outputs and the projection's inputs
        are permuted alike; then SE's reduced channels (those the largest arch uses) are sorted
        by the L1 norm of SE expand's input weights. The largest arch computes the same
        function afterwards; smaller expansions keep the most important channels. Positions
        without an expand conv (every expansion 1) are left alone: their hidden channels are
        the previous stage's outputs. Subnets with ``expand == 1`` at a position that also has
        larger expansions see other depthwise filters afterwards (OFA's expansions exclude 1;
        progressive shrinking sorts before expansion becomes elastic).
        """
        for stage in self.stages:
            for block in stage:  # type: ignore[attr-defined]
                if block.has_expand:
                    self._sort_block(block)

    @staticmethod
    def _sort_block(block: ElasticBlock) -> None:
        pr: Any = block.project
        importance = (
            pr[0].weight.abs().sum(dim=tuple(d for d in range(pr[0].weight.dim()) if d != 1))
        )
        order = torch.argsort(importance, descending=True, stable=True)
        ex: Any = block.expand
        _permute(ex[0].weight, order, 0)
        _permute_bn(ex[1], order)
        _permute(block.dw.conv.weight, order, 0)
        _permute_bn(block.dw.bn, order)
        _permute(pr[0].weight, order, 1)
        if hasattr(block, "se"):
            se: Any = block.se
            _permute(se.reduce.weight, order, 1)
            _permute(se.expand.weight, order, 0)
            _permute(se.expand.bias, order, 0)
            # the reduced channels the largest hidden width uses (all of them, but for a
            # make_divisible that is not monotone): sort those only, so no arch loses one
            r = make_divisible(se.expand.weight.shape[0] / 4)
            w = se.expand.weight[:, :r]
            mid = w.abs().sum(dim=tuple(d for d in range(w.dim()) if d != 1))
            sub = torch.argsort(mid, descending=True, stable=True)
            full = torch.cat([sub, torch.arange(r, se.reduce.weight.shape[0])])
            _permute(se.reduce.weight, full, 0)
            _permute(se.reduce.bias, full, 0)
            _permute(se.expand.weight, full, 1)


def _permute(t: Tensor, order: Tensor, dim: int) -> None:
    t.copy_(t.index_select(dim, order))


def _permute_bn(bn: _BatchNorm, order: Tensor) -> None:
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if t is not None:
            _permute(t, order, 0)
