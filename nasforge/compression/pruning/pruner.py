"""Structured channel pruning: ``ChannelPruner.plan(model) -> PruningPlan`` and ``apply_plan``.

The pruner decides (from the dependency graph and an importance) how many and which
channels each coupled group keeps; :func:`apply_plan` physically slices the parameters so
the pruned model is a smaller dense model that any runtime speeds up; :func:`mask_plan`
zeroes the same channels instead -- the oracle of the differential tests.

Transformers: ``nn.MultiheadAttention`` layers are first replaced by the equal
:class:`~nasforge.compression.attention.SelfAttention` (``decompose_attention``), whose
q/k/v/out_proj Linear layers the graph can couple; a group of ``blocks`` parts (attention
heads) keeps the same number of channels in every part, so every head keeps one head_dim.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nasforge.compression.attention import decompose_attention
from nasforge.compression.errors import PlanMismatchError
from nasforge.compression.pruning.cuts import cut_rule_for
from nasforge.compression.pruning.graph import DependencyGraph
from nasforge.compression.pruning.groups import ChannelGroup, Member
from nasforge.compression.pruning.importance import Importance
from nasforge.compression.pruning.plan import GroupCut, PruningPlan
from nasforge.nn.fuse import reestimate_bn

TARGETS = ("flops", "channels")
SCOPES = ("layer", "global")


@dataclass(frozen=True)
class ChannelPruningConfig:
    """How much to prune.

    Attributes:
        ratio: fraction of ``target`` to remove, in [0, 1).
        target: ``flops`` (conv/linear MACs, estimated from the graph) or ``channels``.
        scope: ``layer`` (the same fraction in every group) or ``global`` (one importance
            threshold across groups, each group's scores normalised by its mean).
        round_to: kept channel counts are rounded up to a multiple of this (SIMD widths).
        min_keep: no group keeps fewer channels than this (or its size, if smaller).
        ignore: module-name prefixes; groups with a member under one are not pruned.
    """

    ratio: float = 0.5
    target: str = "flops"
    scope: str = "global"
    round_to: int = 8
    min_keep: int = 8
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"prune.ratio must be in [0, 1), got {self.ratio}")
        if self.target not in TARGETS:
            raise ValueError(f"prune.target: expected one of {TARGETS}, got {self.target!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"prune.scope: expected one of {SCOPES}, got {self.scope!r}")
        if self.round_to < 1 or self.min_keep < 1:
            raise ValueError("prune.round_to and prune.min_keep must be >= 1")


class ChannelPruner:
    """Plans structured channel pruning with an importance criterion and a ratio config.

    ``plan`` reads the model and returns data; ``apply`` mutates the model in place (its
    parameters are replaced, so build optimizers after applying).
    """

    def __init__(self, importance: Importance, config: ChannelPruningConfig | None = None) -> None:
        self.importance = importance
        self.config = config or ChannelPruningConfig()

    def _candidates(self, graph: DependencyGraph) -> list[ChannelGroup]:
        ign = self.config.ignore
        return [
            g
            for g in graph.prunable
            if not any(m.module.startswith(p) for m in g.members for p in ign)
        ]

    def _floor(self, g: ChannelGroup) -> int:
        nb = _blocks(g)
        return nb * min(g.size // nb, max(1, math.ceil(self.config.min_keep / nb)))

    def _round(self, g: ChannelGroup, n: float) -> int:
        """``n`` kept channels rounded up: to a multiple of ``round_to`` (per block, when
        ``round_to`` divides the block), within [floor, size]; always a multiple of the
        group's ``blocks`` (equal counts per block)."""
        nb = _blocks(g)
        per, r = g.size // nb, self.config.round_to
        k = math.ceil(n / nb - 1e-9)
        if per % r == 0 or nb == 1:
            k = int(math.ceil(k / r - 1e-9) * r)
        return max(self._floor(g), min(g.size, nb * k))

    def plan(
        self, model: nn.Module, input_shape: Sequence[int], graph: DependencyGraph | None = None
    ) -> PruningPlan:
        """Decide which channels each prunable group keeps; the model is not modified."""
        decomposed = with_attention_decomposed(model)
        notes: tuple[str, ...] = ()
        if decomposed is not model:
            notes = (
                "nn.MultiheadAttention replaced by the equal SelfAttention (q/k/v/out_proj "
                "Linear layers): heads' dims pruned alike, num_heads and embedding dim kept",
            )
        model = decomposed
        graph = graph or DependencyGraph.build(model, input_shape)
        cfg = self.config
        groups = self._candidates(graph)
        scores = {g.id: self.importance.scores(model, g) for g in groups}
        total = graph.estimate_macs()
        if cfg.scope == "layer":
            keep = self._layer_counts(graph, groups, total)
        else:
            keep = self._global_counts(graph, groups, scores, total)
        cuts = []
        for g in groups:
            idx = _top_per_block(scores[g.id], keep[g.id], _blocks(g))
            cuts.append(
                GroupCut(
                    g.id,
                    g.size,
                    tuple(sorted(int(i) for i in idx)),
                    tuple(m.spec() for m in g.members),
                )
            )
        return PruningPlan(
            tuple(cuts),
            tuple(int(s) for s in input_shape),
            self.importance.name,
            cfg.scope,
            cfg.target,
            cfg.ratio,
            total,
            graph.estimate_macs(keep),
            notes,
        )

    def apply(self, model: nn.Module, plan: PruningPlan) -> nn.Module:
        """Physically remove the channels ``plan`` drops (in place); returns ``model``."""
        return apply_plan(model, plan)

    def _layer_counts(
        self, graph: DependencyGraph, groups: list[ChannelGroup], total: int
    ) -> dict[str, int]:
        def counts(r: float) -> dict[str, int]:
            return {g.id: self._round(g, g.size * (1.0 - r)) for g in groups}

        if self.config.target == "channels":
            return counts(self.config.ratio)
        goal = total * (1.0 - self.config.ratio)
        return _bisect(counts, lambda k: graph.estimate_macs(k) <= goal)

    def _global_counts(
        self,
        graph: DependencyGraph,
        groups: list[ChannelGroup],
        scores: dict[str, torch.Tensor],
        total: int,
    ) -> dict[str, int]:
        normed = {}
        for g in groups:
            s = scores[g.id].float()
            normed[g.id] = s / s.mean() if float(s.mean()) > 0 else s
        hi = max((float(v.max()) for v in normed.values()), default=1.0) + 1e-6

        def above(g: ChannelGroup, t: float) -> float:
            # a block group keeps its parts equal: the most-kept part sets the count
            per_block = (normed[g.id] > t * hi).reshape(_blocks(g), -1).sum(1)
            return float(per_block.max()) * _blocks(g)

        def counts(t: float) -> dict[str, int]:
            return {g.id: self._round(g, above(g, t)) for g in groups}

        if self.config.target == "channels":
            n_all = sum(g.size for g in groups)
            goal_ch = n_all * (1.0 - self.config.ratio)
            return _bisect(counts, lambda k: sum(k.values()) <= goal_ch)
        goal = total * (1.0 - self.config.ratio)
        return _bisect(counts, lambda k: graph.estimate_macs(k) <= goal)


def _blocks(g: ChannelGroup) -> int:
    """Equal parts of ``g`` (attention heads); 1 for a group without ``blocks``."""
    nb = int(getattr(g, "blocks", 1) or 1)
    return nb if nb > 0 and g.size % nb == 0 else 1


def _top_per_block(scores: torch.Tensor, keep: int, blocks: int) -> list[int]:
    """Indices of the ``keep // blocks`` highest scores of every block, sorted."""
    per, k = scores.numel() // blocks, keep // blocks
    out: list[int] = []
    for b in range(blocks):
        idx = torch.argsort(scores[b * per : (b + 1) * per], descending=True, stable=True)[:k]
        out.extend(b * per + int(i) for i in idx)
    return sorted(out)


def with_attention_decomposed(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no ``nn.MultiheadAttention``; otherwise a copy whose
    attention layers are the equal, prunable ``SelfAttention`` (the model is not changed)."""
    if not any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return model
    return decompose_attention(model)


def decompose_attention_(model: nn.Module) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` inside ``model`` by its equal
    ``SelfAttention`` in place (what :func:`apply_plan` prunes); returns ``model``."""
    if isinstance(model, nn.MultiheadAttention):
        raise PlanMismatchError(
            "pruning: the model is a bare nn.MultiheadAttention; prune the model that holds it"
        )
    if not any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        return model
    copy_ = decompose_attention(model)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.MultiheadAttention):
            parent, _, attr = name.rpartition(".")
            new = copy_.get_submodule(name)
            if not isinstance(new, nn.MultiheadAttention):
                setattr(model.get_submodule(parent), attr, new)
    return model


def _bisect(
    counts: Callable[[float], dict[str, int]], ok: Callable[[dict[str, int]], bool], steps: int = 40
) -> dict[str, int]:
    """Smallest parameter in [0, 1] whose counts satisfy ``ok`` (monotone), or 1.0's counts."""
    lo, hi = 0.0, 1.0
    if ok(counts(lo)):
        return counts(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if ok(counts(mid)):
            hi = mid
        else:
            lo = mid
    return counts(hi)


def _check_fit(model: nn.Module, plan: PruningPlan) -> DependencyGraph:
    graph = DependencyGraph.build(model, plan.input_shape)
    for cut in plan.cuts:
        g = graph.by_id.get(cut.group)
        if g is None:
            raise PlanMismatchError(f"pruning plan: group {cut.group!r} is not in this model")
        if g.size != cut.size or tuple(m.spec() for m in g.members) != cut.members:
            raise PlanMismatchError(
                f"pruning plan: group {cut.group!r} does not match this model "
                f"(size {g.size} vs planned {cut.size}, or different coupled layers)"
            )
        if g.frozen:
            raise PlanMismatchError(f"pruning plan: group {cut.group!r} is frozen ({g.reason})")
        if any(i < 0 or i >= g.size for i in cut.keep) or not cut.keep:
            raise PlanMismatchError(f"pruning plan: group {cut.group!r} keeps invalid indices")
        nb = _blocks(g)
        if nb > 1:
            per = g.size // nb
            kept = [sum(1 for i in cut.keep if i // per == b) for b in range(nb)]
            if len(set(kept)) > 1:
                raise PlanMismatchError(
                    f"pruning plan: group {cut.group!r} keeps {kept} channels of its {nb} "
                    "blocks; every block (attention head) must keep the same number"
                )
    return graph


def _removals(graph: DependencyGraph, plan: PruningPlan) -> dict[tuple[str, str], list[int]]:
    """(module, kind) -> channel indices (within that dim) to remove."""
    out: dict[tuple[str, str], list[int]] = {}
    for cut in plan.cuts:
        drop = sorted(set(range(cut.size)) - set(cut.keep))
        for m in graph.by_id[cut.group].members:
            out.setdefault((m.module, m.kind), []).extend(m.offset + i for i in drop)
    return out


def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Remove the channels that ``plan`` drops from ``model`` in place; returns ``model``.

    ``nn.MultiheadAttention`` layers of ``model`` are first replaced (in place) by the
    equal ``SelfAttention`` the plan was made on. Each member's module is cut by the rule
    registered for its type
    (:func:`~nasforge.compression.pruning.register_cut_rule`); every rule is looked up
    before anything is cut, so a missing rule leaves the model untouched.

    Raises:
        PlanMismatchError: the plan was made for a different model (names the group).
        UnsupportedModelError: a member's layer type has no cut rule (names the layer).
    """
    decompose_attention_(model)
    graph = _check_fit(model, plan)
    removals = _removals(graph, plan)
    rules = {module: cut_rule_for(model.get_submodule(module), module) for module, _ in removals}
    for (module, kind), drop in removals.items():
        if drop:
            rules[module].cut(model.get_submodule(module), kind, drop)
    return model


def mask_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A copy of ``model`` whose dropped channels are zeroed where they are consumed.

    Zeroing the consumers' input slices (``in`` members, along their rule's channel dim of
    ``weight``) removes each dropped channel's every effect on the output (attention: the
    q/k/v rows too), so ``apply_plan`` must compute the same function.
    """
    masked = decompose_attention_(copy.deepcopy(model))
    graph = _check_fit(masked, plan)
    # attention: a dropped q/k dim acts through the q.k product, not through an ``in``
    # slice, so its q/k/v ``out`` rows (weight and bias) are zeroed as well
    attn = {
        m.module
        for cut in plan.cuts
        if any(x.kind == "heads" for x in graph.by_id[cut.group].members)
        for m in graph.by_id[cut.group].members
        if m.kind == "out"
    }
    with torch.no_grad():
        for (module, kind), drop in _removals(graph, plan).items():
            if not drop or not (kind == "in" or (kind == "out" and module in attn)):
                continue
            mod = masked.get_submodule(module)
            rule = cut_rule_for(mod, module)
            for attr in ("weight", "bias") if kind == "out" else ("weight",):
                dim = rule.channel_dim(kind, attr)
                t = getattr(mod, attr, None)
                if dim is not None and isinstance(t, torch.Tensor):
                    t.index_fill_(dim, torch.tensor(drop), 0.0)
    return masked


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Re-estimate every batch norm's running statistics on ``batches`` (in place).

    Removing channels changes the distribution every later BN sees, so the statistics
    recorded before pruning are stale and the pruned model evaluates far below what it
    can do. A forward pass over a few training batches (cumulative averages, no
    gradients, nothing else trained) restores them; the model is left in eval mode.

    Raises:
        ValueError: ``batches`` is empty (the statistics would be reset to nothing).
    """
    data = list(batches)
    if not data:
        raise ValueError("recalibrate_bn: no batches to estimate BN statistics from")
    reestimate_bn(model, model, data)
    return model


def group_members(graph: DependencyGraph, group_id: str) -> tuple[Member, ...]:
    """Members of one group (for reports and debugging)."""
    return graph.by_id[group_id].members
