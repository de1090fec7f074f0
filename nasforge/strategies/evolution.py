"""Regularized (aging) evolution with tournament selection, mutation and optional crossover.

Real et al., "Regularized Evolution for Image Classifier Architecture Search" (AmoebaNet):
the population is a queue; each child replaces the *oldest* member, not the worst.
``selection="pareto"`` ranks tournament entrants by non-dominated front and crowding
distance (NSGA-II) for multi-objective scores.
"""

from __future__ import annotations

from collections import deque

from nasforge.objectives import crowding_distance, non_dominated_sort
from nasforge.space import Arch, SearchSpace
from nasforge.strategies.base import Constraint, Score, Strategy, scalar


class EvolutionStrategy(Strategy):
    """Args:
    population: P, the size of the aging population (and of the random warm-up).
    tournament: S, how many members are sampled for each tournament.
    crossover: probability that a child is the crossover of two tournament winners.
    selection: ``"scalar"`` (best score) or ``"pareto"`` (front rank, then crowding).
    """

    name = "evolution"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        population: int = 20,
        tournament: int = 5,
        crossover: float = 0.0,
        selection: str = "scalar",
        constraint: Constraint | None = None,
    ) -> None:
        super().__init__(space, seed, constraint)
        if population < 2 or not 1 <= tournament <= population:
            raise ValueError("evolution: need population >= 2 and 1 <= tournament <= population")
        if selection not in ("scalar", "pareto"):
            raise ValueError(
                f"evolution.selection: expected 'scalar' or 'pareto', got {selection!r}"
            )
        if not 0.0 <= crossover <= 1.0:
            raise ValueError("evolution.crossover: a probability in [0, 1]")
        self.population_size = population
        self.tournament = tournament
        self.crossover_p = crossover
        self.selection = selection
        self.population: deque[tuple[Arch, Score]] = deque()

    def _observe(self, arch: Arch, score: Score) -> None:
        if score is None:
            return
        self.population.append((arch, score))
        while len(self.population) > self.population_size:
            self.population.popleft()

    def _winner(self) -> Arch:
        idx = self.rng.choice(
            len(self.population), size=min(self.tournament, len(self.population)), replace=False
        )
        entrants = [self.population[int(i)] for i in idx]
        if self.selection == "pareto" and isinstance(entrants[0][1], tuple):
            pts = [list(s) for _, s in entrants]  # type: ignore[arg-type]
            rank = non_dominated_sort(pts)
            crowd = crowding_distance(pts)
            best = min(range(len(entrants)), key=lambda i: (rank[i], -crowd[i]))
            return entrants[best][0]
        return max(entrants, key=lambda e: scalar(e[1]))[0]

    def _propose(self) -> Arch:
        if len(self.asked) < self.population_size or len(self.population) < 2:
            return self.space.sample(self.rng)
        parent = self._winner()
        if self.crossover_p > 0 and self.rng.random() < self.crossover_p:
            child = self.space.crossover(parent, self._winner(), self.rng)
            return self.space.mutate(child, self.rng) if child.key in self.asked else child
        return self.space.mutate(parent, self.rng)

    def _load_extra_state(self, extra: dict) -> None:
        self.population.clear()
        for arch, score in self.history:
            self._observe(arch, score)
