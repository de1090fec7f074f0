"""Pruning: the channel dependency graph (coupling rules), per-layer cut rules, importance
criteria, structured and unstructured pruners, hardware-aware ratios and iterative magnitude
pruning. A new layer type is made prunable with ``register_leaf_rule`` (how it couples
channels) and ``register_cut_rule`` (how it loses them); an fx-wrapped function (torchvision's
``stochastic_depth``) with ``register_function_rule``. Models with ``nn.MultiheadAttention``
are pruned through the equal ``SelfAttention`` (heads' dims and MLP width)."""

from nasforge.compression.pruning.cuts import (
    CutRule,
    default_channel_dim,
    keep_index,
    register_cut_rule,
    slice_parameters,
)
from nasforge.compression.pruning.graph import (
    DependencyGraph,
    FunctionRule,
    pass_through,
    register_function_rule,
    register_leaf_rule,
)
from nasforge.compression.pruning.groups import ChannelGroup, GroupBuilder, Member, Segment
from nasforge.compression.pruning.imp import (
    IMPResult,
    IMPRound,
    imp_sparsity,
    iterative_magnitude_pruning,
)
from nasforge.compression.pruning.importance import (
    IMPORTANCES,
    BNScaleImportance,
    GroupMagnitudeImportance,
    Importance,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
    make_importance,
)
from nasforge.compression.pruning.latency import (
    ChannelLatencyTable,
    build_latency_table,
    latency_aware_plan,
)
from nasforge.compression.pruning.plan import GroupCut, PruningPlan
from nasforge.compression.pruning.pruner import (
    ChannelPruner,
    ChannelPruningConfig,
    apply_plan,
    mask_plan,
    recalibrate_bn,
)
from nasforge.compression.pruning.unstructured import (
    GradualMagnitudePruner,
    SparsitySchedule,
    WeightMasks,
    fold_masks,
    magnitude_masks,
    sparse_size_bytes,
    weight_sparsity,
)

__all__ = [
    "IMPORTANCES",
    "BNScaleImportance",
    "ChannelGroup",
    "ChannelLatencyTable",
    "ChannelPruner",
    "ChannelPruningConfig",
    "CutRule",
    "DependencyGraph",
    "FunctionRule",
    "GradualMagnitudePruner",
    "GroupBuilder",
    "GroupMagnitudeImportance",
    "GroupCut",
    "IMPResult",
    "IMPRound",
    "Importance",
    "MagnitudeImportance",
    "Member",
    "PruningPlan",
    "RandomImportance",
    "Segment",
    "SparsitySchedule",
    "TaylorImportance",
    "WeightMasks",
    "apply_plan",
    "build_latency_table",
    "default_channel_dim",
    "fold_masks",
    "imp_sparsity",
    "keep_index",
    "iterative_magnitude_pruning",
    "latency_aware_plan",
    "magnitude_masks",
    "make_importance",
    "mask_plan",
    "pass_through",
    "recalibrate_bn",
    "register_cut_rule",
    "register_function_rule",
    "register_leaf_rule",
    "slice_parameters",
    "sparse_size_bytes",
    "weight_sparsity",
]
