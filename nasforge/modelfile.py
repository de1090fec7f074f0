"""Model files that cannot run code: a state dict plus what rebuilds the module.

nasforge never unpickles arbitrary objects from a model file (``torch.load`` with
``weights_only=False`` runs whatever a crafted pickle says). A model travels as

- ``model.pt``: ``model.state_dict()`` (tensors only; read with ``weights_only=True``), and
- ``arch.json``: the space and architecture that rebuild the module
  (:func:`save_model` writes both; the search's ``best/`` holds them), or
- an import path ``package.module:factory`` that the user controls (``--model-factory``), a
  callable without arguments returning the ``nn.Module`` the state dict belongs to.

A file that would need unpickling of other objects (a whole module saved with
``torch.save(model)``) is refused with :class:`UnsafeModelFile`, one line saying what to do.
"""

from __future__ import annotations

import importlib
import json
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.errors import ConfigError, NasforgeError
from nasforge.plugins import load_plugins
from nasforge.space import Arch
from nasforge.spaces import create_space

WEIGHTS_FILE = "model.pt"
ARCH_FILE = "arch.json"
ARCH_FORMAT = "nasforge-arch/1"

#: what a user whose file was refused should do instead (one line)
HOW_TO_SAVE = (
    "save the weights with torch.save(model.state_dict(), path) and pass --model-factory "
    "package.module:factory (a function returning the nn.Module), or give a run's best/ "
    "directory (model.pt + arch.json)"
)


class UnsafeModelFile(NasforgeError):
    """A model file that only unpickling arbitrary Python objects could read (which can run
    code); nasforge refuses it."""


def save_model(
    model: nn.Module,
    arch: Arch,
    out_dir: str | Path,
    space: str,
    input_shape: Sequence[int],
    num_classes: int,
    space_options: Mapping[str, Any] | None = None,
    plugins: Sequence[str] = (),
) -> None:
    """Write ``model.pt`` (the state dict) and ``arch.json`` (what rebuilds the module:
    space name and options, input shape, class count, arch values, plugins to import).

    Args:
        model: the trained module, built by the space from ``arch``.
        arch: its architecture.
        out_dir: the folder to write into (created).
        space: the registered name of the space that built it.
        input_shape: the input the space was created for, ``(C, H, W)``.
        num_classes: the class count it was created for.
        space_options: the options the space was created with (config ``space.options``).
        plugins: modules to import before the space is looked up (the config's plugins).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / WEIGHTS_FILE)
    options = {
        k: v
        for k, v in dict(space_options or {}).items()
        if k not in ("input_shape", "num_classes")
    }
    description = {
        "format": ARCH_FORMAT,
        "space": space,
        "space_options": options,
        "input_shape": [int(s) for s in input_shape],
        "num_classes": int(num_classes),
        "arch": arch.to_dict(),
        "plugins": list(plugins),
    }
    (out / ARCH_FILE).write_text(json.dumps(description, indent=2, default=str))


def load_state_dict(path: str | Path, what: str = "MODEL") -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read with ``weights_only=True`` (no code runs).

    Raises:
        UnsafeModelFile: the file holds pickled objects other than tensors (one line, saying
            what to save instead).
        NasforgeError: the file is missing, not a ``torch.save`` file, or not a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise NasforgeError(f"{what}: {p} does not exist")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeModelFile(
            f"{what}: {p} holds pickled Python objects (e.g. a whole module saved with "
            f"torch.save(model)); nasforge does not unpickle them because that can run code; "
            f"{HOW_TO_SAVE}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NasforgeError(f"{what}: {p} is not a torch.save file ({first})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise NasforgeError(
            f"{what}: {p} holds a {type(obj).__name__}, not a state dict of tensors; {HOW_TO_SAVE}"
        )
    return dict(obj)


def _fill(model: nn.Module, state: dict[str, torch.Tensor], what: str, source: str) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise NasforgeError(
            f"{what}: the weights do not fit the module built by {source} ({first})"
        ) from None
    return model.eval()


def model_from_factory(factory: str, weights: str | Path, what: str = "MODEL") -> nn.Module:
    """``factory()`` (an import path ``package.module:factory``) with the state dict in
    ``weights`` loaded into it.

    Raises:
        ConfigError: the import path is malformed, cannot be imported, or does not return an
            ``nn.Module`` (names ``--model-factory``).
        NasforgeError: the weights cannot be read safely or do not fit.
    """
    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--model-factory: expected package.module:factory, got {factory!r}")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ConfigError(f"--model-factory: cannot import {module_name!r} ({exc})") from None
    except AttributeError:
        raise ConfigError(f"--model-factory: {module_name!r} has no {attr!r}") from None
    model = target()
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--model-factory: {factory}() returned a {type(model).__name__}, not an nn.Module"
        )
    return _fill(model, load_state_dict(weights, what), what, factory)


def read_description(path: str | Path) -> dict[str, Any]:
    """The ``arch.json`` at ``path`` (checked: format, space, arch, input shape, classes)."""
    p = Path(path)
    try:
        desc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise NasforgeError(f"{p}: not a readable arch description ({exc})") from None
    missing = [k for k in ("space", "arch", "input_shape", "num_classes") if desc.get(k) is None]
    if not isinstance(desc, dict) or desc.get("format") != ARCH_FORMAT or missing:
        raise NasforgeError(
            f"{p}: not a nasforge arch description ({ARCH_FORMAT}; missing: {missing})"
        )
    return desc


def build_described(desc: Mapping[str, Any]) -> nn.Module:
    """The (untrained) module an arch description describes (imports its plugins first)."""
    load_plugins(desc.get("plugins") or [])
    space = create_space(
        str(desc["space"]),
        tuple(desc["input_shape"]),
        int(desc["num_classes"]),
        **dict(desc.get("space_options") or {}),
    )
    return space.build(space.make(desc["arch"]))


def load_model(path: str | Path, factory: str | None = None, what: str = "MODEL") -> nn.Module:
    """A model from ``path`` without running code from it, in evaluation mode.

    ``path`` is a state-dict file with ``factory`` (``package.module:factory``), or a
    state-dict file next to an ``arch.json``, or a folder holding both (a run's ``best/``), or
    a run directory (its ``best/`` is used).

    Raises:
        UnsafeModelFile: the file would need unpickling arbitrary objects.
        NasforgeError: anything else missing or inconsistent (one line, naming ``what``).
    """
    p = Path(path)
    if p.is_dir():
        folder = p / "best" if (p / "best" / WEIGHTS_FILE).is_file() else p
        p = folder / WEIGHTS_FILE
    if factory is not None:
        return model_from_factory(factory, p, what)
    state = load_state_dict(p, what)
    arch_file = p.parent / ARCH_FILE
    if not arch_file.is_file():
        raise NasforgeError(
            f"{what}: {p} is a state dict, which holds no architecture; pass --model-factory "
            f"package.module:factory (a function returning the nn.Module), or keep the "
            f"{ARCH_FILE} nasforge writes next to it"
        )
    desc = read_description(arch_file)
    return _fill(build_described(desc), state, what, str(arch_file))
