"""Channel groups and the union-find that builds them: the records leaf rules write to.

A tensor's channel *layout* is a list of :class:`Segment` s, each a slice of one channel
*space*; :class:`GroupBuilder` unions spaces that must be pruned together and records the
parameter slices (:class:`Member`) each space touches. Leaf rules
(:func:`~nasforge.compression.pruning.register_leaf_rule`) receive the builder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nasforge.compression.errors import UnsupportedModelError

MEMBER_KINDS = ("out", "in", "dw", "bn", "ln", "heads")
"""``out``: dim 0 of a conv/linear weight (+ bias); ``in``: dim 1 of a conv/linear weight;
``dw``: a depthwise conv (weight dim 0, bias, channel counts, groups); ``bn``: a batch norm;
``ln``: a layer norm over the channels (weight and bias); ``heads``: the per-head dims of a
:class:`~nasforge.compression.attention.SelfAttention` (no parameter of its own: its cut
checks that every head loses the same dims and updates ``head_dim``)."""


@dataclass(frozen=True)
class Member:
    """One parameter slice coupled to a group: channel ``offset + i`` of ``module``'s
    ``kind`` dim."""

    module: str
    kind: str
    offset: int = 0

    def spec(self) -> str:
        return f"{self.module}:{self.kind}@{self.offset}"


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together; ``frozen`` groups (with ``reason``) are kept.

    ``blocks``: the group is ``blocks`` equal consecutive parts (attention heads: channel
    ``i`` is in part ``i // (size // blocks)``) that must each keep the same number of
    channels; 1 means no such constraint.
    """

    id: str
    size: int
    members: tuple[Member, ...]
    frozen: bool = False
    reason: str = ""
    blocks: int = 1


@dataclass(frozen=True)
class Segment:
    """``length`` channels of channel space ``space`` (an id from ``new_space``)."""

    space: int
    length: int


class GroupBuilder:
    """Union-find over channel spaces plus the member list of each space."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.members: dict[int, list[Member]] = {}
        self.frozen: dict[int, str] = {}
        self.blocks: dict[int, int] = {}
        self.names: list[str] = []

    def new_space(self, size: int, name: str) -> int:
        sid = len(self.parent)
        self.parent.append(sid)
        self.size.append(int(size))
        self.members[sid] = []
        self.names.append(name)
        return sid

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            raise UnsupportedModelError(
                f"layer {where!r}: couples channel groups of different sizes "
                f"({self.size[ra]} vs {self.size[rb]})"
            )
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen.pop(rb))
        if rb in self.blocks:
            self._merge_blocks(ra, self.blocks.pop(rb), where)

    def add_member(self, layout: list[Segment], module: str, kind: str) -> None:
        offset = 0
        for seg in layout:
            self.members[self.find(seg.space)].append(Member(module, kind, offset))
            offset += seg.length

    def set_blocks(self, layout: list[Segment], blocks: int, where: str) -> None:
        """Each space of ``layout`` is ``blocks`` equal parts that keep equal counts."""
        for seg in layout:
            self._merge_blocks(self.find(seg.space), blocks, where)

    def _merge_blocks(self, root: int, blocks: int, where: str) -> None:
        both = math.lcm(self.blocks.get(root, 1), int(blocks))
        if self.size[root] % both:
            self.frozen.setdefault(
                root, f"incompatible block (head) counts at {where!r} ({both} parts)"
            )
            both = 1
        if both > 1:
            self.blocks[root] = both

    def freeze(self, layout: list[Segment] | None, reason: str) -> None:
        for seg in layout or []:
            self.frozen.setdefault(self.find(seg.space), reason)


@dataclass(frozen=True)
class LayerCost:
    """MACs of one conv/linear (or attention matmul) at batch 1; layouts are
    ``(group id, length)`` segments (the graph's FLOPs estimate scales by what they keep)."""

    module: str
    macs: int
    in_layout: list[tuple[str, int]]
    out_layout: list[tuple[str, int]]
    depthwise: bool = False


@dataclass(frozen=True)
class RawCost:
    """A :class:`LayerCost` while the graph is built: layouts still as segments."""

    module: str
    macs: int
    ins: list[Segment]
    outs: list[Segment]
    depthwise: bool = False
