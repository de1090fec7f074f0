"""The single-path supernet of the ``mobile`` space (see :mod:`nasforge.oneshot.supernet`).

Weight sharing, chosen per SPOS (Guo et al., 2020) and FairNAS (Chu et al., 2021):

* **kernel x expansion: separate weights per choice.** Every block position owns one
  inverted-residual *choice block* per (kernel, expansion) pair, as SPOS and FairNAS do. Sharing
  the centre of a 7x7 kernel with the 3x3 choice couples the choices (a 3x3 path pulls the 7x7
  centre towards its own optimum), which OFA can only undo with kernel-transform matrices and
  progressive shrinking; separate blocks keep single-path training simple and every choice's
  weights its own, which is what strict fairness assumes.
* **widths: the largest weights, sliced.** A stage's width multiplier and the hidden width that
  follows from the block's input width select the first channels of one max-width tensor, as
  SPOS's channel search does (its "preallocated weight tensor with maximum channels"); BN
  statistics are sliced the same way (and recalibrated per arch before evaluation).
* **squeeze-excitation: per choice block**, used or skipped (sliced like the widths);
  **activation: no weights**, so every activation shares the block's weights.
* **depth**: blocks deeper than the stage's depth are skipped; the first block of a stage
  always runs.

Module names mirror the stand-alone :class:`~nasforge.nn.blocks.InvertedResidual` (``expand.0``
conv, ``expand.1`` BN, ``dw``, ``se.reduce``, ``se.expand``, ``project``) and
:class:`~nasforge.nn.blocks.ClassifierHead` (``conv``, ``fc``), so :meth:`inherited_key` is a
rename and extraction slices every tensor to the stand-alone shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nasforge.errors import ConfigError
from nasforge.nn.blocks import ConvBNAct, bn_cls, conv_cls, make_divisible, resize
from nasforge.space import Categorical, SearchSpace
from nasforge.spaces.mobile import MobileSpace

_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "hswish": F.hardswish,
    "silu": F.silu,
    "identity": lambda t: t,
}


def sliced_bn(bn: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``bn`` on the first ``x.shape[1]`` channels (running statistics updated in place on the
    slice in train mode, with ``bn``'s momentum or, when ``None``, a cumulative average)."""
    c = x.shape[1]
    factor = 0.0
    if bn.training and bn.track_running_stats:
        assert bn.num_batches_tracked is not None  # tracked buffers exist (checked above)
        bn.num_batches_tracked.add_(1)
        n = int(bn.num_batches_tracked)
        factor = 1.0 / n if bn.momentum is None else float(bn.momentum)
    rm = bn.running_mean[:c] if bn.running_mean is not None else None
    rv = bn.running_var[:c] if bn.running_var is not None else None
    w = bn.weight[:c] if bn.weight is not None else None
    b = bn.bias[:c] if bn.bias is not None else None
    use_batch = bn.training or rm is None
    return F.batch_norm(x, rm, rv, w, b, use_batch, factor, bn.eps)


class DynamicConvBN(nn.Sequential):
    """A max-width conv (``0``) and BN (``1``); :meth:`run` uses the first channels."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, depthwise: bool, nd: int
    ) -> None:
        groups = c_in if depthwise else 1
        super().__init__(
            conv_cls(nd)(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            bn_cls(nd)(c_out),
        )
        self.stride, self.padding, self.depthwise, self.nd = stride, kernel // 2, depthwise, nd

    def run(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        """Conv from ``x.shape[1]`` to ``c_out`` channels (depthwise: ``c_out == x.shape[1]``),
        then BN on those channels."""
        conv: Any = self[0]
        if self.depthwise:
            w, groups = conv.weight[:c_out], c_out
        else:
            w, groups = conv.weight[:c_out, : x.shape[1]], 1
        fn = F.conv1d if self.nd == 1 else F.conv2d
        y = fn(x, w, None, self.stride, self.padding, 1, groups)
        bn: Any = self[1]
        return sliced_bn(bn, y)


class DynamicSE(nn.Module):
    """Squeeze-excitation with max widths (``reduce``, ``expand`` as in ``SqueezeExcite``)."""

    def __init__(self, channels: int, reduced: int, nd: int) -> None:
        super().__init__()
        self.nd = nd
        self.reduce: Any = conv_cls(nd)(channels, reduced, 1)
        self.expand: Any = conv_cls(nd)(reduced, channels, 1)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        r = make_divisible(c / 4)
        fn = F.conv1d if self.nd == 1 else F.conv2d
        s = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        s = F.relu(fn(s, self.reduce.weight[:r, :c], self.reduce.bias[:r]))
        s = fn(s, self.expand.weight[:c, :r], self.expand.bias[:c])
        return x * F.hardsigmoid(s)


class ChoiceBlock(nn.Module):
    """One (kernel, expansion) choice of a block position, at the position's max widths."""

    def __init__(
        self,
        c_in_max: int,
        c_out_max: int,
        kernel: int,
        expand: int,
        stride: int,
        nd: int,
        se_reduced: int | None,
    ) -> None:
        super().__init__()
        hidden = c_in_max * expand
        self.expand_ratio, self.stride = expand, stride
        if expand != 1:
            self.expand = DynamicConvBN(c_in_max, hidden, 1, 1, False, nd)
        self.dw = DynamicConvBN(hidden, hidden, kernel, stride, True, nd)
        if se_reduced is not None:
            self.se = DynamicSE(hidden, se_reduced, nd)
        self.project = DynamicConvBN(hidden, c_out_max, 1, 1, False, nd)

    def run(self, x: torch.Tensor, c_out: int, act: str, se: bool) -> torch.Tensor:
        """The stand-alone ``InvertedResidual(x.shape[1], c_out, ...)`` computation."""
        c_in = x.shape[1]
        hidden = c_in * self.expand_ratio
        f = _ACTS[act]
        h = f(self.expand.run(x, hidden)) if self.expand_ratio != 1 else x
        h = f(self.dw.run(h, hidden))
        if se:
            h = self.se.run(h)
        y = self.project.run(h, c_out)
        return x + y if self.stride == 1 and c_in == c_out else y


