"""`CompressConfig`: the ``compress:`` section of a search config and the CLI's settings.

Ratios and budgets are fractions: ``prune.ratio: 0.5`` removes half the FLOPs (or
channels/weights), ``quantize.drop_budget: 0.003`` allows 0.3 top-1 points of loss.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PruneConfig(_Section):
    """``method``: ``channel`` (structured, physically removes channels), ``unstructured``
    (global magnitude masks; smaller compressed file, no speed-up), ``imp`` (iterative
    magnitude pruning with rewinding) or ``none``."""

    method: Literal["none", "channel", "unstructured", "imp"] = "none"
    ratio: float = Field(0.5, ge=0.0, lt=1.0)
    target: Literal["flops", "channels"] = "flops"
    scope: Literal["global", "layer"] = "global"
    importance: Literal["l1", "l2", "bn_scale", "taylor", "random"] = "l1"
    round_to: int = Field(8, ge=1)
    min_keep: int = Field(8, ge=1)
    ignore: tuple[str, ...] = ()
    latency_target_ms: float | None = Field(
        None, gt=0, description="hardware-aware ratios (channel)"
    )
    imp_rounds: int = Field(3, ge=1)
    imp_rewind_step: int = Field(50, ge=0)


class FinetuneConfig(_Section):
    epochs: int = Field(3, ge=0)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(64, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"


class DistillConfig(_Section):
    """Distil from the teacher (the uncompressed model unless a teacher is given)."""

    enabled: bool = True
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)


class QuantizeConfig(_Section):
    """``activations: auto`` measures uint8 vs int8 activations (and an FP32 stem) on the
    target and keeps the fastest; ``qat: auto`` runs QAT when PTQ loses more than
    ``drop_budget`` even with the mixed-precision plan."""

    mode: Literal["none", "int8", "int4"] = "int8"
    calibration: Literal["minmax", "percentile", "mse", "entropy"] = "minmax"
    percentile: float = Field(99.99, gt=50, le=100)
    calibration_size: int = Field(512, ge=8)
    activations: Literal["auto", "uint8", "int8"] = "auto"
    drop_budget: float = Field(0.003, ge=0.0, lt=1.0)
    mixed_precision: bool = True
    qat: Literal["auto", "always", "never"] = "auto"
    qat_epochs: int = Field(2, ge=1)
    qat_lr: float = Field(0.002, gt=0)
    int4_group_size: int = Field(32, ge=2)


class TargetConfig(_Section):
    backend: Literal["onnxruntime"] = "onnxruntime"
    threads: int = Field(1, ge=1)
    batch_sizes: tuple[int, ...] = (1, 32)
    rounds: int = Field(7, ge=1)


class CompressConfig(_Section):
    """Prune -> fine-tune (with distillation) -> quantize -> export -> verify -> measure."""

    prune: PruneConfig = PruneConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    distill: DistillConfig = DistillConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    target: TargetConfig = TargetConfig()
    seed: int = 0
