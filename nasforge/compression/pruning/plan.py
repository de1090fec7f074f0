"""`PruningPlan`: which channels of which coupled group to keep -- data, saved as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nasforge.compression.errors import PlanMismatchError


@dataclass(frozen=True)
class GroupCut:
    """Keep ``keep`` (sorted channel indices) of group ``group`` of ``size`` channels.

    ``members`` are the group's parameter slices (``module:kind@offset``) when the plan was
    made; :func:`apply_plan` refuses a model whose group has different members.
    """

    group: str
    size: int
    keep: tuple[int, ...]
    members: tuple[str, ...]

    @property
    def removed(self) -> int:
        return self.size - len(self.keep)


@dataclass(frozen=True)
class PruningPlan:
    """A structured pruning decision for one model; produced by a pruner, applied by
    :func:`~nasforge.compression.pruning.apply_plan`.

    ``macs_before`` / ``macs_after`` are the graph's conv/linear MAC estimate at batch 1.
    """

    cuts: tuple[GroupCut, ...]
    input_shape: tuple[int, ...]
    criterion: str = ""
    scope: str = ""
    target: str = ""
    ratio: float = 0.0
    macs_before: int = 0
    macs_after: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def macs_reduction(self) -> float:
        """Estimated fraction of MACs removed."""
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    @property
    def channels_removed(self) -> int:
        return sum(c.removed for c in self.cuts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruningPlan:
        try:
            cuts = tuple(
                GroupCut(
                    str(c["group"]),
                    int(c["size"]),
                    tuple(int(i) for i in c["keep"]),
                    tuple(str(m) for m in c["members"]),
                )
                for c in d["cuts"]
            )
            return cls(
                cuts=cuts,
                input_shape=tuple(int(s) for s in d["input_shape"]),
                criterion=str(d.get("criterion", "")),
                scope=str(d.get("scope", "")),
                target=str(d.get("target", "")),
                ratio=float(d.get("ratio", 0.0)),
                macs_before=int(d.get("macs_before", 0)),
                macs_after=int(d.get("macs_after", 0)),
                notes=tuple(str(n) for n in d.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanMismatchError(
                f"pruning plan: malformed ({type(exc).__name__}: {exc})"
            ) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise PlanMismatchError(f"pruning plan: not JSON ({exc})") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        p = Path(path)
        if not p.is_file():
            raise PlanMismatchError(f"pruning plan: {p} does not exist")
        return cls.from_json(p.read_text())
