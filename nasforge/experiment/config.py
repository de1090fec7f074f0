"""Experiment config: pydantic models loaded from YAML; unknown keys and bad values are
rejected with the field named (``search.trails: unknown field; did you mean 'trials'?``).

The sections here are the one source of defaults and checks: what they accept is what runs
(:mod:`nasforge.experiment.setup` builds the run's objects from them once). Names that
registries resolve (``latency.backend``, ``evaluator.kind``) are checked against the
registries, after the config's ``plugins:`` are imported.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nasforge.cliutil import check_options
from nasforge.compression.config import CompressConfig
from nasforge.data import GENERATED
from nasforge.errors import ConfigError, NasforgeError, PluginError
from nasforge.evaluators import evaluator_entry
from nasforge.experiment.automl_config import AutomlSection
from nasforge.experiment.ofa_config import OFASection
from nasforge.experiment.oneshot_config import OneshotConfig, default_evaluator
from nasforge.experiment.scaling_config import ScalingSection
from nasforge.hardware.backends import get_backend, list_backends
from nasforge.objectives import Objective
from nasforge.plugins import load_plugins
from nasforge.train import TrainSection
from nasforge.yamlfile import is_blank, read_yaml


def check_backend(name: str) -> str:
    """``name`` if it names a registered backend (aliases allowed; plugins register more),
    else ``ValueError`` listing the registered ones. The one backend check of a config."""
    try:
        get_backend(name)
    except NasforgeError:
        known = list_backends()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown backend {name!r}{hint} (registered: {', '.join(known)})"
        ) from None
    return name


#: longest run name: a folder name must fit every filesystem's 255-byte limit with room for
#: the suffixes tools add (``.bak``, ``-wal``)
MAX_NAME_CHARS = 128


def check_run_name(name: str) -> str:
    """``name`` if it is a plain folder name, else ``ValueError`` saying what is allowed:
    1-128 characters (at most 200 bytes UTF-8), no ``/`` or ``\\``, no control characters
    (NUL, newline, ...), not starting with ``.``."""
    allowed = (
        f"must be a plain folder name: 1-{MAX_NAME_CHARS} characters, no '/' or '\\', no "
        "control characters, not starting with '.'"
    )
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(allowed)
    bad = sorted({c for c in name if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ValueError(f"{allowed} (got control character(s) {', '.join(map(repr, bad))})")
    if len(name) > MAX_NAME_CHARS or len(name.encode()) > 200:
        raise ValueError(f"{allowed} (got {len(name)} characters)")
    return name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    name: str = "digits"
    path: str | None = None
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    image_size: int = Field(32, ge=4)
    channels: Literal[1, 3] = 3
    limit: int | None = Field(None, ge=10)
    samples: int | None = Field(
        None, ge=100, description="examples a generated dataset (mnist1d) makes in all"
    )

    @field_validator("samples")
    @classmethod
    def _generated_only(cls, v: int | None, info: ValidationInfo) -> int | None:
        name = info.data.get("name")
        if v is not None and name not in GENERATED:
            raise ValueError(
                f"only generated datasets ({', '.join(GENERATED)}) are made with a number of "
                f"samples; {name!r} has a fixed size (use data.limit)"
            )
        return v


class SpaceConfig(_Section):
    name: str = "mobile"
    options: dict[str, Any] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict, description="labels pinned to one value")

    @model_validator(mode="after")
    def _known_options(self) -> SpaceConfig:
        from nasforge.spaces import space_factory

        check_options(
            "space.options",
            f"space {self.name!r}",
            self.options,
            lambda: space_factory(self.name),
            ("input_shape", "num_classes"),
        )
        return self


class StrategyConfig(_Section):
    name: str = "evolution"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_options(self) -> StrategyConfig:
        from nasforge.strategies import strategy_factory

        check_options(
            "strategy.options",
            f"strategy {self.name!r}",
            self.options,
            lambda: strategy_factory(self.name),
            ("space", "seed", "constraint"),
        )
        return self


class SearchConfig(_Section):
    """How many trials, under which budgets, where they run.

    ``executor: ray`` runs trials as Ray tasks: on the cluster at ``ray_address``
    (``auto``: the cluster this machine belongs to, or ``host:port`` of its head), or on a
    local Ray started for the run when it is unset. Each task asks the cluster for
    ``ray_num_cpus`` CPUs (default ``latency.threads``) and ``ray_num_gpus`` GPUs; Ray runs a
    task again up to ``ray_max_retries`` times when its node or worker process dies (a
    trial's own error is never retried: it is a failed trial).
    """

    trials: int = Field(20, ge=1)
    time_budget_s: float | None = Field(None, gt=0)
    cost_budget_s: float | None = Field(
        None, gt=0, description="stop when summed trial cost reaches it"
    )
    executor: Literal["inline", "process", "ray"] = "process"
    workers: int = Field(1, ge=1)
    prefilter: bool = Field(True, description="skip archs a latency table says break a hard limit")
    ray_address: str | None = Field(
        None, description="auto, or host:port of the Ray head (unset: a local Ray for the run)"
    )
    ray_num_cpus: float | None = Field(
        None, gt=0, description="CPUs each Ray trial task asks for (unset: latency.threads)"
    )
    ray_num_gpus: float = Field(0, ge=0, description="GPUs each Ray trial task asks for")
    ray_max_retries: int = Field(
        3, ge=0, description="times Ray re-runs a trial whose node or worker died"
    )

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str | None) -> str | None:
        if v is None or v == "auto":
            return v
        if v.startswith("ray://"):
            raise ValueError(
                f"{v!r}: Ray Client (ray://) is not supported; give host:port of the head's "
                "GCS (ray start --head prints it) and run the search on a machine of the cluster"
            )
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected auto or host:port of the Ray head, got {v!r}")
        return v


class EvaluatorConfig(_Section):
    """A registered evaluator (:func:`nasforge.evaluators.register_evaluator`): ``train``
    trains each candidate on the data; ``table`` looks it up in a benchmark table.

    ``table`` is either ``{preset: nb201_cifar10, device: pixel3, path: ...}`` or the fields of
    :class:`~nasforge.evaluators.table.TableSpec`; ``options`` go to a plugin's factory.
    """

    kind: str = "train"
    table: dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _registered(cls, v: str) -> str:
        try:
            evaluator_entry(v)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("evaluator.kind: ")) from None
        return v

    @property
    def needs_data(self) -> bool:
        """Whether the evaluator trains on the dataset (so the run loads it)."""
        return evaluator_entry(self.kind).needs_data


class ObjectiveConfig(_Section):
    """The fields of :class:`~nasforge.objectives.Objective`; it checks them (one set of
    checks for the config and the Python API), here at load time so doctor sees them."""

    kind: str = "accuracy"
    metric: str = "val_acc"
    cost_metric: str = "latency_ms"
    target: float | None = Field(None, gt=0)
    w: float = -0.07

    @model_validator(mode="after")
    def _is_an_objective(self) -> ObjectiveConfig:
        self.build()
        return self

    def build(self) -> Objective:
        """The :class:`Objective` these fields describe (``ValueError`` naming the field)."""
        return Objective(self.kind, self.metric, self.cost_metric, self.target, self.w)


class LatencyConfig(_Section):
    """How a candidate's latency is known: ``measure`` it on ``backend``, ``predict`` it from
    a latency ``table``, or ``flops`` (no latency: trials report ``mflops`` instead).

    ``statistic`` defaults to ``median`` when measuring and to the table's when predicting.
    ``allow_untrusted_table`` lets ``predict`` use a table whose verdict is "do not trust"
    (:func:`~nasforge.hardware.trust.table_verdict`: poor held-out accuracy, a busy build, or
    another machine); by default such a search stops before its first trial.
    """

    mode: Literal["measure", "predict", "flops"] = "measure"
    backend: str = "torch"
    statistic: Literal["median", "p10", "min"] | None = None
    batch_size: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    warmup: int = Field(5, ge=0)
    repeats: int = Field(30, ge=3)
    wait_quiet_s: float = Field(
        0.0,
        ge=0,
        description="before each timing pass (mode measure), wait up to this many seconds "
        "for a quiet host, then measure anyway (0: measure at once)",
    )
    table: str | None = None
    allow_untrusted_table: bool = Field(
        False,
        description="predict from a table even when its verdict is 'do not trust' "
        "(`nasforge latency validate` gives the verdict)",
    )

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, v: str) -> str:
        return check_backend(v)

    @model_validator(mode="after")
    def _predict_needs_a_table(self) -> LatencyConfig:
        if self.mode == "predict" and not self.table:
            raise ValueError(
                "latency.table: latency.mode 'predict' needs a latency table file "
                "(build one with `nasforge latency build`)"
            )
        return self


class FinalConfig(_Section):
    epochs: int = Field(5, ge=0)
    top_k: int = Field(
        1, ge=1, description="how many of the best (or of the Pareto set) to retrain"
    )
    export_onnx: bool = True


class ExperimentConfig(_Section):
    name: str = "run"
    plugins: list[str] = Field(
        default_factory=list,
        description="importable modules that register spaces, strategies, evaluators, "
        "backends or compression stages; imported before anything else is resolved",
    )
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
    oneshot: OneshotConfig | None = Field(
        None, description="weight-sharing search (DARTS, single-path supernet); see oneshot_config"
    )
    ofa: OFASection | None = Field(None, description="Once-for-All (nasforge ofa); see ofa_config")
    automl: AutomlSection | None = Field(
        None,
        description="training recipe and compression searched with the architecture; "
        "see automl_config",
    )
    scaling: ScalingSection | None = Field(
        None, description="compound scaling (nasforge scale); see scaling_config"
    )

    @model_validator(mode="before")
    @classmethod
    def _spos_evaluates_on_the_supernet(cls, data: Any) -> Any:
        return default_evaluator(data)

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        return check_run_name(v)

    @field_validator("runs_dir")
    @classmethod
    def _runs_dir_is_a_path(cls, v: str) -> str:
        if not v or any(ord(c) < 32 for c in v):
            raise ValueError("must be a folder path without control characters (NUL, newline)")
        return v

    @model_validator(mode="after")
    def _flops_has_no_latency(self) -> ExperimentConfig:
        o = self.objective
        if (
            self.latency.mode == "flops"
            and self.evaluator.kind == "train"
            and o.kind != "accuracy"
            and o.cost_metric == "latency_ms"
        ):
            raise ValueError(
                "objective.cost_metric: latency.mode 'flops' measures no latency_ms; trials "
                "report 'mflops' (set cost_metric: mflops, or measure latency)"
            )
        return self

    @model_validator(mode="after")
    def _oneshot_fits(self) -> ExperimentConfig:
        if self.oneshot is not None:
            ev = self.evaluator
            self.oneshot.check_fit(
                self.space.name, ev.kind, ev.options, ev.needs_data, self.latency.table
            )
        return self

    @model_validator(mode="after")
    def _ofa_fits(self) -> ExperimentConfig:
        if self.ofa is not None:
            self.ofa.check_fit(self.space.name, self.oneshot is not None)
        return self

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
        # an optional section (``oneshot: X | None``): the model inside the union
        model = next((a for a in get_args(f.annotation) if hasattr(a, "model_fields")), None)
        model = model or f.annotation
    return list(getattr(model, "model_fields", {}).keys())


_NAMES_ITS_FIELD = re.compile(r"^[a-z_]+\.[a-z_.]+: ")
#: ``1e3``, ``5e-4``: numbers to a reader, text to YAML 1.1 (PyYAML wants ``1.0e+3``)
_YAML_TEXT_NUMBER = re.compile(r"^[+-]?\d+(\.\d*)?[eE][+-]?\d+$")


def _not_a_mapping(field: str, loc: tuple[Any, ...], got: Any) -> str:
    """What to write instead of a section that is not a mapping (``data: mnist5k``, a
    ``search:`` line whose fields were all commented out, ``search: 5``)."""
    fields = _fields_at((*loc, "_"))
    key = field.rsplit(".", 1)[-1]
    example = f"`{key}: {{{fields[0] if fields else 'key'}: ...}}`"
    if got is None:
        return (
            f"{field}: is empty; give its fields as a mapping ({example}) or remove the line "
            "to use the defaults"
        )
    if isinstance(got, str) and "name" in fields:
        return (
            f"{field}: expected a mapping of fields, got the text {got!r}; did you mean "
            f"`{key}: {{name: {got}}}`?"
        )
    return f"{field}: expected a mapping of fields ({example}), got {type(got).__name__} {got!r}"


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``source: field.path: message`` (with "did you mean" for typos)."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(_fields_at(loc))
            lines.append(f"{source}: {field}: unknown field{hint} (allowed: {allowed})")
        elif err["type"] in ("model_type", "dict_type"):
            lines.append(f"{source}: {_not_a_mapping(field, loc, err.get('input'))}")
        else:
            msg = str(err["msg"])
            if err["type"] == "value_error":  # our validators' messages, minus pydantic's prefix
                msg = msg.removeprefix("Value error, ")
                # our messages name the value; a cross-field check also names its field
                lines.append(
                    f"{source}: {msg}"
                    if _NAMES_ITS_FIELD.match(msg)
                    else f"{source}: {field}: {msg}"
                )
                continue
            got = err.get("input")
            got_s = f" (got {got!r})" if not isinstance(got, dict) and got is not None else ""
            if isinstance(got, str) and _YAML_TEXT_NUMBER.match(got):
                got_s += (
                    f"; YAML reads {got} as text: write the number in full, or with a dot "
                    f"and a signed exponent ({float(got):g} or {float(got):.1e})"
                )
            lines.append(f"{source}: {field}: {msg}{got_s}")
    return "\n".join(lines)


def _plugin_path_hint(plugins: list[str], source: str, exc: PluginError) -> str:
    """How to make a plugin importable that sits beside the config (the README's
    ``examples/own_space``) but is not on the Python path, or ``""``."""
    folder = Path(source).parent
    for module in plugins:
        top = module.split(".")[0]
        if f"No module named '{top}'" not in str(exc):
            continue
        if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file():
            return (
                f"; {top} is beside the config but not on the Python path: run with "
                f"PYTHONPATH={folder} (or install it)"
            )
    return ""


def parse_config(obj: Any, source: str = "config") -> ExperimentConfig:
    """Validate a config mapping; its ``plugins`` (and the ``nasforge.plugins`` entry points)
    are imported first, so that what they register is accepted.

    Raises:
        ConfigError: the first problems, one line each, naming the field (a plugin that
            cannot be imported is a :class:`~nasforge.errors.PluginError`).
    """
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections at the top level, got {type(obj).__name__}"
        )
    plugins = obj.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(m, str) for m in plugins):
        raise ConfigError(f"{source}: plugins: expected a list of importable module names")
    try:
        load_plugins(plugins)
    except PluginError as exc:
        raise PluginError(f"{source}: {exc}{_plugin_path_hint(plugins, source, exc)}") from None
    try:
        return ExperimentConfig.model_validate(obj)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


#: sections that describe a run; a file with a compress: section and none of these is a
#: ``nasforge compress --config`` file, not a search
_RUN_SECTIONS = frozenset(ExperimentConfig.model_fields) - {
    "compress",
    "name",
    "plugins",
    "runs_dir",
    "seed",
}


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate a YAML config (through :func:`nasforge.yamlfile.read_yaml`, the one
    loader); every problem is a one-line :class:`ConfigError` naming the file or the field.

    An empty file (or one holding only comments) is refused: it would run all the defaults.
    """
    p = Path(path)
    obj = read_yaml(p, "config file")
    if is_blank(obj):
        raise ConfigError(
            f"{p}: the config file is empty; a run needs at least its data:, space: and "
            "search: sections (start from examples/quickstart.yaml)"
        )
    if isinstance(obj, dict) and "compress" in obj and not set(obj) & _RUN_SECTIONS:
        raise ConfigError(
            f"{p}: a compression config (only a compress: section): to compress a model, run "
            f"`nasforge compress MODEL --config {p}`; a search with it would run every other "
            "section's defaults (add data:, space: and search: for a search that compresses)"
        )
    if overrides:
        if not isinstance(obj, dict):
            raise ConfigError(
                f"{p}: expected a mapping of sections at the top level, got {type(obj).__name__}"
            )
        obj = {**obj, **overrides}
    return parse_config(obj, str(p))
