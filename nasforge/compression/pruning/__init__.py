"""Pruning: the channel dependency graph, importance criteria, structured and unstructured
pruners, hardware-aware ratios and iterative magnitude pruning."""

from nasforge.compression.pruning.graph import (
    ChannelGroup,
    DependencyGraph,
    Member,
    register_leaf_rule,
)
from nasforge.compression.pruning.imp import IMPResult, IMPRound, imp_sparsity, iterative_magnitude_pruning
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
    "ChannelGroup", "DependencyGraph", "Member", "register_leaf_rule",
    "IMPResult", "IMPRound", "imp_sparsity", "iterative_magnitude_pruning",
    "IMPORTANCES", "BNScaleImportance", "Importance", "MagnitudeImportance", "RandomImportance",
    "TaylorImportance", "make_importance",
    "ChannelLatencyTable", "build_latency_table", "latency_aware_plan",
    "GroupCut", "PruningPlan", "ChannelPruner", "ChannelPruningConfig", "apply_plan", "mask_plan",
    "GradualMagnitudePruner", "SparsitySchedule", "WeightMasks", "fold_masks", "magnitude_masks",
    "sparse_size_bytes", "weight_sparsity",
]
