"""The one YAML loader of nasforge: every YAML file the tool reads goes through :func:`read_yaml`.

It has ``yaml.safe_load`` semantics (plain data only: a ``!!python/...`` tag is refused, never
constructed) and one error path: a missing, unreadable or malformed file is a
:class:`~nasforge.errors.ConfigError` of one line naming the file and the line, never a
traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nasforge.errors import ConfigError


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def parse_yaml(text: str, source: str) -> Any:
    """The data of YAML ``text`` (read from ``source``, used in messages).

    Raises:
        ConfigError: ``source:line N, column M: not valid YAML (problem)`` for a syntax
            error or a tag that safe loading refuses (``!!python/object`` ...).
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = _where(exc)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problem = " ".join(str(problem).split())
        if "python/" in problem or "could not determine a constructor" in problem:
            problem += "; only plain YAML data is read (no Python tags)"
        raise ConfigError(
            f"{source}:{' ' + where if where else ''}: not valid YAML ({problem})"
        ) from None


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """The data of the YAML file ``path``; ``None`` for an empty file (callers refuse it
    where empty means nothing to do).

    Args:
        path: the file.
        what: what the file is, for the "not found" message (``config file``).

    Raises:
        ConfigError: the file is missing, not text, or not valid YAML (one line, naming the
            file and, for YAML errors, the line).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: {what} not found")
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror or exc})") from None
    return parse_yaml(text, str(p))


def is_blank(data: Any) -> bool:
    """Whether loaded YAML holds nothing (an empty file, only comments, ``{}`` or ``null``)."""
    return data is None or data == {} or data == "" or data == []
