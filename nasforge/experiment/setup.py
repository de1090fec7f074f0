"""Build the objects of a run from its config, once, in one place.

:func:`build_run` turns the validated sections into a frozen :class:`RunObjects` bundle
(dataset, space, objective, training recipe, latency model, the strategy's constraint) that
the experiment passes on; :func:`make_strategy` and :func:`make_evaluator` build the strategy
(with the constraint given at construction) and the evaluator from it. The config already
checked every value (:mod:`nasforge.experiment.config`); nothing here re-checks or re-defaults
a field, it only builds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Any

from nasforge.data import Dataset, load_dataset
from nasforge.errors import ConfigError, NasforgeError, SpaceError
from nasforge.evaluators import Evaluator, EvaluatorContext, create_evaluator
from nasforge.evaluators.rung_checkpoint import RungPolicy
from nasforge.evaluators.table import TableEvaluator
from nasforge.experiment.config import ExperimentConfig
from nasforge.hardware.model import LatencyModel
from nasforge.objectives import Objective
from nasforge.space import Categorical, SearchSpace
from nasforge.space.joint import COMPRESS_PREFIX, RECIPE_PREFIX, JointSpace
from nasforge.spaces import create_space
from nasforge.strategies import Constraint, Strategy, create_strategy, strategy_factory
from nasforge.train import TrainConfig

JOINT_PREFIXES = (RECIPE_PREFIX, COMPRESS_PREFIX)


def make_dataset(cfg: ExperimentConfig) -> Dataset:
    d = cfg.data
    return load_dataset(
        d.name, d.path, d.val_fraction, cfg.seed, d.image_size, d.channels, d.limit, d.samples
    )


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
    come from ``space.options`` (default 3x32x32, 10 classes, as in NAS-Bench-201's CIFAR-10).

    With an ``automl:`` section that adds dimensions, the architecture space is wrapped in a
    :class:`~nasforge.space.joint.JointSpace` with the ``recipe/...`` and ``compress/...``
    dimensions; ``space.fixed`` pins labels of either part.
    """
    options = dict(cfg.space.options)
    if dataset is not None:
        shape, classes = dataset.input_shape, dataset.num_classes
    else:
        shape = tuple(options.pop("input_shape", (3, 32, 32)))
        classes = int(options.pop("num_classes", 10))
    space = create_space(cfg.space.name, shape, classes, **options)
    joint_fixed = {k: v for k, v in cfg.space.fixed.items() if k.startswith(JOINT_PREFIXES)}
    arch_fixed = {k: v for k, v in cfg.space.fixed.items() if k not in joint_fixed}
    space = pin_labels(space, arch_fixed)
    automl = cfg.automl
    if automl is None or not automl.has_dims:
        if joint_fixed:
            raise ConfigError(
                f"space.fixed: {next(iter(joint_fixed))}: no automl: section searches this "
                "label (set the value in train: instead)"
            )
        return space
    check_automl(cfg)
    return pin_labels(JointSpace(space, automl.dimensions()), joint_fixed)


def automl_problems(cfg: ExperimentConfig) -> list[str]:
    """Every problem of the ``automl:`` section against the rest of the config, one line
    each naming the field: a searched value that contradicts ``train:``, compress dimensions
    with the ``train`` evaluator (which cannot compress), ``automl:`` with a weight-sharing
    (``oneshot:``/``ofa:``) search, ``recipe/epochs`` with a multi-fidelity strategy (which
    owns the epochs)."""
    automl = cfg.automl
    if automl is None or not automl.has_dims:
        return []
    out = []
    try:
        automl.check_train(cfg.train)
    except ValueError as exc:
        out.append(str(exc))
    if automl.compress and cfg.evaluator.kind == "train":
        out.append(COMPRESS_NEEDS_EVALUATOR)
    if cfg.oneshot is not None or cfg.ofa is not None:
        out.append(AUTOML_NEEDS_BLACK_BOX)
    if "epochs" in automl.recipe and is_multi_fidelity(cfg.strategy.name):
        out.append(EPOCHS_OWNED_BY_STRATEGY.format(strategy=cfg.strategy.name))
    return out


def check_automl(cfg: ExperimentConfig) -> None:
    """Raise :class:`ConfigError` with the first of :func:`automl_problems` (run before the
    first trial, so ``nasforge search`` and ``doctor`` refuse the same configs)."""
    problems = automl_problems(cfg)
    if problems:
        raise ConfigError(problems[0])


