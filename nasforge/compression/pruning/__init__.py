"""Pruning: the channel dependency graph, importance criteria, structured and unstructured
pruners, hardware-aware ratios and iterative magnitude pruning."""

from nasforge.compression.pruning.graph import (
    ChannelGroup,
    DependencyGraph,
    Member,
    register_leaf_rule,
)
from nasforge.compression.pruning.imp import (
    IMPResult,
    IMPRound,
    imp_sparsity,
    iterative_magnitude_pruning,
)
from nasforge.compression.pruning.importance import (
    IMPORTANCES,
    BNScaleImportance,
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
    "DependencyGraph",
    "GradualMagnitudePruner",
    "GroupCut",
    "IMPResult",
    "IMPRound",
    "Importance",
    "MagnitudeImportance",
    "Member",
    "PruningPlan",
    "RandomImportance",
    "SparsitySchedule",
    "TaylorImportance",
    "WeightMasks",
    "apply_plan",
    "build_latency_table",
    "fold_masks",
    "imp_sparsity",
    "iterative_magnitude_pruning",
    "latency_aware_plan",
    "magnitude_masks",
    "make_importance",
    "mask_plan",
    "recalibrate_bn",
    "register_leaf_rule",
    "sparse_size_bytes",
    "weight_sparsity",
]
