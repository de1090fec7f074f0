"""Framework-agnostic search dimensions: categorical, integer, float (optionally log scale).

A dimension can be *conditional*: it exists only when another label satisfies a condition
(``stage1/block2/kernel`` exists only when ``stage1/depth >= 3``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasforge.space.arch import Value


@dataclass(frozen=True)
class Condition:
    """``label op value``: ``>=`` and ``==`` compare with value, ``in`` checks membership."""

    label: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in (">=", "==", "in"):
            raise ValueError(f"condition op must be one of '>=', '==', 'in', got {self.op!r}")

    def holds(self, values: dict[str, Value]) -> bool:
        if self.label not in values:
            return False
        v = values[self.label]
        if self.op == ">=":
            return bool(v >= self.value)  # type: ignore[operator]
        if self.op == "==":
            return bool(v == self.value)
        return v in self.value


@dataclass(frozen=True)
class Dimension:
    """Base of all dimensions. ``when`` lists conditions that must all hold for it to exist."""

    label: str
    when: tuple[Condition, ...] = field(default=(), kw_only=True)

    def active(self, values: dict[str, Value]) -> bool:
        if not self.when:
            return True
        return all(c.holds(values) for c in self.when)

    @property
    def mutable(self) -> bool:
        """Whether any value has a neighbour (a one-choice dimension cannot mutate)."""
        return True

    # -- to implement -------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Value:
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def neighbors(self, value: Value) -> list[Value]:
        raise NotImplementedError

    def mutate(self, value: Value, rng: np.random.Generator) -> Value:
        options = self.neighbors(value)
        if not options:
            return value
        return options[int(rng.integers(len(options)))]

    @property
    def width(self) -> int:
        """Length of this dimension's slice of the encoding vector."""
        return 1

    def encode(self, value: Value | None) -> list[float]:
        raise NotImplementedError


@dataclass(frozen=True)
class Categorical(Dimension):
    choices: tuple[Value, ...] = ()

    def __post_init__(self) -> None:
        if len(self.choices) == 0:
            raise ValueError(f"{self.label}: a categorical dimension needs at least one choice")
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "_lookup", {(isinstance(c, bool), c) for c in self.choices})

    @property
    def mutable(self) -> bool:
        return len(self.choices) > 1

    def sample(self, rng: np.random.Generator) -> Value:
        # rng.random() is ~10x cheaper than rng.integers() per call; the loop overhead counts
        return self.choices[int(rng.random() * len(self.choices))]

    def contains(self, value: Any) -> bool:
        try:
            return (isinstance(value, bool), value) in self._lookup  # type: ignore[attr-defined]
        except TypeError:  # unhashable
            return False

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def neighbors(self, value: Value) -> list[Value]:
        return [c for c in self.choices if c != value]

    @property
    def width(self) -> int:
        return len(self.choices)

    def encode(self, value: Value | None) -> list[float]:
        out = [0.0] * len(self.choices)
        if value is not None:
            out[self.choices.index(value)] = 1.0
        return out


@dataclass(frozen=True)
class Int(Dimension):
    low: int = 0
    high: int = 1
    step: int = 1

    def __post_init__(self) -> None:
        if self.high < self.low or self.step < 1:
            raise ValueError(f"{self.label}: need low <= high and step >= 1")

    @property
    def mutable(self) -> bool:
        return self.high > self.low

    def _values(self) -> range:
        return range(self.low, self.high + 1, self.step)

    def sample(self, rng: np.random.Generator) -> Value:
        vals = self._values()
        return int(vals[int(rng.random() * len(vals))])

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )

    def describe(self) -> str:
        return f"an integer in [{self.low}, {self.high}]" + (
            f" in steps of {self.step}" if self.step != 1 else ""
        )

    def neighbors(self, value: Value) -> list[Value]:
        v = int(value)
        return [x for x in (v - self.step, v + self.step) if self.low <= x <= self.high]

    def encode(self, value: Value | None) -> list[float]:
        if value is None:
            return [0.0]
        span = max(self.high - self.low, 1)
        return [(int(value) - self.low) / span]


@dataclass(frozen=True)
class Float(Dimension):
    low: float = 0.0
    high: float = 1.0
    log: bool = False

    def __post_init__(self) -> None:
        if self.high < self.low or (self.log and self.low <= 0):
            raise ValueError(f"{self.label}: need low <= high (and low > 0 on a log scale)")

    def _to_unit(self, value: float) -> float:
        if self.high == self.low:
            return 0.0
        if self.log:
            return (math.log(value) - math.log(self.low)) / (
                math.log(self.high) - math.log(self.low)
            )
        return (value - self.low) / (self.high - self.low)

    def _from_unit(self, u: float) -> float:
        u = min(max(u, 0.0), 1.0)
        if self.log:
            return float(
                math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
            )
        return float(self.low + u * (self.high - self.low))

    def sample(self, rng: np.random.Generator) -> Value:
        return self._from_unit(float(rng.random()))

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )

    def describe(self) -> str:
        return f"a float in [{self.low}, {self.high}]" + (" (log scale)" if self.log else "")

    def neighbors(self, value: Value) -> list[Value]:
        u = self._to_unit(float(value))
        return [self._from_unit(x) for x in (u - 0.1, u + 0.1) if 0.0 <= x <= 1.0]

    def mutate(self, value: Value, rng: np.random.Generator) -> Value:
        u = self._to_unit(float(value)) + float(rng.normal(0.0, 0.15))
        return self._from_unit(u)

    def encode(self, value: Value | None) -> list[float]:
        return [0.0 if value is None else self._to_unit(float(value))]
