"""`CompressConfig`: the ``compress:`` section of a search config and the CLI's settings.

The pipeline is a list of registered stages (``stages:``); each stage reads its own typed
section. Without ``stages:`` the list is derived from ``prune.method`` and
``quantize.mode`` (prune -> fine-tune/distil -> quantize), so older configs run unchanged.
The sections here are the one source of the built-in stages' defaults and checks.

``input_shape`` (``C,H,W``; ``--input-shape``) adapts the data to the shape the model takes
(:func:`nasforge.data.adapt_input`); ``plugins`` (``--plugin``) are imported before the
model is loaded, so they can register stages and pruning rules. ``deploy.accuracy_budget``
is the test top-1 drop (vs the original) a shipped artifact may have.

Ratios and budgets are fractions: ``prune.ratio: 0.5`` removes half the FLOPs (or
channels/weights), ``quantize.drop_budget: 0.003`` allows 0.3 top-1 points of loss.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nasforge.errors import ConfigError
from nasforge.train import TrainConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _RatioConfig(_Section):
    ratio: float = Field(0.5, ge=0.0, lt=1.0)


class UnstructuredPruneConfig(_RatioConfig):
    """Stage ``prune_unstructured``: global (or per-layer) magnitude masks on conv/linear
    weights; a smaller compressed file, no speed-up on dense kernels."""

    scope: Literal["global", "layer"] = "global"
    ignore: tuple[str, ...] = ()


class ChannelPruneConfig(UnstructuredPruneConfig):
    """Stage ``prune_channels``: structured pruning that physically removes channels."""

    target: Literal["flops", "channels"] = "flops"
    # group_l2 (Torch-Pruning's criterion: mean |w|^2 over every coupled member) is the
    # default: on EfficientNet-B0 (SE, SiLU) at 50% FLOPs it kept 0.5-1.5 points more than
    # per-member-normalised l1 in each of three runs (benchmarks/prune_peer.py), because l1's
    # normalisation kept wide residual streams whole and cut the head conv instead.
    importance: Literal["l1", "l2", "group_l1", "group_l2", "bn_scale", "taylor", "random"] = (
        "group_l2"
    )
    round_to: int = Field(8, ge=1)
    min_keep: int = Field(8, ge=1)
    latency_target_ms: float | None = Field(
        None, gt=0, description="hardware-aware ratios (channel)"
    )


class IMPConfig(_RatioConfig):
    """Stage ``imp``: iterative magnitude pruning with rewinding (lottery tickets)."""

    imp_rounds: int = Field(3, ge=1)
    imp_rewind_step: int = Field(50, ge=0)


class PruneConfig(ChannelPruneConfig, IMPConfig):
    """The ``prune:`` section: defaults of the three pruning stages, and (without
    ``stages:``) which one runs. ``method``: ``channel`` (structured, physically removes
    channels), ``unstructured`` (global magnitude masks; smaller compressed file, no
    speed-up), ``imp`` (iterative magnitude pruning with rewinding) or ``none``."""

    method: Literal["none", "channel", "unstructured", "imp"] = "none"


class FinetuneConfig(_Section):
    """The training recipe of every training stage (``finetune``, ``distill``, ``imp``,
    QAT): built once into a :class:`~nasforge.train.TrainConfig` by :meth:`train_config`."""

    epochs: int = Field(3, ge=0)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(64, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"

    def train_config(self, seed: int) -> TrainConfig:
        """The recipe as a ``TrainConfig`` (no label smoothing: fine-tuning a trained net)."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            seed=seed,
            label_smoothing=0.0,
        )


class DistillConfig(_Section):
    """Distil from the teacher (the uncompressed model unless a teacher is given): the
    ``distill`` stage always, QAT when ``enabled``."""

    enabled: bool = True
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)


