"""Errors that nasforge raises for bad user input.

Every error a user can cause by a bad config, path, label or arch string is a subclass of
:class:`NasforgeError`; the CLI prints its message on one line and exits with code 2.
"""

from __future__ import annotations


class NasforgeError(Exception):
    """Base class for errors caused by user input; the message names what is wrong."""


class ConfigError(NasforgeError):
    """A config file or field is invalid."""


class SpaceError(NasforgeError):
    """An architecture does not belong to its search space (names the label and allowed values)."""


class DataError(NasforgeError):
    """A dataset name or path is missing or malformed (names the path)."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the trial is recorded as failed."""


class RegistrationError(NasforgeError):
    """A space, strategy, evaluator, backend or stage was registered with a factory that does
    not keep its contract (names the registry, the entry and the parameters it must accept)."""


class PluginError(ConfigError):
    """A plugin (a ``plugins:`` module of a config or a ``nasforge.plugins`` entry point)
    could not be imported or failed while registering; names the plugin and the cause."""
