"""Joint spaces: an architecture space plus searched training-recipe and compression
dimensions (issue 15).

Labels: ``recipe/<train field>`` (``recipe/lr``, ``recipe/augment``, ``recipe/schedule`` ...)
override the ``train:`` recipe for one trial; ``compress/<name>`` (``compress/prune_ratio``,
``compress/bits``) say how the trial's model is compressed before it is scored. Every other
label belongs to the architecture space.

A :class:`JointSpace` wraps any architecture space (built-in or a plugin's) and adds those
dimensions, so every strategy sees one space: sampling, mutation, crossover, neighbours and
the encoding are :class:`~nasforge.space.base.SearchSpace`'s generic ones over all the
dimensions; building, the layer plan and descriptions are the inner space's, on the
architecture part of an arch (:func:`split_arch`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from nasforge.space.arch import Arch, Value
from nasforge.space.base import SearchSpace
from nasforge.space.dims import Dimension
from nasforge.space.plan import LayerSpec, Plan

RECIPE_PREFIX = "recipe/"
COMPRESS_PREFIX = "compress/"
_PREFIXES = (RECIPE_PREFIX, COMPRESS_PREFIX)

_Recipe = TypeVar("_Recipe")


def split_values(
    values: Mapping[str, Value],
) -> tuple[dict[str, Value], dict[str, Value], dict[str, Value]]:
    """``(architecture labels, recipe overrides, compression settings)`` of ``values``;
    the recipe and compression dicts are keyed without their prefix (``lr``, ``bits``)."""
    arch: dict[str, Value] = {}
    recipe: dict[str, Value] = {}
    compress: dict[str, Value] = {}
    for label, v in values.items():
        if label.startswith(RECIPE_PREFIX):
            recipe[label[len(RECIPE_PREFIX) :]] = v
        elif label.startswith(COMPRESS_PREFIX):
            compress[label[len(COMPRESS_PREFIX) :]] = v
        else:
            arch[label] = v
    return arch, recipe, compress


def split_arch(space: Any, arch: Arch) -> tuple[Arch, dict[str, Value], dict[str, Value]]:
    """``(inner arch, recipe overrides, compression settings)`` of ``arch`` drawn from
    ``space``. For a plain space (no joint labels) ``(arch, {}, {})``; for a joint space the
    inner arch is made by the wrapped architecture space (``space.inner``), so its key is the
    architecture's own."""
    inner_vals, recipe, compress = split_values(arch)
    if not recipe and not compress:
        return arch, recipe, compress
    inner_space = getattr(space, "inner", None)
    inner = inner_space.make(inner_vals) if inner_space is not None else Arch(inner_vals)
    return inner, recipe, compress


def recipe_train_config(base: _Recipe, recipe: Mapping[str, Value]) -> _Recipe:
    """``base`` (a :class:`~nasforge.train.TrainConfig` or ``TrainSection``) with the
    ``recipe`` overrides, validated again as a whole (``pydantic.ValidationError`` if a value
    does not fit).

    A searched ``schedule`` replaces the older ``cosine`` switch, which is left at its
    default, so ``train: {cosine: false}`` cannot contradict the schedule the search picked.
    """
    if not recipe:
        return base
    model = type(base)
    values = {**base.model_dump(), **recipe}  # type: ignore[attr-defined]
    if "schedule" in recipe:
        values.pop("cosine", None)
    # a pydantic model: validating the whole dump re-runs every field and cross-field check
    return model.model_validate(values)  # type: ignore[attr-defined, no-any-return]


def _strip(value: Any) -> Any:
    """The architecture part of ``value`` if it is a mapping holding joint labels."""
    if isinstance(value, Mapping) and any(
        isinstance(k, str) and k.startswith((RECIPE_PREFIX, COMPRESS_PREFIX)) for k in value
    ):
        return split_values(value)[0]
    return value


