"""Experiment config: pydantic models loaded from YAML; unknown keys and bad values are
rejected with the field named (``search.trails: unknown field; did you mean 'trials'?``)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nasforge.compression.config import CompressConfig
from nasforge.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    name: str = "digits"
    path: str | None = None
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    image_size: int = Field(32, ge=4)
    channels: Literal[1, 3] = 3
    limit: int | None = Field(None, ge=10)


class SpaceConfig(_Section):
    name: str = "mobile"
    options: dict[str, Any] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict, description="labels pinned to one value")


class StrategyConfig(_Section):
    name: str = "evolution"
    options: dict[str, Any] = Field(default_factory=dict)


class SearchConfig(_Section):
    trials: int = Field(20, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    cost_budget_s: float | None = Field(
        None, gt=0, description="stop when summed trial cost reaches it"
    )
    executor: Literal["inline", "process", "ray"] = "process"
    workers: int = Field(1, ge=1)
    prefilter: bool = Field(True, description="skip archs a latency table says break a hard limit")
    ray_address: str | None = None


class EvaluatorConfig(_Section):
    """``train``: train each candidate on the data; ``table``: look it up in a benchmark table.

    ``table`` is either ``{preset: nb201_cifar10, device: pixel3, path: ...}`` or the fields of
    :class:`~nasforge.evaluators.table.TableSpec`.
    """

    kind: Literal["train", "table"] = "train"
    table: dict[str, Any] | None = None


class TrainSection(_Section):
    epochs: int = Field(2, ge=0)
    batch_size: int = Field(64, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(4e-5, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    cosine: bool = True
    augment: Literal["none", "shift"] = "none"


class ObjectiveConfig(_Section):
    kind: Literal["accuracy", "weighted_product", "constraint", "pareto"] = "accuracy"
    metric: str = "val_acc"
    cost_metric: str = "latency_ms"
    target: float | None = Field(None, gt=0)
    w: float = -0.07


class LatencyConfig(_Section):
    mode: Literal["measure", "predict", "flops"] = "measure"
    backend: Literal["torch", "torch:parallel", "onnxruntime", "onnxruntime:parallel", "cuda"] = (
        "torch"
    )
    statistic: Literal["median", "p10", "min"] | None = None
    batch_size: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    warmup: int = Field(5, ge=0)
    repeats: int = Field(30, ge=3)
    table: str | None = None


class FinalConfig(_Section):
    epochs: int = Field(5, ge=0)
    top_k: int = Field(
        1, ge=1, description="how many of the best (or of the Pareto set) to retrain"
    )
    export_onnx: bool = True


class ExperimentConfig(_Section):
    name: str = "run"
    seed: int = 0
    runs_dir: str = "runs"
    data: DataConfig = DataConfig()
    space: SpaceConfig = SpaceConfig()
    strategy: StrategyConfig = StrategyConfig()
    search: SearchConfig = SearchConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    train: TrainSection = TrainSection()
    objective: ObjectiveConfig = ObjectiveConfig()
    latency: LatencyConfig = LatencyConfig()
    final: FinalConfig = FinalConfig()
    compress: CompressConfig | None = None

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain folder name (no '/', not starting with '.')")
        return v

    def run_dir(self, runs_dir: str | Path | None = None) -> Path:
        return Path(runs_dir or self.runs_dir) / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        f = getattr(model, "model_fields", {}).get(part)
        if f is None:
            return []
        model = f.annotation
    return list(getattr(model, "model_fields", {}).keys())


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``source: field.path: message``."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(_fields_at(loc))
            lines.append(f"{source}: {field}: unknown field{hint} (allowed: {allowed})")
        else:
            got = err.get("input")
            got_s = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
            lines.append(f"{source}: {field}: {err['msg']}{got_s}")
    return "\n".join(lines)


def parse_config(obj: Any, source: str = "config") -> ExperimentConfig:
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections at the top level, got {type(obj).__name__}"
        )
    try:
        return ExperimentConfig.model_validate(obj)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate a YAML config; every problem is a :class:`ConfigError` naming the field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        obj = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}:{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file") from None
    if overrides:
        obj = {**(obj or {}), **overrides}
    return parse_config(obj, str(p))
