"""Plugins: user modules that register spaces, strategies, evaluators, backends and
compression stages, so the CLI sees them like built-in ones.

Two ways in, both plain imports:

* a config's ``plugins:`` list of importable module names (``plugins: [my_pkg.nas]``),
  imported before anything of the config is resolved;
* a Python entry point in the ``nasforge.plugins`` group of an installed distribution
  (``[project.entry-points."nasforge.plugins"] my_plugin = "my_pkg.nas"``), loaded once,
  lazily, the first time plugins are loaded. An entry point naming a function
  (``"my_pkg.nas:register"``) has that function called with no arguments.

A plugin registers by calling the register functions when imported:
:func:`nasforge.spaces.register_space`, :func:`nasforge.strategies.register_strategy`,
:func:`nasforge.evaluators.register_evaluator`, :func:`nasforge.hardware.register_backend`
and compression's ``register_stage``, and the channel graph's
:func:`~nasforge.compression.pruning.register_leaf_rule` (a module type) and
``register_function_rule`` (an fx-wrapped function), recorded as kind ``pruning rule``
(named ``module:Class`` / ``function:name``). What each plugin added is recorded with its origin
(:func:`registrations`) for ``nasforge spaces`` and ``nasforge plugins``.

Any failure while importing a plugin is a one-line :class:`~nasforge.errors.PluginError`
naming the plugin and the cause.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nasforge.compression.stages import get_stage, list_stages
from nasforge.errors import PluginError
from nasforge.evaluators import list_evaluators
from nasforge.hardware.backends import get_backend, list_backends
from nasforge.spaces import list_spaces
from nasforge.strategies import STRATEGIES

ENTRY_POINT_GROUP = "nasforge.plugins"
KINDS = ("space", "strategy", "evaluator", "backend", "stage", "pruning rule")


@dataclass(frozen=True)
class Registration:
    """One registry entry a plugin added (or replaced)."""

    kind: str  # one of KINDS
    name: str
    plugin: str  # the plugin's module name, or "entry point NAME"


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: its name, how it was found (``config`` or ``entry point``) and what
    it registered."""

    name: str
    source: str
    registered: tuple[Registration, ...]


_LOADED: dict[str, Plugin] = {}
_entry_points_loaded = False


def _registry_listers() -> dict[str, Callable[[], dict[str, Any]]]:
    """kind -> a snapshot of that registry (name -> entry), compared before/after a plugin."""
    return {
        "space": lambda: {e.name: e for e in list_spaces()},
        "strategy": lambda: dict(STRATEGIES),
        "evaluator": lambda: {e.name: e for e in list_evaluators()},
        "backend": lambda: {n: get_backend(n) for n in list_backends()},
        "stage": lambda: {n: get_stage(n) for n in list_stages()},
        "pruning rule": _pruning_rules,
    }


def _rule_key(key: object) -> str:
    return getattr(key, "__qualname__", None) or getattr(key, "__name__", None) or str(key)


def _pruning_rules() -> dict[str, Any]:
    """The channel graph's leaf rules (``module:Class``) and function rules
    (``function:name``), read from its registries (absent ones are empty)."""
    from nasforge.compression.pruning import graph

    out: dict[str, Any] = {}
    for prefix, attr in (("module", "_LEAF_RULES"), ("function", "_FUNCTION_RULES")):
        registry = getattr(graph, attr, None)
        if isinstance(registry, dict):
            for key, rule in registry.items():
                out[f"{prefix}:{_rule_key(key)}"] = rule
    return out


def _snapshot() -> dict[str, dict[str, Any]]:
    return {kind: lister() for kind, lister in _registry_listers().items()}


def _added(before: dict[str, dict[str, Any]], plugin: str) -> tuple[Registration, ...]:
    after = _snapshot()
    return tuple(
        Registration(kind, name, plugin)
        for kind in KINDS
        for name, entry in sorted(after[kind].items())
        if name not in before[kind] or before[kind][name] is not entry
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_plugin(module: str) -> Plugin:
    """Import the plugin module ``module`` (once per process) and record what it registered.

    Raises:
        PluginError: the module is missing, fails on import, or a registration in it fails.
    """
    if module in _LOADED:
        return _LOADED[module]
    if not isinstance(module, str) or not module.strip():
        raise PluginError(f"plugins: expected an importable module name, got {module!r}")
    before = _snapshot()
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of user code is the plugin's error
        raise PluginError(f"plugins: cannot load plugin {module!r}: {_one_line(exc)}") from None
    plugin = Plugin(module, "config", _added(before, module))
    _LOADED[module] = plugin
    return plugin


def load_entry_points() -> list[Plugin]:
    """Load every ``nasforge.plugins`` entry point, the first time only.

    Raises:
        PluginError: an entry point fails to load (names it and its target).
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return [p for p in _LOADED.values() if p.source == "entry point"]
    _entry_points_loaded = True
    out = []
    for ep in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
    ):
        label = f"entry point {ep.name}"
        before = _snapshot()
        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as exc:  # noqa: BLE001 - any failure of user code is the plugin's error
            raise PluginError(
                f"plugins: cannot load {label} ({ep.value}) of group {ENTRY_POINT_GROUP!r}: "
                f"{_one_line(exc)}"
            ) from None
        plugin = Plugin(label, "entry point", _added(before, label))
        _LOADED[label] = plugin
        out.append(plugin)
    return out


def load_plugins(modules: Iterable[str] = ()) -> list[Plugin]:
    """Load the ``nasforge.plugins`` entry points (once), then the ``modules`` in order.

    Called by config loading before any space, strategy, evaluator, backend or stage is
    resolved; safe to call again (each plugin is imported once per process).

    Returns:
        The plugins of ``modules``, in order.

    Raises:
        PluginError: a plugin cannot be imported (one line: plugin and cause).
    """
    load_entry_points()
    return [load_plugin(m) for m in modules]


def loaded_plugins() -> list[Plugin]:
    """Every plugin loaded in this process, in load order."""
    return list(_LOADED.values())


def registrations(kind: str | None = None) -> dict[tuple[str, str], str]:
    """``(kind, name) -> plugin`` for every entry plugins added (the last plugin wins)."""
    out: dict[tuple[str, str], str] = {}
    for plugin in _LOADED.values():
        for r in plugin.registered:
            if kind is None or r.kind == kind:
                out[(r.kind, r.name)] = r.plugin
    return out


__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "Plugin",
    "Registration",
    "load_entry_points",
    "load_plugin",
    "load_plugins",
    "loaded_plugins",
    "registrations",
]
