"""`Strategy`: ask/tell black-box search over a :class:`SearchSpace`.

The experiment owns the loop, concurrency and storage; a strategy only proposes and learns.

* :meth:`ask` is called whenever the experiment has a free evaluation slot; it returns
  architectures that have not been asked before (by :attr:`Arch.key`) where the space allows.
* :meth:`tell` is called once per asked architecture when its evaluation ends, with a score
  to **maximise** (a float, or a tuple for multi-objective strategies) or ``None`` if the
  evaluation failed. Tells may arrive in any order and interleave with asks.
* :meth:`state_dict` / :meth:`load_state_dict` round-trip all state through JSON.
* :meth:`replay` rebuilds state from a store's finished trials after a restart.

* ``constraint`` (optional, given at construction, like Optuna's ``constraints_func``) is a
  predicate known *before* evaluation, e.g. ``latency_model.predict(arch) <= limit`` from a
  measured latency table; asks skip archs that fail it. It is a callable, so it is not part
  of the saved state: a strategy restored with :meth:`load_state_dict` keeps the constraint
  it was constructed with. Every subclass accepts ``constraint`` as a keyword and passes it
  to ``Strategy.__init__``; :func:`nasforge.strategies.create_strategy` hands it over.

Strategies are seeded: the same seed and the same tells give the same asks. Subclasses draw
all randomness from :attr:`Strategy.rng` (or state they save in :meth:`_extra_state`), so a
strategy restored by :meth:`load_state_dict` asks exactly what the original would have.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from nasforge.space import Arch, SearchSpace

Score = float | tuple[float, ...] | None
Constraint = Callable[[Arch], bool]
"""A predicate on an arch known before evaluation; ``False`` means "do not ask it"."""


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return json.loads(json.dumps(rng.bit_generator.state))


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


class Strategy:
    """Base class; subclasses implement :meth:`_propose` and, if they learn, :meth:`_observe`."""

    name = "base"
    #: proposals tried per ask before falling back to uniform samples (see :meth:`_fresh`)
    propose_tries = 100

    def __init__(
        self, space: SearchSpace, seed: int = 0, constraint: Constraint | None = None
    ) -> None:
        """Args:
        space: the space asks come from.
        seed: seeds :attr:`rng` (all of the strategy's randomness).
        constraint: asks skip archs for which it returns ``False`` (see the module docs).
        """
        self.space = space
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.asked: set[str] = set()
        self.history: list[tuple[Arch, Score]] = []
        self.scores: dict[str, Score] = {}  # key -> last told score (None = failed)
        self.open: dict[str, Arch] = {}  # asked, result not told yet (insertion = ask order)
        self.constraint: Constraint | None = constraint

    # -- public protocol ------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Arch]:
        """``n`` archs to evaluate next, none asked before, each satisfying :attr:`constraint`.

        Only when the space (or the constraint) is exhausted may an arch repeat or violate
        the constraint. The archs stay :meth:`pending` until told.
        """
        out: list[Arch] = []
        for _ in range(n):
            arch = self._fresh(self._propose)
            self.asked.add(arch.key)
            self.open[arch.key] = arch
            out.append(arch)
        return out

    def tell(self, arch: Arch, score: Score) -> None:
        """Report ``arch``'s score (to maximise; ``None`` = failed). Any order; once per arch."""
        self.asked.add(arch.key)
        self.history.append((arch, score))
        self.scores[arch.key] = score
        self.open.pop(arch.key, None)
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
            self.open[arch.key] = arch
            n += 1
        self.rng = np.random.default_rng([self.seed, n])

    def state_dict(self) -> dict[str, Any]:
        """All state as JSON-serialisable data (``json.dumps`` works on it)."""
        return {
            "name": self.name,
            "seed": self.seed,
            "rng": rng_state(self.rng),
            "asked": sorted(self.asked),
            "history": [[a.to_json(), _score_to_json(s)] for a, s in self.history],
            "open": [a.to_json() for a in self.open.values()],
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into a strategy built with the same arguments."""
        self.seed = int(state["seed"])
        self.rng = rng_from_state(state["rng"])
        self.asked = set(state["asked"])
        self.history = [(Arch.from_json(a), _score_from_json(s)) for a, s in state["history"]]
        self.scores = {a.key: s for a, s in self.history}
        self.open = {a.key: a for a in map(Arch.from_json, state.get("open", []))}
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

    def allowed(self, arch: Arch) -> bool:
        """Not asked before and satisfying :attr:`constraint` (if one is set)."""
        return arch.key not in self.asked and (
            self.constraint is None or bool(self.constraint(arch))
        )

    def _fresh(self, propose: Callable[[], Arch], tries: int | None = None) -> Arch:
        """Call ``propose`` until it gives an allowed arch; after ``tries`` sample randomly.

        Uniform samples get ``max(tries, 1000)`` tries (a tight constraint rejects most);
        if even those fail, an unseen arch that violates the constraint is better than a
        repeat, and a repeat (space exhausted) is better than a hang.
        """
        tries = self.propose_tries if tries is None else tries
        for _ in range(tries):
            arch = propose()
            if self.allowed(arch):
                return arch
        unseen = None
        for _ in range(max(tries, 1000) if self.constraint is not None else max(tries, 100)):
            arch = self.space.sample(self.rng)
            if self.allowed(arch):
                return arch
            if unseen is None and arch.key not in self.asked:
                unseen = arch
        return unseen if unseen is not None else arch

    def finished(self) -> list[tuple[Arch, Score]]:
        """Told trials that did not fail, in tell order."""
        return [(a, s) for a, s in self.history if s is not None]

    def pending(self) -> set[str]:
        """Keys asked (or marked asked by :meth:`replay`) whose result has not been told."""
        return self.asked - self.scores.keys()

    def best(self) -> tuple[Arch, Score] | None:
        """The finished trial with the highest :func:`scalar` score (first told on ties)."""
        done = self.finished()
        if not done:
            return None
        return max(done, key=lambda e: scalar(e[1]))


@contextlib.contextmanager
def torch_single_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread, then restore the caller's setting.

    Strategies run tiny models (a controller, a surrogate) where intra-op threads only add
    synchronisation; on a loaded machine two threads made them ~20x slower than one.
    """
    import torch

    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


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
