"""Compound scaling of a ``mobile`` arch (EfficientNet, Tan & Le 2019).

:func:`scale_arch` maps a base arch of a :class:`~nasforge.spaces.mobile.MobileSpace` (built
with some ``space.options``) to the arch and options of its scaled version: the options'
``width_mult``, ``depth_mult`` and ``resolution_mult`` are multiplied by the given factors
(channels and input size follow in the space's constructor), and each stage's depth ``d``
becomes ``ceil(d * depth)``, the new blocks copying the stage's last block (EfficientNet
repeats a stage's block). :func:`compound_factors` gives the factors of ``phi``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from nasforge.errors import SpaceError
from nasforge.spaces.mobile import DEFAULT_STAGES, StageSpec, check_multiplier

#: the space options compound scaling multiplies
SCALE_OPTIONS = ("width_mult", "depth_mult", "resolution_mult")
_BLOCK_FIELDS = ("kernel", "expand", "se", "act")


def ceil_depth(depth: int, mult: float) -> int:
    """``ceil(depth * mult)`` (at least 1), robust to float error (``5 * 1.2`` is 6, not 7)."""
    return max(1, math.ceil(depth * mult - 1e-9))


def compound_factors(alpha: float, beta: float, gamma: float, phi: float) -> dict[str, float]:
    """The multipliers of compound coefficient ``phi``: depth ``alpha**phi``, width
    ``beta**phi``, resolution ``gamma**phi`` (EfficientNet's naming)."""
    return {"depth": alpha**phi, "width": beta**phi, "resolution": gamma**phi}


def _stage_depths(options: Mapping[str, Any]) -> list[int]:
    """Each stage's unscaled ``max_depth`` from ``options['stages']`` (default stages)."""
    stages: Sequence[Any] = options.get("stages", DEFAULT_STAGES)
    return [int(s.max_depth if isinstance(s, StageSpec) else s[2]) for s in stages]


def scale_arch(
    space_options: Mapping[str, Any],
    base_arch: Mapping[str, Any],
    width: float = 1.0,
    depth: float = 1.0,
    resolution: float = 1.0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (space options, arch values) of ``base_arch`` scaled by the three factors.

    Args:
        space_options: the ``space.options`` of the base arch's mobile space (not mutated).
        base_arch: a valid arch of that space (labels ``stageI/depth``, ``stageI/blockJ/...``).
        width: multiplies ``width_mult`` (channels of stem, stages, head).
        depth: multiplies ``depth_mult``; each stage's depth ``d`` -> ``ceil(d * depth)``,
            capped at the scaled space's ``max_depth``.
        resolution: multiplies ``resolution_mult`` (the size the net computes at).

    Raises:
        ConfigError: a factor, or the product with the option, is not in (0, 16].
        SpaceError: ``base_arch`` lacks a stage's depth or block labels.
    """
    options = dict(space_options)
    for name, factor in zip(SCALE_OPTIONS, (width, depth, resolution), strict=True):
        check_multiplier(name, factor)
        options[name] = check_multiplier(name, float(options.get(name, 1.0)) * factor)
    values = dict(base_arch)
    for i, max_depth in enumerate(_stage_depths(space_options)):
        p = f"stage{i}"
        try:
            d = int(values[f"{p}/depth"])
            last = {f: values[f"{p}/block{d - 1}/{f}"] for f in _BLOCK_FIELDS}
        except KeyError as exc:
            raise SpaceError(f"scale_arch: the base arch has no label {exc.args[0]!r}") from None
        new_max = ceil_depth(max_depth, options["depth_mult"])
        new_d = min(ceil_depth(d, depth), new_max)
        values[f"{p}/depth"] = new_d
        for j in range(d, new_d):  # new blocks repeat the stage's last one
            for f in _BLOCK_FIELDS:
                values[f"{p}/block{j}/{f}"] = last[f]
        for j in range(new_d, max(d, new_max)):  # inactive blocks carry no labels
            for f in _BLOCK_FIELDS:
                values.pop(f"{p}/block{j}/{f}", None)
    return options, values
