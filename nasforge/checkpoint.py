"""Checkpoint files: a ``torch.save`` that a kill cannot leave half-written, and a load that
runs no code (``weights_only``). Used by the one-shot trainers (supernet, DARTS, OFA) and the
multi-fidelity rung checkpoints; low in the package so a trial worker importing it pays for
torch only."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from nasforge.errors import ConfigError


def save_state(state: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save(state)`` to ``path`` atomically (a temporary file, synced, then renamed):
    a reader, or a resume after ``kill -9``, sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(dict(state), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_state(path: str | Path, what: str, required: Iterable[str] = ()) -> dict[str, Any]:
    """A checkpoint written by :func:`save_state` (``weights_only``: runs no code).

    Args:
        path: the file.
        what: how errors name it (``"supernet checkpoint"``).
        required: keys a checkpoint of this kind must have.

    Raises:
        ConfigError: the file cannot be read, or is not a dict with the ``required`` keys.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{what} {path}: cannot be read ({why})") from None
    if not isinstance(state, dict) or any(k not in state for k in required):
        article = "an" if what[:1] in "AEFHILMNORSXaeiou" else "a"  # an OFA, a supernet
        raise ConfigError(f"{what} {path}: not {article} {what}")
    return state


__all__ = ["load_state", "save_state"]
