"""Factory contracts for the registries (spaces, strategies, evaluators), checked at
registration so a wrong factory is blamed where it is registered, not on a user's options."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from nasforge.errors import RegistrationError


def check_factory(
    registry: str,
    name: str,
    factory: Callable[..., Any],
    contract: str,
    positional: int = 0,
    keywords: Sequence[str] = (),
) -> None:
    """Raise unless ``factory`` can be called with ``positional`` positional arguments and
    the ``keywords`` (nasforge always passes them); user options may come on top, so a
    factory may take more keyword parameters as long as they have defaults or it has
    ``**kwargs``.

    Args:
        registry: the register function's name, for the message (``register_space``).
        name: the entry being registered.
        factory: the callable (a class or a function).
        contract: how nasforge calls it, for the message (``factory(input_shape=...)``).
        positional: how many positional arguments nasforge passes first.
        keywords: the keyword arguments nasforge always passes.

    Raises:
        RegistrationError: not callable, or its signature cannot take that call (e.g.
            ``lambda: space`` for a space, which must accept ``input_shape``).
    """
    if not callable(factory):
        raise RegistrationError(
            f"{registry}({name!r}): the factory must be callable, got {type(factory).__name__}"
        )
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check
        return
    try:
        sig.bind(*([None] * positional), **dict.fromkeys(keywords))
    except TypeError as exc:
        label = getattr(factory, "__name__", None) or type(factory).__name__
        must = " and ".join(
            (["a positional argument"] * bool(positional)) + [", ".join(keywords)] * bool(keywords)
        )
        raise RegistrationError(
            f"{registry}({name!r}): the factory must accept {must} (or **kwargs); nasforge "
            f"calls it as {contract}, and {label}{sig} cannot be called so ({exc})"
        ) from None


def resolve_factory(target: str | Callable[..., Any], check: Callable[[Any], None]) -> Any:
    """The callable a registry entry names: ``target`` itself, or the attribute an import path
    ``"module:attr"`` points at (imported now, so built-ins load only when used), passed to
    ``check`` (the registry's contract check) first."""
    if not isinstance(target, str):
        return target
    module, attr = target.split(":")
    factory = getattr(importlib.import_module(module), attr)
    check(factory)
    return factory
