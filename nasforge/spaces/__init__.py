"""Ready-made search spaces behind one registry (`create_space`, `list_spaces`).

A space factory is anything callable as ``factory(input_shape=..., num_classes=..., **options)``
returning a :class:`~nasforge.space.SearchSpace` (see :class:`SpaceFactory`): ``input_shape``
and ``num_classes`` come from the dataset (or from ``space.options`` without one), the rest
are the config's ``space.options``. :func:`register_space` checks that contract when it is
called; built-in entries are import paths so that heavy spaces load only when used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nasforge.errors import ConfigError
from nasforge.registry import check_factory, resolve_factory
from nasforge.space import SearchSpace

SPACE_CONTRACT = "factory(input_shape=..., num_classes=..., **options) -> SearchSpace"


#: How :func:`create_space` calls a registered factory (a class or a function):
#: ``factory(input_shape=..., num_classes=..., **options)``, checked by :func:`register_space`.
#: A plain callable type rather than a Protocol with ``**options``, so that a class whose
#: constructor takes exactly its own options (or none) type-checks as a factory.
SpaceFactory = Callable[..., SearchSpace]


@dataclass(frozen=True)
class SpaceEntry:
    """One registered space: ``target`` is a factory or an import path ``"module:attr"``."""

    name: str
    target: str | SpaceFactory = field(repr=False)
    description: str

    @property
    def origin(self) -> str:
        """The module that provides the factory (``nasforge.spaces.mobile``, ``my_plugin``)."""
        if isinstance(self.target, str):
            return self.target.split(":")[0]
        return str(getattr(self.target, "__module__", "") or "?")


_REGISTRY: dict[str, SpaceEntry] = {}


def register_space(name: str, factory: str | SpaceFactory, description: str = "") -> None:
    """Register a space factory under ``name`` (a later registration replaces an earlier one).

    Args:
        name: the config's ``space.name``.
        factory: a callable keeping :class:`SpaceFactory`'s contract (checked now), or an
            import path ``"module:attr"`` to one (checked when first used).
        description: one line for ``nasforge spaces``.

    Raises:
        RegistrationError: the factory cannot be called as
            ``factory(input_shape=..., num_classes=..., **options)``.
    """
    if not isinstance(factory, str):
        _check(name, factory)
    _REGISTRY[name] = SpaceEntry(name, factory, description)


def _check(name: str, factory: Callable[..., Any]) -> None:
    check_factory(
        "register_space", name, factory, SPACE_CONTRACT, keywords=("input_shape", "num_classes")
    )


def list_spaces() -> list[SpaceEntry]:
    """Registered spaces, sorted by name."""
    return sorted(_REGISTRY.values(), key=lambda e: e.name)


def space_factory(name: str) -> SpaceFactory:
    """The factory registered as ``name`` (an import path is imported and checked now).

    Raises:
        ConfigError: no such space (names the registered ones).
        RegistrationError: the registered factory breaks the contract.
    """
    if name not in _REGISTRY:
        raise ConfigError(
            f"space.name: unknown space {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        )
    target = _REGISTRY[name].target
    return resolve_factory(target, lambda factory: _check(name, factory))  # type: ignore[no-any-return]


def create_space(
    name: str, input_shape: Sequence[int], num_classes: int, **options: Any
) -> SearchSpace:
    """Build the registered space ``name``; unknown names and options are :class:`ConfigError`."""
    factory = space_factory(name)
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

__all__ = [
    "SPACE_CONTRACT",
    "SpaceEntry",
    "SpaceFactory",
    "create_space",
    "list_spaces",
    "register_space",
    "space_factory",
]