class Int8Config(_Section):
    """Stages ``quantize_int8`` and ``qat``. ``activations: auto`` measures uint8 vs int8
    activations (and an FP32 stem) on the target and keeps the fastest; ``qat: auto`` runs
    QAT when PTQ loses more than ``drop_budget`` even with the mixed-precision plan."""

    calibration: Literal["minmax", "percentile", "mse", "entropy"] = "minmax"
    percentile: float = Field(99.99, gt=50, le=100)
    calibration_size: int = Field(512, ge=8)
    activations: Literal["auto", "uint8", "int8"] = "auto"
    drop_budget: float = Field(0.003, ge=0.0, lt=1.0)
    mixed_precision: bool = True
    qat: Literal["auto", "always", "never"] = "auto"
    qat_epochs: int = Field(2, ge=1)
    qat_lr: float = Field(0.002, gt=0)


class Int4Config(_Section):
    """Stage ``int4``: grouped 4-bit weight-only quantization."""

    int4_group_size: int = Field(32, ge=2)


class QuantizeConfig(Int8Config, Int4Config):
    """The ``quantize:`` section: defaults of the quantization stages and (without
    ``stages:``) which one runs (``mode``)."""

    mode: Literal["none", "int8", "int4"] = "int8"


class TargetConfig(_Section):
    backend: Literal["onnxruntime"] = "onnxruntime"
    threads: int = Field(1, ge=1)
    batch_sizes: tuple[int, ...] = (1, 32)
    rounds: int = Field(7, ge=1)


class DeployConfig(_Section):
    """Which artifact is shipped (copied to ``model.deploy.onnx``): the last stage's that is
    not measurably slower than an earlier stage's and loses at most ``accuracy_budget`` test
    top-1 (a fraction: 0.01 = one point) against the original."""

    accuracy_budget: float = Field(0.01, ge=0.0, lt=1.0)


class StageSpec(_Section):
    """One entry of ``compress.stages``: a registered stage ``name`` and its ``options``.

    YAML accepts the bare name (``- distill``) or a mapping (``- {name: prune_channels,
    ratio: 0.3}``; keys other than ``name`` are the options). Options override the stage's
    section defaults and are checked by the stage's own config class when the pipeline is
    built (an unknown name or option is a :class:`~nasforge.errors.ConfigError`).
    """

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and "options" not in data:
            rest = {k: v for k, v in data.items() if k != "name"}
            return {"name": data.get("name"), "options": rest} if rest else data
        return data


_PRUNE_STAGES = {"channel": "prune_channels", "unstructured": "prune_unstructured", "imp": "imp"}
_QUANT_STAGES = {"int8": "quantize_int8", "int4": "int4"}


class CompressConfig(_Section):
    """The stages to run and the sections they read (see the module docstring)."""

    stages: tuple[StageSpec, ...] | None = None
    prune: PruneConfig = PruneConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    distill: DistillConfig = DistillConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    target: TargetConfig = TargetConfig()
    deploy: DeployConfig = DeployConfig()
    input_shape: tuple[int, ...] | None = None
    plugins: tuple[str, ...] = ()
    seed: int = 0

    @field_validator("input_shape", mode="before")
    @classmethod
    def _shape(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = tuple(int(p) for p in re.split(r"[,x]", v.strip()))
            except ValueError:
                raise ValueError(f"expected C,H,W (e.g. 3,32,32), got {v!r}") from None
        if v is not None and (
            not 1 <= len(v) <= 3 or any(not isinstance(d, int) or d < 1 for d in v)
        ):
            raise ValueError(f"expected C,H,W of positive integers (e.g. 3,32,32), got {v!r}")
        return v

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> CompressConfig:
        if self.stages is not None:
            for section, field in (("prune", "method"), ("quantize", "mode")):
                if field in getattr(self, section).model_fields_set:
                    raise ConfigError(
                        f"compress.{section}.{field}: not used when compress.stages is given "
                        "(the stages list is the whole pipeline); remove one of them"
                    )
        return self

    def stage_specs(self) -> tuple[StageSpec, ...]:
        """``stages`` if given, else prune -> fine-tune (``distill`` when enabled) ->
        quantize, from ``prune.method``, ``distill.enabled`` and ``quantize.mode``."""
        if self.stages is not None:
            return self.stages
        names: list[str] = []
        if self.prune.method != "none":
            names.append(_PRUNE_STAGES[self.prune.method])
            names.append("distill" if self.distill.enabled else "finetune")
        if self.quantize.mode != "none":
            names.append(_QUANT_STAGES[self.quantize.mode])
        return tuple(StageSpec(name=n) for n in names)
