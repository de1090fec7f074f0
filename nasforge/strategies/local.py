"""Local search: hill climbing over ``space.neighbors(arch)`` with random restarts.

White et al., "Local Search is State of the Art for Neural Architecture Search Benchmarks"
(2020): start from the best of a few random archs, evaluate its neighbours, move to a better
one, and restart from a random arch at a local optimum.
"""

from __future__ import annotations

from typing import Any

from nasforge.space import Arch, SearchSpace
from nasforge.strategies.base import Constraint, Score, Strategy, scalar

MODES = ("first", "best")


class LocalSearchStrategy(Strategy):
    """Hill climbing with first- or best-improvement moves and random restarts.

    Args:
        space: the search space (its ``neighbors`` define the moves).
        seed: seed of all randomness (start points, neighbour order).
        mode: ``"first"`` moves as soon as a neighbour beats the current arch;
            ``"best"`` evaluates the whole neighbourhood and moves to its best.
        warmup: random archs evaluated before the first climb starts from their best.

    The climb is event-driven, so asynchronous tells are fine: whenever the current
    neighbourhood is fully asked but some results are still out, :meth:`ask` explores with
    random samples (which the climb adopts if they beat the current arch). Scores of
    neighbours that were already evaluated are reused rather than asked again.
    Multi-objective scores use their first objective; failed trials never become current.
    """

    name = "local"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        mode: str = "first",
        warmup: int = 1,
        constraint: Constraint | None = None,
    ) -> None:
        super().__init__(space, seed, constraint)
        if mode not in MODES:
            raise ValueError(f"local.mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if warmup < 1:
            raise ValueError(f"local.warmup: expected an integer >= 1, got {warmup!r}")
        self.mode = mode
        self.warmup = int(warmup)
        self.current: tuple[Arch, float] | None = None
        self.queue: list[Arch] = []  # neighbours of current, in random order, not yet asked
        self.neighborhood: set[str] = set()  # keys of all neighbours of current
        self.best_neighbor: tuple[Arch, float] | None = None  # best-improvement candidate
        self.restarts = 0

    # -- climbing ---------------------------------------------------------------------------------
    def _move_to(self, arch: Arch, s: float) -> None:
        """Make ``arch`` current, following already-known better neighbours."""
        while True:
            self.current = (arch, s)
            nbrs = self.space.neighbors(arch)
            order = self.rng.permutation(len(nbrs))
            nbrs = [nbrs[int(i)] for i in order]
            self.neighborhood = {n.key for n in nbrs}
            known = [(n, scalar(self.scores[n.key])) for n in nbrs if n.key in self.scores]
            better = [(n, v) for n, v in known if v > s]
            self.queue = [n for n in nbrs if self.allowed(n)]
            self.best_neighbor = None
            if better and self.mode == "first":
                arch, s = better[0]
                continue
            if better:
                self.best_neighbor = max(better, key=lambda e: e[1])
                if not self.queue and not (self.pending() & self.neighborhood):
                    arch, s = self.best_neighbor
                    continue
            return

    def _observe(self, arch: Arch, score: Score) -> None:
        if score is None:
            return
        s = scalar(score)
        if self.current is None:
            self._move_to(arch, s)
            return
        if s <= self.current[1]:
            return
        if self.mode == "first" or arch.key not in self.neighborhood:
            self._move_to(arch, s)
        elif self.best_neighbor is None or s > self.best_neighbor[1]:
            self.best_neighbor = (arch, s)

    def _propose(self) -> Arch:
        if len(self.asked) < self.warmup or self.current is None:
            return self.space.sample(self.rng)
        while self.queue:
            arch = self.queue.pop(0)
            if self.allowed(arch):
                return arch
        waiting = bool(self.pending() & self.neighborhood)
        if self.best_neighbor is not None and not waiting:
            self._move_to(*self.best_neighbor)
            return self._propose()
        if not waiting:  # local optimum: restart from a random arch
            self.current = None
            self.restarts += 1
        return self.space.sample(self.rng)

    # -- state ----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        def pair(p: tuple[Arch, float] | None) -> list[Any] | None:
            return None if p is None else [p[0].to_json(), p[1]]

        return {
            "current": pair(self.current),
            "best_neighbor": pair(self.best_neighbor),
            "queue": [a.to_json() for a in self.queue],
            "neighborhood": sorted(self.neighborhood),
            "restarts": self.restarts,
        }

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        def pair(p: list[Any] | None) -> tuple[Arch, float] | None:
            return None if p is None else (Arch.from_json(p[0]), float(p[1]))

        self.current = pair(extra.get("current"))
        self.best_neighbor = pair(extra.get("best_neighbor"))
        self.queue = [Arch.from_json(a) for a in extra.get("queue", [])]
        self.neighborhood = set(extra.get("neighborhood", []))
        self.restarts = int(extra.get("restarts", 0))