class JointSpace(SearchSpace):
    """``inner`` (any architecture space) plus ``recipe/...`` and ``compress/...`` dimensions.

    Args:
        inner: the architecture space; its arch labels must not use the joint prefixes.
        dims: the joint dimensions (labels starting ``recipe/`` or ``compress/``; built from
            the config's ``automl:`` section by
            :meth:`~nasforge.experiment.automl_config.AutomlSection.dimensions`).

    Attributes the inner space has and this class does not (``input_shape``,
    ``num_classes``, a plugin space's own helpers) are the inner space's; a helper called
    with a joint arch gets its architecture part.
    """

    def __init__(self, inner: SearchSpace, dims: Sequence[Dimension]) -> None:
        clash = [d.label for d in inner.dimensions() if d.label.startswith(_PREFIXES)]
        if clash:
            raise ValueError(f"{inner.name}: labels {clash} use the joint-space prefixes")
        wrong = [d.label for d in dims if not d.label.startswith(_PREFIXES)]
        if wrong:
            raise ValueError(f"joint dimensions must start with recipe/ or compress/: {wrong}")
        self.inner = inner
        self.joint_labels = tuple(d.label for d in dims)
        super().__init__([*inner.dimensions(), *dims], name=inner.name)

    def __getattr__(self, name: str) -> Any:
        # only called for attributes this object lacks; guard the names pickling and copying
        # look up before ``inner`` exists, which would otherwise recurse
        if name.startswith("__") or name == "inner" or "inner" not in self.__dict__:
            raise AttributeError(name)
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def on_inner(*args: Any, **kwargs: Any) -> Any:
            return attr(*(_strip(a) for a in args), **{k: _strip(v) for k, v in kwargs.items()})

        return on_inner

    # -- the joint part -------------------------------------------------------------------------
    @property
    def recipe_labels(self) -> tuple[str, ...]:
        return tuple(lb for lb in self.joint_labels if lb.startswith(RECIPE_PREFIX))

    @property
    def compress_labels(self) -> tuple[str, ...]:
        return tuple(lb for lb in self.joint_labels if lb.startswith(COMPRESS_PREFIX))

    def split(self, arch: Mapping[str, Any]) -> tuple[Arch, dict[str, Value], dict[str, Value]]:
        """``(inner arch, recipe, compression settings)`` of ``arch`` (:func:`split_arch`)."""
        a = arch if isinstance(arch, Arch) else Arch(dict(arch))
        return split_arch(self, a)

    def _inner_arch(self, arch: Mapping[str, Any]) -> Arch:
        inner_vals = split_values(arch)[0]
        if isinstance(arch, Arch) and len(inner_vals) == len(arch):
            return arch
        return self.inner.make(inner_vals)

    def canonical_form(self, values: Mapping[str, Value]) -> str | None:
        """The inner space's canonical form plus the recipe and compression values, so
        functionally identical architectures with the same recipe share one key."""
        inner_vals, recipe, compress = split_values(values)
        inner = self.inner.canonical_form(inner_vals)
        if inner is None:
            inner = json.dumps(inner_vals, sort_keys=True, separators=(",", ":"))
        joint = json.dumps(
            {"recipe": recipe, "compress": compress}, sort_keys=True, separators=(",", ":")
        )
        return f"{inner}|{joint}"

    def _check(self, vals: dict[str, Any]) -> None:
        super()._check(vals)
        if type(self.inner).validate is not SearchSpace.validate or (
            type(self.inner)._check is not SearchSpace._check
        ):  # a space with checks of its own beyond its dimensions
            self.inner.validate(split_values(vals)[0])

    def sample(self, rng: np.random.Generator) -> Arch:
        if type(self.inner).sample is SearchSpace.sample:
            return super().sample(rng)
        # a space with its own sampler: its arch, then the joint dimensions
        return self.repair(dict(self.inner.sample(rng)), rng)

    def mutate(self, arch: Arch, rng: np.random.Generator, max_tries: int = 20) -> Arch:
        if type(self.inner).mutate is SearchSpace.mutate:
            return super().mutate(arch, rng, max_tries)
        # a space with its own mutation: it mutates the architecture part, or one joint
        # dimension changes, in proportion to the number of labels of each part
        inner_vals, _, _ = split_values(arch)
        joint = [lb for lb in self.joint_labels if lb in arch and self.dimension(lb).mutable]
        if joint and rng.random() < len(joint) / (len(joint) + len(inner_vals)):
            label = joint[int(rng.integers(len(joint)))]
            new = {**arch, label: self.dimension(label).mutate(arch[label], rng)}
            return self.repair(new, rng)
        child = self.inner.mutate(self._inner_arch(arch), rng, max_tries)
        return self.repair({**arch, **child}, rng)

    # -- delegated to the architecture space ----------------------------------------------------
    def build(self, arch: Arch) -> Any:
        return self.inner.build(self._inner_arch(arch))

    def plan(self, arch: Mapping[str, Any]) -> Plan:
        return self.inner.plan(_strip(arch))

    @property
    def has_plan(self) -> bool:
        return self.inner.has_plan

    def all_layers(self) -> list[LayerSpec]:
        return self.inner.all_layers()

    def describe(self, arch: Mapping[str, Any]) -> str:
        inner_vals, recipe, compress = split_values(arch)
        lines = [self.inner.describe(inner_vals)]
        lines += [f"{RECIPE_PREFIX}{k} = {v}" for k, v in recipe.items()]
        lines += [f"{COMPRESS_PREFIX}{k} = {v}" for k, v in compress.items()]
        return "\n".join(lines)


def inner_space(space: SearchSpace) -> SearchSpace:
    """The architecture space of ``space`` (itself unless it is a :class:`JointSpace`)."""
    return space.inner if isinstance(space, JointSpace) else space
