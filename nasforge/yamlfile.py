"""The one YAML loader of nasforge: every YAML file the tool reads goes through :func:`read_yaml`.

It has ``yaml.safe_load`` semantics (plain data only: a ``!!python/...`` tag is refused, never
constructed), except that a key repeated in one mapping is an error (``safe_load`` would keep
the last one and silently drop the first section a user wrote), and one error path: a missing,
unreadable or malformed file is a :class:`~nasforge.errors.ConfigError` of one line naming the
file and the line, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nasforge.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping (two ``search:`` blocks
    in a config would otherwise lose the first without a word). Keys merged in with ``<<:``
    may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base constructor names it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r}, also on line {first}; YAML would keep only "
                        "the last one, so merge the two or remove one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


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
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        where = _where(exc)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        problem = " ".join(str(problem).split())
        if "python/" in problem or "could not determine a constructor" in problem:
            problem += "; only plain YAML data is read (no Python tags)"
        if "'\\t'" in problem:
            problem += "; YAML indents with spaces, not tabs"
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
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, not a {what}; give the path of the YAML file")
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
