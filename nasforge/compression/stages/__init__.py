"""Compression stages behind one interface: :class:`Stage`, its shared
:class:`PipelineState`, and the registry (``register_stage``, ``list_stages``).

Built in: ``prune_channels``, ``prune_unstructured``, ``imp``, ``finetune``, ``distill``,
``quantize_int8``, ``qat``, ``int4``. A new stage is a ``Stage`` subclass with a typed
config class and a :class:`~nasforge.compression.results.StageOutput` subclass as its
result, registered with ``register_stage(name, cls)``; configs then list it by name.
"""

from nasforge.compression.stages.base import (
    PipelineState,
    Progress,
    Stage,
    build_stages,
    get_stage,
    list_stages,
    register_stage,
)
from nasforge.compression.stages.prune import (
    ChannelPruneResult,
    ChannelPruneStage,
    IMPStage,
    IMPStageResult,
    SparsityResult,
    UnstructuredPruneStage,
)
from nasforge.compression.stages.quantize import (
    Int4Result,
    Int4Stage,
    Int8Result,
    Int8Stage,
    QATStage,
)
from nasforge.compression.stages.train import (
    DistillStage,
    FinetuneResult,
    FinetuneStage,
    TrainStageConfig,
)

__all__ = [
    "ChannelPruneResult",
    "ChannelPruneStage",
    "DistillStage",
    "FinetuneResult",
    "FinetuneStage",
    "IMPStage",
    "IMPStageResult",
    "Int4Result",
    "Int4Stage",
    "Int8Result",
    "Int8Stage",
    "PipelineState",
    "Progress",
    "QATStage",
    "SparsityResult",
    "Stage",
    "TrainStageConfig",
    "UnstructuredPruneStage",
    "build_stages",
    "get_stage",
    "list_stages",
    "register_stage",
]
