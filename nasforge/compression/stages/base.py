"""The ``Stage`` interface, the state stages share, and the stage registry.

A stage is one step of the compression pipeline (prune channels, fine-tune, quantize ...):
a :class:`Stage` subclass with a typed config class and a typed result (a
:class:`~nasforge.compression.results.StageOutput` subclass), registered under a name with
:func:`register_stage`. ``compress.stages`` lists names; the pipeline builds each stage
from its config section and runs them in order on one :class:`PipelineState`.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import pydantic
import torch
from torch import nn

from nasforge.compression.config import CompressConfig, DistillConfig, StageSpec, TargetConfig
from nasforge.compression.distill import DistillationLoss
from nasforge.compression.pruning import WeightMasks
from nasforge.compression.results import StageOutput
from nasforge.data import Dataset
from nasforge.errors import ConfigError
from nasforge.train import TrainConfig, evaluate_accuracy

log = logging.getLogger("nasforge.compression")
Progress = Callable[[str], None]
ConfigT = TypeVar("ConfigT")


@dataclass
class PipelineState:
    """What the stages share, passed to every stage in pipeline order.

    Stages may replace ``model`` (the current float model) or change it in place, set
    ``masks`` (weight masks that later training must keep), set ``pruned`` and read
    everything else. ``outputs`` holds the results of the stages run so far (read only).
    ``train`` is the one training recipe of the run; stages that train derive from it with
    :meth:`recipe` rather than building their own.
    """

    model: nn.Module
    teacher: nn.Module
    dataset: Dataset
    input_shape: tuple[int, ...]
    out_dir: Path
    train: TrainConfig
    distill: DistillConfig
    target: TargetConfig
    seed: int
    say: Progress = log.info
    masks: WeightMasks | None = None
    pruned: bool = False
    outputs: list[StageOutput] = field(default_factory=list)

    def accuracy(self, model: nn.Module, split: str = "test") -> float:
        """Top-1 of ``model`` on the ``test`` or ``val`` split."""
        ds = self.dataset
        x, y = (ds.x_test, ds.y_test) if split == "test" else (ds.x_val, ds.y_val)
        return evaluate_accuracy(model, x, y)

    def recipe(self, **update: Any) -> TrainConfig:
        """The run's training recipe with the fields in ``update`` changed (checked by
        ``TrainConfig`` like any other)."""
        return TrainConfig(**{**vars(self.train), **update})

    def distillation_loss(self) -> DistillationLoss:
        """A fresh logit-distillation loss from the teacher, with the run's ``distill``
        settings (teacher logits memoised per sample for the life of the loss)."""
        d = self.distill
        return DistillationLoss(self.teacher, d.temperature, d.alpha, memoize=True)

    def train_batches(self, n: int, batch_size: int = 64) -> list[torch.Tensor]:
        """The first ``n`` training inputs in batches of ``batch_size``."""
        x = self.dataset.x_train
        return [x[i : i + batch_size] for i in range(0, min(n, len(x)), batch_size)]


class Stage(abc.ABC, Generic[ConfigT]):
    """One compression step. Subclass, set ``config_cls``, implement :meth:`run`, and
    register with :func:`register_stage`.

    The pipeline builds every stage first (``cls(config)``; the config comes from the
    section named ``section`` overridden by the stage entry's options, checked by
    ``config_cls``), then calls :meth:`check` on each with the stages after it, then
    :meth:`run` on each in order. A stage keeps no state between runs beyond its config.

    Attributes:
        name: the registered name (set by :func:`register_stage`).
        config_cls: a pydantic model or frozen dataclass: the stage's typed config.
        section: the :class:`~nasforge.compression.config.CompressConfig` section whose
            matching fields are this stage's defaults, or None.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[Any]]
    section: ClassVar[str | None] = None

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    def trains(self, recipe: TrainConfig) -> bool:
        """Whether :meth:`run` trains the float model under the run's training ``recipe``
        (pruning stages read it of the stages after them). Default: False."""
        return False

    def check(self, later: Sequence[Stage[Any]], recipe: TrainConfig) -> list[str]:
        """Called once before any stage runs, with the stages that follow this one and the
        run's training recipe. Returns warnings about the combination (default: none);
        raise :class:`~nasforge.errors.ConfigError` for one that cannot work."""
        return []

    @abc.abstractmethod
    def run(self, state: PipelineState) -> StageOutput:
        """Called once, in pipeline order. Do the step on ``state`` (replace or change
        ``state.model``, write artifacts under ``state.out_dir``) and return the typed
        result; do not modify ``state.outputs`` (the pipeline appends the result)."""


_STAGES: dict[str, type[Stage[Any]]] = {}


def register_stage(name: str, cls: type[Stage[Any]]) -> None:
    """Make ``cls`` available as ``name`` in ``compress.stages`` (a later call replaces).

    Raises:
        TypeError: ``cls`` is not a concrete :class:`Stage` subclass with a ``config_cls``
            that is a pydantic model or a dataclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, Stage)) or getattr(
        cls, "__abstractmethods__", None
    ):
        raise TypeError(f"register_stage({name!r}): {cls!r} is not a concrete Stage subclass")
    cfg = getattr(cls, "config_cls", None)
    if not (
        isinstance(cfg, type)
        and (issubclass(cfg, pydantic.BaseModel) or dataclasses.is_dataclass(cfg))
    ):
        raise TypeError(
            f"register_stage({name!r}): {cls.__name__}.config_cls must be a pydantic model or "
            f"a dataclass, got {cfg!r}"
        )
    cls.name = name
    _STAGES[name] = cls


def list_stages() -> list[str]:
    """Registered stage names, sorted."""
    return sorted(_STAGES)


def get_stage(name: str) -> type[Stage[Any]]:
    """The class registered as ``name``.

    Raises:
        ConfigError: unknown name (lists the registered ones).
    """
    try:
        return _STAGES[name]
    except KeyError:
        raise ConfigError(
            f"unknown stage {name!r}; registered: {', '.join(list_stages())}"
        ) from None


def _field_names(config_cls: type[Any]) -> set[str]:
    if issubclass(config_cls, pydantic.BaseModel):
        return set(config_cls.model_fields)
    return {f.name for f in dataclasses.fields(config_cls)}


def build_stage(spec: StageSpec, cfg: CompressConfig, where: str) -> Stage[Any]:
    """Build the stage ``spec`` names: its section's matching fields, overridden by the
    entry's options, validated by the stage's ``config_cls``.

    Raises:
        ConfigError: unknown stage or invalid option; the message starts with ``where``.
    """
    try:
        cls = get_stage(spec.name)
    except ConfigError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    names = _field_names(cls.config_cls)
    base: Mapping[str, Any] = {}
    if cls.section is not None:
        dumped = getattr(cfg, cls.section).model_dump()
        base = {k: v for k, v in dumped.items() if k in names}
    unknown = sorted(set(spec.options) - names)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: not an option of stage {spec.name!r}; "
            f"options: {', '.join(sorted(names)) or 'none'}"
        )
    try:
        config = pydantic.TypeAdapter(cls.config_cls).validate_python({**base, **spec.options})
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        raise ConfigError(f"{where}.{loc}: {err.get('msg')}") from None
    return cls(config)


def build_stages(cfg: CompressConfig) -> list[Stage[Any]]:
    """Every stage of ``cfg`` (see :meth:`CompressConfig.stage_specs`), in order."""
    return [
        build_stage(spec, cfg, f"compress.stages[{i}]") for i, spec in enumerate(cfg.stage_specs())
    ]
