"""`Strategy`: ask/tell black-box search over a :class:`SearchSpace`.

The experiment owns the loop, concurrency and storage; a strategy only proposes and learns.

* :meth:`ask` is called whenever the experiment has a free evaluation slot; it returns
  architectures that have not been asked before (by :attr:`Arch.key`) where the space allows.
* :meth:`tell` is called once per asked architecture when its evaluation ends, with a score
  to **maximise** (a float, or a tuple for multi-objective strategies) or ``None`` if the
  evaluation failed. Tells may arrive in any order and interleave with asks.
* :meth:`state_dict` / :meth:`load_state_dict` round-trip all state through JSON.
* :meth:`replay` rebuilds state from a store's finished trials after a restart.

Strategies are seeded: the same seed and the same tells give the same asks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from nasforge.space import Arch, SearchSpace

Score = float | tuple[float, ...] | None


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return json.loads(json.dumps(rng.bit_generator.state))


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


class Strategy:
    """Base class; subclasses implement :meth:`_propose` and, if they learn, :meth:`_observe`."""

    name = "base"

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.asked: set[str] = set()
        self.history: list[tuple[Arch, Score]] = []

    # -- public protocol ------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Arch]:
        out: list[Arch] = []
        for _ in range(n):
            arch = self._fresh(self._propose)
            self.asked.add(arch.key)
            out.append(arch)
        return out

    def tell(self, arch: Arch, score: Score) -> None:
        self.asked.add(arch.key)
        self.history.append((arch, score))
        self._observe(arch, score)

    def replay(self, finished: Iterable[tuple[Arch, Score]], asked: Iterable[Arch] = ()) -> None:
        """Rebuild state from finished trials (in finish order) and still-open asks.

        The random stream is re-seeded from the seed and the number of trials seen, so a
        resumed run does not repeat the asks it made before the restart.
        """
        n = 0
        for arch, score in finished:
            self.tell(arch, score)
            n += 1
        for arch in asked:
            self.asked.add(arch.key)
            n += 1
        self.rng = np.random.default_rng([self.seed, n])

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "rng": rng_state(self.rng),
            "asked": sorted(self.asked),
            "history": [[a.to_json(), _score_to_json(s)] for a, s in self.history],
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.rng = rng_from_state(state["rng"])
        self.asked = set(state["asked"])
        self.history = [(Arch.from_json(a), _score_from_json(s)) for a, s in state["history"]]
        self._load_extra_state(state.get("extra", {}))

    # -- for subclasses -------------------------------------------------------------------------
    def _propose(self) -> Arch:
        raise NotImplementedError

    def _observe(self, arch: Arch, score: Score) -> None:
        """Called by :meth:`tell` after the history is appended."""

    def _extra_state(self) -> dict[str, Any]:
        """Strategy-specific JSON state beyond history and rng (e.g. controller weights)."""
        return {}

    def _load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` saved; by default re-observe the history."""
        for arch, score in self.history:
            self._observe(arch, score)

    def _fresh(self, propose: Callable[[], Arch], tries: int = 100) -> Arch:
        """Call ``propose`` until it gives an unseen key; after ``tries`` sample randomly."""
        for _ in range(tries):
            arch = propose()
            if arch.key not in self.asked:
                return arch
        for _ in range(tries):
            arch = self.space.sample(self.rng)
            if arch.key not in self.asked:
                return arch
        return arch  # the space is (nearly) exhausted; a repeat is better than a hang

    def finished(self) -> list[tuple[Arch, Score]]:
        return [(a, s) for a, s in self.history if s is not None]


def scalar(score: Score) -> float:
    """A score as one float to maximise (first objective of a tuple; failed = -inf)."""
    if score is None:
        return float("-inf")
    if isinstance(score, tuple):
        return float(score[0])
    return float(score)


def _score_to_json(s: Score) -> Any:
    return list(s) if isinstance(s, tuple) else s


def _score_from_json(s: Any) -> Score:
    return tuple(s) if isinstance(s, list) else s