#: the error for ``automl.compress`` with the plain training evaluator
COMPRESS_NEEDS_EVALUATOR = (
    "automl.compress: the 'train' evaluator does not compress models; use evaluator.kind: "
    "compressed (prunes, fine-tunes, quantizes and measures each candidate)"
)
#: the error for ``automl:`` with a weight-sharing search
AUTOML_NEEDS_BLACK_BOX = (
    "automl: a weight-sharing search (oneshot:/ofa:) trains one supernet with one recipe; "
    "search the recipe with a black-box strategy instead"
)
#: the error for a searched ``recipe/epochs`` with a multi-fidelity strategy
EPOCHS_OWNED_BY_STRATEGY = (
    "automl.recipe.epochs: the multi-fidelity strategy {strategy!r} sets every trial's "
    "epochs (its budget ladder up to strategy.options.max_epochs, default train.epochs); "
    "remove epochs from the searched recipe"
)


def is_multi_fidelity(strategy_name: str) -> bool:
    """Whether the strategy registered as ``strategy_name`` is a multi-fidelity one (asks
    trials with budgets); ``False`` for an unknown name (reported elsewhere)."""
    try:
        factory = strategy_factory(strategy_name)
    except NasforgeError:
        return False
    return bool(getattr(factory, "multi_fidelity", False))


def rung_policy(cfg: ExperimentConfig) -> RungPolicy | None:
    """How the train and compressed evaluators train this run's multi-fidelity trials:
    ``None`` for a plain strategy; else every rung on the schedule of the strategy's
    ``max_epochs`` (its option, default ``train.epochs``, as the strategy is built) and
    continuing lower rungs unless ``automl.fidelity.continue_rungs: false``."""
    if not is_multi_fidelity(cfg.strategy.name):
        return None
    top = cfg.strategy.options.get("max_epochs", cfg.train.epochs)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        return None  # the strategy's constructor names the bad option
    enabled = cfg.automl.fidelity.continue_rungs if cfg.automl is not None else True
    return RungPolicy(max_epochs=int(top), enabled=enabled)


def uses_data(cfg: ExperimentConfig) -> bool:
    """Whether the configured evaluator trains on the dataset (so the run loads it)."""
    return cfg.evaluator.needs_data


def make_objective(cfg: ExperimentConfig) -> Objective:
    """The run's objective (its fields were checked when the config was loaded)."""
    return cfg.objective.build()


def train_config(cfg: ExperimentConfig, epochs: int | None = None) -> TrainConfig:
    """The ``train:`` recipe with the experiment seed (``epochs`` overrides, e.g. final)."""
    update = {} if epochs is None else {"epochs": epochs}
    return TrainConfig.from_section(cfg.train, cfg.seed, **update)


def make_latency_model(cfg: ExperimentConfig, space: SearchSpace) -> LatencyModel | None:
    """Measures or predicts latency as configured; ``None`` for ``latency.mode: flops``."""
    lat = cfg.latency
    if lat.mode == "flops":
        return None
    if lat.mode == "predict" and lat.table and not Path(lat.table).is_file():
        raise ConfigError(f"latency.table: {lat.table} does not exist")
    return LatencyModel.from_config(lat, space)


@dataclass(frozen=True)
class RunObjects:
    """The objects one run is made of, built once from its config by :func:`build_run`.

    Attributes:
        config: the validated config they were built from.
        dataset: the data (``None`` for an evaluator that needs none, e.g. a table).
        space: the space, with ``space.fixed`` labels pinned.
        objective: how metrics become a score.
        train: the training recipe (``train:`` section + seed).
        latency: measures or predicts latency (``None`` for ``flops`` or without data).
        constraint: for a hard latency limit known before evaluation, the predicate the
            strategy is constructed with; otherwise ``None``.
        evaluator: the evaluator when building the constraint needed it (a table), so it is
            not built twice; otherwise ``None`` (:func:`make_evaluator` builds it).
        run_dir: the run directory, if any.
    """

    config: ExperimentConfig
    dataset: Dataset | None
    space: SearchSpace
    objective: Objective
    train: TrainConfig
    latency: LatencyModel | None
    constraint: Constraint | None = None
    evaluator: Evaluator | None = None
    run_dir: Path | None = None

    def evaluator_context(self) -> EvaluatorContext:
        return EvaluatorContext(
            self.space,
            self.dataset,
            self.train,
            self.latency,
            self.run_dir,
            self.config.seed,
            rungs=rung_policy(self.config),
        )


