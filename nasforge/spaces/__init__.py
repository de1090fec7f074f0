"""Ready-made search spaces behind one registry (`create_space`, `list_spaces`).

Entries are import paths so that heavy spaces load only when used. A space factory takes
``input_shape`` and ``num_classes`` (from the dataset) plus its own keyword options.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nasforge.errors import ConfigError
from nasforge.space import SearchSpace


@dataclass(frozen=True)
class SpaceEntry:
    name: str
    target: str  # "module:attr"
    description: str


_REGISTRY: dict[str, SpaceEntry] = {}


def register_space(name: str, target: str | Callable[..., SearchSpace], description: str) -> None:
    """Register a space factory under ``name`` (an import path "module:attr" or a callable)."""
    if callable(target):
        key = f"_callable_{name}"
        globals()[key] = target
        target = f"{__name__}:{key}"
    _REGISTRY[name] = SpaceEntry(name, target, description)


def list_spaces() -> list[SpaceEntry]:
    return sorted(_REGISTRY.values(), key=lambda e: e.name)


def create_space(
    name: str, input_shape: Sequence[int], num_classes: int, **options: Any
) -> SearchSpace:
    """Build the registered space ``name``; unknown names and options are :class:`ConfigError`."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"space: unknown space {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        )
    module, attr = _REGISTRY[name].target.split(":")
    factory = getattr(importlib.import_module(module), attr)
    try:
        return factory(input_shape=input_shape, num_classes=num_classes, **options)
    except TypeError as exc:
        raise ConfigError(f"space.options: {exc}") from None


register_space(
    "mobile",
    "nasforge.spaces.mobile:MobileSpace",
    "MobileNet-style stages: depth, width, kernel 3/5/7, expand 1/3/6, SE, activation",
)

register_space(
    "nb201",
    "nasforge.spaces.nb201:NB201Space",
    "NAS-Bench-201 cell: 4 nodes, 6 edges, 5 ops incl. none; official arch strings",
)
register_space(
    "darts",
    "nasforge.spaces.darts:DartsSpace",
    "DARTS normal + reduction cells, 8 ops incl. none, genotype notation",
)

__all__ = ["SpaceEntry", "create_space", "list_spaces", "register_space"]
