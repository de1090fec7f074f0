"""Build the pieces of a run from its config: dataset, space, strategy, objective, evaluator."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from nasforge.data import Dataset, load_dataset
from nasforge.errors import ConfigError, SpaceError
from nasforge.evaluators.train import TrainEvaluator
from nasforge.experiment.config import ExperimentConfig
from nasforge.objectives import Objective
from nasforge.space import Categorical, SearchSpace
from nasforge.spaces import create_space
from nasforge.strategies import Strategy, create_strategy
from nasforge.train import TrainConfig


def make_dataset(cfg: ExperimentConfig) -> Dataset:
    d = cfg.data
    return load_dataset(d.name, d.path, d.val_fraction, cfg.seed, d.image_size, d.channels, d.limit)


def pin_labels(space: SearchSpace, fixed: dict[str, Any]) -> SearchSpace:
    """A copy of ``space`` whose ``fixed`` labels have exactly one allowed value."""
    if not fixed:
        return space
    dims = []
    labels = set(space.labels())
    for label, value in fixed.items():
        if label not in labels:
            raise SpaceError(f"space.fixed: {space._unknown_label_message(label)}")
        dim = space.dimension(label)
        if not dim.contains(value):
            raise SpaceError(
                f"space.fixed: {label} = {value!r} is not allowed; expected {dim.describe()}"
            )
    for d in space.dimensions():
        if d.label in fixed:
            d = Categorical(d.label, choices=(fixed[d.label],), when=d.when)
        dims.append(d)
    pinned = copy.copy(space)
    SearchSpace.__init__(pinned, dims, name=space.name)
    return pinned


def make_space(cfg: ExperimentConfig, dataset: Dataset | None) -> SearchSpace:
    """The configured space; without a dataset (table evaluator) the input shape and class count
    come from ``space.options`` (default 3x32x32, 10 classes, as in NAS-Bench-201's CIFAR-10)."""
    options = dict(cfg.space.options)
    if dataset is not None:
        shape, classes = dataset.input_shape, dataset.num_classes
    else:
        shape = tuple(options.pop("input_shape", (3, 32, 32)))
        classes = int(options.pop("num_classes", 10))
    space = create_space(cfg.space.name, shape, classes, **options)
    return pin_labels(space, cfg.space.fixed)


def uses_data(cfg: ExperimentConfig) -> bool:
    return cfg.evaluator.kind == "train"


def make_table_evaluator(cfg: ExperimentConfig):
    from nasforge.evaluators.table import TableEvaluator, TableSpec, nb201_cifar10_spec

    table = dict(cfg.evaluator.table or {})
    if not table:
        raise ConfigError(
            "evaluator.table: the table evaluator needs a table "
            "(e.g. {preset: nb201_cifar10, device: pixel3})"
        )
    preset = table.pop("preset", None)
    if preset is not None:
        if preset != "nb201_cifar10":
            raise ConfigError(f"evaluator.table.preset: expected 'nb201_cifar10', got {preset!r}")
        unknown = set(table) - {"path", "device", "epochs"}
        if unknown:
            raise ConfigError(
                f"evaluator.table: unknown field(s) {sorted(unknown)} for the preset; "
                "expected path, device, epochs"
            )
        spec = nb201_cifar10_spec(**table)
    else:
        spec = TableSpec.from_dict(table)
    return TableEvaluator(spec)


def make_objective(cfg: ExperimentConfig) -> Objective:
    o = cfg.objective
    try:
        return Objective(o.kind, o.metric, o.cost_metric, o.target, o.w)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def make_strategy(cfg: ExperimentConfig, space: SearchSpace) -> Strategy:
    options = dict(cfg.strategy.options)
    if cfg.objective.kind == "pareto" and cfg.strategy.name == "evolution":
        options.setdefault("selection", "pareto")
    return create_strategy(cfg.strategy.name, space, seed=cfg.seed, **options)


def train_config(cfg: ExperimentConfig, epochs: int | None = None) -> TrainConfig:
    t = cfg.train
    return TrainConfig(
        epochs=t.epochs if epochs is None else epochs,
        batch_size=t.batch_size,
        optimizer=t.optimizer,
        lr=t.lr,
        weight_decay=t.weight_decay,
        momentum=t.momentum,
        label_smoothing=t.label_smoothing,
        cosine=t.cosine,
        seed=cfg.seed,
        augment=t.augment,
    )


def make_latency_model(cfg: ExperimentConfig, space: SearchSpace):
    """Measures or predicts latency as configured; ``None`` for ``latency.mode: flops``."""
    lat = cfg.latency
    if lat.mode == "flops":
        return None
    if lat.mode == "predict":
        if not lat.table:
            raise ConfigError(
                "latency.table: latency.mode 'predict' needs a latency table file "
                "(build one with `nasforge latency build`)"
            )
        if not Path(lat.table).is_file():
            raise ConfigError(f"latency.table: {lat.table} does not exist")
    from nasforge.hardware.model import LatencyModel

    return LatencyModel.from_config(lat, space)


def latency_filter(cfg: ExperimentConfig, space: SearchSpace, objective: Objective):
    """For a hard latency limit whose latency is known *before* evaluation (a latency table's
    prediction, or a benchmark table's latency column), a predicate the strategy checks
    before asking, so no query is spent on an arch that breaks the limit. Otherwise ``None``."""
    if (
        objective.kind != "constraint"
        or objective.cost_metric != "latency_ms"
        or not cfg.search.prefilter
    ):
        return None
    limit = objective.target
    if not uses_data(cfg):
        table = make_table_evaluator(cfg)
        if table.spec.latency_column is None:
            return None
        return lambda arch: table.lookup(arch)["latency_ms"] <= limit
    if cfg.latency.mode != "predict":
        return None
    model = make_latency_model(cfg, space)
    return lambda arch: model.predict(arch) <= limit


def make_evaluator(
    cfg: ExperimentConfig,
    run_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    space: SearchSpace | None = None,
):
    """The configured evaluator: a :class:`TrainEvaluator` or a table lookup."""
    if not uses_data(cfg):
        return make_table_evaluator(cfg)
    dataset = dataset if dataset is not None else make_dataset(cfg)
    space = space if space is not None else make_space(cfg, dataset)
    lock = Path(run_dir) / ".latency.lock" if run_dir is not None else None
    return TrainEvaluator(space, dataset, train_config(cfg), make_latency_model(cfg, space), lock)
