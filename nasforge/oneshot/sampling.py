"""Path samplers for single-path supernet training: uniform (SPOS) and strictly fair (FairNAS).

A sampler hands the trainer the paths of one optimisation step through :meth:`PathSampler.paths`:
one arch for :class:`UniformSampler` (Guo et al., 2020, "Single Path One-Shot"), ``m`` archs for
:class:`FairSampler` (Chu et al., 2021, "FairNAS"), whose gradients the trainer accumulates
before one update.

Strict fairness: for every dimension of the space with ``k`` choices, the ``m`` paths of one
step use each choice exactly ``m / k`` times, where ``m`` is the least common multiple of all
choice counts (FairNAS has ``k`` equal for every layer, so ``m = k`` and each choice is used
once; ``nb201`` gives ``m = 5``). A dimension that is inactive in a path (a block deeper than
the sampled stage depth) still receives its share of the assignment, but the arch drops it,
as the space prescribes; the assignment itself is returned by :meth:`FairSampler.assignment`
so the fairness can be checked.

Only categorical and integer dimensions can be sampled fairly; a ``Float`` dimension is a
:class:`~nasforge.errors.ConfigError` naming the label.

Randomness: every sampler draws from its own ``numpy`` generator, whose state round-trips
through :meth:`PathSampler.state_dict` (plain JSON-able values), so a resumed training samples
the same paths.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nasforge.errors import ConfigError
from nasforge.space import Arch, Categorical, Int, SearchSpace
from nasforge.space.arch import Value

SAMPLINGS = ("uniform", "fair")


def choice_values(space: SearchSpace) -> dict[str, tuple[Value, ...]]:
    """Every dimension's finite list of values, by label, in the space's order.

    Raises:
        ConfigError: a dimension is not categorical or integer (names its label).
    """
    out: dict[str, tuple[Value, ...]] = {}
    for dim in space.dimensions():
        if isinstance(dim, Categorical):
            out[dim.label] = tuple(dim.choices)
        elif isinstance(dim, Int):
            out[dim.label] = tuple(range(dim.low, dim.high + 1, dim.step))
        else:
            raise ConfigError(
                f"{space.name}: dimension {dim.label!r} ({type(dim).__name__}) has no finite "
                "list of choices; single-path supernets need categorical or integer dimensions"
            )
    return out


class PathSampler:
    """Base class: which archs one training step runs.

    :meth:`paths` is called once per step, in training order; :meth:`state_dict` and
    :meth:`load_state_dict` save and restore the generator so a resumed run repeats its draws.
    """

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.values = choice_values(space)
        self.rng = np.random.default_rng(seed)

    def paths(self) -> list[Arch]:
        """The archs of the next step (at least one); each is valid in :attr:`space`."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The generator state (JSON-able)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self.rng.bit_generator.state = state["rng"]

    def _make(self, chosen: dict[str, Value]) -> Arch:
        """The arch of ``chosen`` values, keeping only the dimensions active on its own values."""
        kept: dict[str, Value] = {}
        for dim in self.space.dimensions():
            if dim.active(kept):
                kept[dim.label] = chosen[dim.label]
        return self.space.make(kept)


class UniformSampler(PathSampler):
    """SPOS: one path per step, every active dimension drawn uniformly and independently."""

    def paths(self) -> list[Arch]:
        chosen = {
            label: vals[int(self.rng.integers(len(vals)))] for label, vals in self.values.items()
        }
        return [self._make(chosen)]


class FairSampler(PathSampler):
    """FairNAS strict fairness: ``m`` paths per step that use every choice equally often.

    Attributes:
        m: paths per step, the least common multiple of the choice counts.
    """

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        super().__init__(space, seed)
        self.m = math.lcm(*(len(v) for v in self.values.values()))

    def assignment(self) -> dict[str, list[Value]]:
        """Draw one step's assignment: per label, ``m`` values, each choice ``m / k`` times,
        in a random order (an independent permutation per dimension)."""
        out: dict[str, list[Value]] = {}
        for label, vals in self.values.items():
            pool = list(vals) * (self.m // len(vals))
            order = self.rng.permutation(len(pool))
            out[label] = [pool[int(i)] for i in order]
        return out

    def paths(self) -> list[Arch]:
        assign = self.assignment()
        return [self._make({k: v[i] for k, v in assign.items()}) for i in range(self.m)]


def make_sampler(name: str, space: SearchSpace, seed: int = 0) -> PathSampler:
    """The sampler called ``name`` (``uniform`` or ``fair``).

    Raises:
        ConfigError: unknown name (lists the allowed ones).
    """
    if name == "uniform":
        return UniformSampler(space, seed)
    if name == "fair":
        return FairSampler(space, seed)
    raise ConfigError(
        f"sampling: unknown sampling {name!r}; expected one of {', '.join(SAMPLINGS)}"
    )