def _evaluator_options(cfg: ExperimentConfig, run_dir: Path | None = None) -> dict[str, Any]:
    if cfg.oneshot is not None and cfg.oneshot.method == "spos":  # loads the trained supernet
        return cfg.oneshot.evaluator_options(run_dir)
    options = dict(cfg.evaluator.options)
    if cfg.evaluator.table is not None:
        options["table"] = cfg.evaluator.table
    return options


def _constraint(objects: RunObjects) -> tuple[Constraint | None, Evaluator | None]:
    """For a hard latency limit whose latency is known *before* evaluation (a latency table's
    prediction, or a benchmark table's latency column), a predicate the strategy checks
    before asking, so no query is spent on an arch that breaks the limit."""
    cfg, objective = objects.config, objects.objective
    if (
        objective.kind != "constraint"
        or objective.cost_metric != "latency_ms"
        or objective.target is None
        or not cfg.search.prefilter
    ):
        return None, None
    limit = objective.target
    if isinstance(objects.space, JointSpace) and objects.space.compress_labels:
        # the latency of a compressed model is only known by measuring it, not predicted
        return None, None
    if objects.dataset is None:
        evaluator = create_evaluator(
            cfg.evaluator.kind, objects.evaluator_context(), **_evaluator_options(cfg)
        )
        if not isinstance(evaluator, TableEvaluator) or evaluator.spec.latency_column is None:
            return None, evaluator
        table = evaluator
        return (lambda arch: table.lookup(arch)["latency_ms"] <= limit), evaluator
    model = objects.latency
    if model is None or model.predictor is None:
        return None, None
    return (lambda arch: model.predict(arch) <= limit), None


def build_run(
    cfg: ExperimentConfig, run_dir: str | Path | None = None, dataset: Dataset | None = None
) -> RunObjects:
    """Build the run's objects from ``cfg`` once (loads the data when the evaluator needs it,
    unless ``dataset`` gives it: a Ray worker gets the driver's from the object store, so a
    worker on another host needs no data files).

    Raises:
        ConfigError: a value only checkable now (missing latency table file, unknown space
            or options the space factory rejects, ...), naming the field.
    """
    if not uses_data(cfg):
        dataset = None
    elif dataset is None:
        dataset = make_dataset(cfg)
    space = make_space(cfg, dataset)
    objects = RunObjects(
        config=cfg,
        dataset=dataset,
        space=space,
        objective=make_objective(cfg),
        train=train_config(cfg),
        latency=make_latency_model(cfg, space) if dataset is not None else None,
        run_dir=Path(run_dir) if run_dir is not None else None,
    )
    constraint, evaluator = _constraint(objects)
    return dataclasses_replace(objects, constraint=constraint, evaluator=evaluator)


def make_strategy(objects: RunObjects) -> Strategy:
    """The configured strategy, constructed with the run's constraint."""
    cfg = objects.config
    options = dict(cfg.strategy.options)
    if cfg.objective.kind == "pareto" and cfg.strategy.name == "evolution":
        options.setdefault("selection", "pareto")
    if is_multi_fidelity(cfg.strategy.name):
        # the largest rung trains as long as the train: recipe says a trial trains
        options.setdefault("max_epochs", cfg.train.epochs)
    return create_strategy(
        cfg.strategy.name, objects.space, seed=cfg.seed, constraint=objects.constraint, **options
    )


def make_evaluator(
    cfg: ExperimentConfig, run_dir: str | Path | None = None, objects: RunObjects | None = None
) -> Evaluator:
    """The configured evaluator (``evaluator.kind`` from the registry), built from
    ``objects`` (default: :func:`build_run` of ``cfg``)."""
    objects = objects if objects is not None else build_run(cfg, run_dir)
    if objects.evaluator is not None:
        return objects.evaluator
    options = _evaluator_options(cfg, objects.run_dir)
    return create_evaluator(cfg.evaluator.kind, objects.evaluator_context(), **options)
