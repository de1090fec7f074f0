"""Joint spaces: an architecture space plus searched training-recipe and compression
dimensions (issue 15). CONTRACT SKELETON -- fleshed out by the joint-space work.

Labels: ``recipe/<train field>`` (``recipe/lr``, ``recipe/augment``, ``recipe/schedule`` ...)
override the ``train:`` recipe for one trial; ``compress/<name>`` (``compress/prune_ratio``,
``compress/bits``) say how the trial's model is compressed before it is scored. Every other
label belongs to the architecture space.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nasforge.space.arch import Arch, Value

RECIPE_PREFIX = "recipe/"
COMPRESS_PREFIX = "compress/"


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
