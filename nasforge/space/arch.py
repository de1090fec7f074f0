"""`Arch`: a frozen, JSON-serialisable sample of a search space."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

Value = int | float | str | bool


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Arch(Mapping[str, Value]):
    """Immutable mapping of hierarchical labels (``stage2/block1/kernel``) to values.

    ``key`` is a stable hash of the canonical form. A search space may pass ``canonical``: a
    string that is equal for architectures computing the same function (isomorphic cells,
    unreachable edges), so that they share one key and no strategy pays twice for them.
    """

    __slots__ = ("_canonical", "_hash", "_key", "_values")

    def __init__(self, values: Mapping[str, Value], canonical: str | None = None) -> None:
        vals: dict[str, Value] = {}
        for label, value in values.items():
            if not isinstance(label, str):
                raise TypeError(f"arch labels must be str, got {label!r}")
            if isinstance(value, (list, tuple)):
                value = json.dumps(list(value))
            if hasattr(value, "item"):  # numpy scalars
                value = value.item()
            vals[label] = value
        self._values = dict(sorted(vals.items()))
        self._canonical = canonical if canonical is not None else _canonical_json(self._values)
        self._key = hashlib.sha1(self._canonical.encode()).hexdigest()[:16]
        self._hash = hash(self._key)

    @property
    def key(self) -> str:
        """Stable 16-hex-digit hash of the canonical form."""
        return self._key

    @property
    def canonical(self) -> str:
        return self._canonical

    def __getitem__(self, label: str) -> Value:
        return self._values[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Arch):
            return self._values == other._values
        if isinstance(other, Mapping):
            return self._values == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Arch({self._values!r})"

    def replace(self, **changes: Value) -> dict[str, Value]:
        """A plain dict with some labels changed (labels with '/' via ``dict(arch) | {...}``)."""
        out = dict(self._values)
        out.update(changes)
        return out

    def to_dict(self) -> dict[str, Value]:
        return dict(self._values)

    def to_json(self) -> str:
        return _canonical_json({"values": self._values, "canonical": self._canonical})

    @classmethod
    def from_json(cls, text: str) -> Arch:
        obj = json.loads(text)
        if isinstance(obj, dict) and "values" in obj:
            return cls(obj["values"], canonical=obj.get("canonical"))
        return cls(obj)