def _choices(space: SearchSpace, label: str) -> tuple[Any, ...]:
    dim = space.dimension(label)
    if not isinstance(dim, Categorical):
        raise ConfigError(f"{space.name}: {label} must be categorical for the supernet")
    return tuple(dim.choices)


class MobileSupernet(nn.Module):
    """Stem, ``stages[i][j][f"k{k}_e{e}"]`` choice blocks, head (see the module docstring)."""

    _BLOCK_KEY = re.compile(r"^0\.(\d+)\.(.+)$")

    def __init__(self, space: MobileSpace) -> None:
        super().__init__()
        self.space = space
        nd = space.nd
        kernels = _choices(space, "stage0/block0/kernel")
        expands = _choices(space, "stage0/block0/expand")
        with_se = True in _choices(space, "stage0/block0/se")
        self.stem = ConvBNAct(
            space.input_shape[0], space.stem_channels, 3, space.stem_stride, act="hswish", nd=nd
        )
        cins = {space.stem_channels}
        stages: list[nn.Module] = []
        for i, st in enumerate(space.stages):
            outs = {
                make_divisible(st.channels * float(w)) for w in _choices(space, f"stage{i}/width")
            }
            positions: list[nn.Module] = []
            for j in range(st.max_depth):
                ins = cins if j == 0 else outs
                stride = st.stride if j == 0 else 1
                choices: dict[str, nn.Module] = {}
                for k in kernels:
                    for e in expands:
                        reduced = max(make_divisible(c * int(e) / 4) for c in ins)
                        choices[f"k{k}_e{e}"] = ChoiceBlock(
                            max(ins),
                            max(outs),
                            int(k),
                            int(e),
                            stride,
                            nd,
                            reduced if with_se else None,
                        )
                positions.append(nn.ModuleDict(choices))
            stages.append(nn.ModuleList(positions))
            cins = outs
        self.stages = nn.ModuleList(stages)
        self.head_conv = DynamicConvBN(max(cins), space.head_features, 1, 1, False, nd)
        self.head_fc = nn.Linear(space.head_features, space.num_classes)

    def _path(self, arch: Mapping[str, Any]) -> list[tuple[int, int, str, Any]]:
        """Per stand-alone block in order: (stage, position, choice key, block spec)."""
        out = []
        position: dict[int, int] = {}
        for blk in self.space.blocks(arch):
            j = position.get(blk.stage, 0)
            position[blk.stage] = j + 1
            out.append((blk.stage, j, f"k{blk.kernel}_e{blk.expand}", blk))
        return out

    def forward(self, x: torch.Tensor, arch: Mapping[str, Any]) -> torch.Tensor:
        x = resize(x, self.space.input_size(arch))  # the stand-alone net's input resize
        x = self.stem(x)
        for i, j, key, blk in self._path(arch):
            choice: Any = self.stages[i][j][key]  # type: ignore[index]
            x = choice.run(x, blk.out_ch, blk.act, blk.se)
        x = F.hardswish(self.head_conv.run(x, self.space.head_features))
        x = x.mean(dim=tuple(range(2, x.dim())))
        out: torch.Tensor = self.head_fc(x)
        return out

    def inherited_key(self, key: str, arch: Mapping[str, Any]) -> str:
        """Stand-alone ``Sequential(features, head)`` keys to supernet keys: ``0.0`` is the
        stem, ``0.<n>`` the n-th block (its choice block), ``1.conv`` / ``1.fc`` the head."""
        if key.startswith("0.0."):
            return "stem." + key[4:]
        if key.startswith("1.conv."):
            return "head_conv." + key[7:]
        if key.startswith("1.fc."):
            return "head_fc." + key[5:]
        m = self._BLOCK_KEY.match(key)
        if m is None:
            raise KeyError(f"mobile supernet: unexpected stand-alone key {key!r}")
        n, rest = int(m.group(1)), m.group(2)
        i, j, choice, _ = self._path(arch)[n - 1]
        return f"stages.{i}.{j}.{choice}.{rest}"


def mobile_supernet(space: SearchSpace, **options: Any) -> nn.Module:
    """Builder registered for ``mobile`` (no options)."""
    if options:
        raise ConfigError(f"supernet options: mobile takes none, got {sorted(options)}")
    if not isinstance(space, MobileSpace):
        raise ConfigError(f"space: the mobile supernet needs a MobileSpace, got {type(space)}")
    return MobileSupernet(space)
