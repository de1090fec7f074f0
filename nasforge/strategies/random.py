"""Random search: uniform samples from the space, never repeating a key."""

from __future__ import annotations

from nasforge.space import Arch
from nasforge.strategies.base import Strategy


class RandomStrategy(Strategy):
    name = "random"

    def _propose(self) -> Arch:
        return self.space.sample(self.rng)

    def _load_extra_state(self, extra: dict) -> None:  # nothing learned
        return None
