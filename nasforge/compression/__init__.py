"""Compression: make a searched model deployable, and prove it with measured numbers.

Pruning (dependency graph, importance, pruners), quantization (INT8 PTQ/QAT on ONNX
Runtime, INT4 weight-only, sensitivity), distillation, and the pipeline that chains them as
registered stages (``register_stage``; see :mod:`nasforge.compression.stages`).
Heavy parts (onnxruntime, matplotlib) are imported only when used.
"""

from nasforge.compression.config import CompressConfig
from nasforge.compression.distill import DistillationLoss, FeatureDistiller
from nasforge.compression.errors import (
    CompressionError,
    PlanMismatchError,
    QuantizationError,
    UnsupportedModelError,
)
from nasforge.compression.pipeline import run_pipeline
from nasforge.compression.pruning import (
    ChannelPruner,
    ChannelPruningConfig,
    DependencyGraph,
    PruningPlan,
    apply_plan,
    mask_plan,
)
from nasforge.compression.quantization import QuantSpec, export_qdq, quantize_static_int8
from nasforge.compression.results import CompressionReport, StageOutput, StageResult
from nasforge.compression.stages import PipelineState, Stage, list_stages, register_stage

__all__ = [
    "ChannelPruner",
    "ChannelPruningConfig",
    "CompressConfig",
    "CompressionError",
    "CompressionReport",
    "DependencyGraph",
    "DistillationLoss",
    "FeatureDistiller",
    "PipelineState",
    "PlanMismatchError",
    "PruningPlan",
    "QuantSpec",
    "QuantizationError",
    "Stage",
    "StageOutput",
    "StageResult",
    "UnsupportedModelError",
    "apply_plan",
    "export_qdq",
    "list_stages",
    "mask_plan",
    "quantize_static_int8",
    "register_stage",
    "run_pipeline",
]
