"""The contract between multi-fidelity strategies and the experiment loop (issue 15).

A :class:`FidelityStrategy` decides *what to evaluate at which budget*: each
:meth:`~FidelityStrategy.ask_trial` returns a :class:`TrialRequest` (an arch and the budget
to train it with) or ``None`` when nothing can start until running trials report (a
synchronous rung waits for its last member). The loop runs each request as one trial row
(whose metrics get the budget and rung, see :mod:`nasforge.experiment.fidelity_view`) and
calls :meth:`~FidelityStrategy.tell_trial` with the score. A configuration promoted to a
higher rung is asked again at the larger budget: a new trial row. The train evaluator
continues it from the checkpoint its lower rung left in the run directory, every rung on the
top budget's schedule (:mod:`nasforge.evaluators.rung_checkpoint`;
``automl.fidelity.continue_rungs: false``, or a checkpoint another Ray node holds, trains it
from scratch). The strategy itself knows nothing of checkpoints: a request is an arch and a
budget; :meth:`~FidelityStrategy.live_keys` says whose checkpoints may still be needed.

Resume after ``kill -9``: the loop calls :meth:`~FidelityStrategy.replay_trials` with every
finished row ``(request, score)`` in finish order; the strategy rebuilds its rungs from them,
and asks again whatever was running when the process died.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nasforge.space import Arch
from nasforge.strategies.base import Score, Strategy


@dataclass(frozen=True)
class TrialRequest:
    """One evaluation a multi-fidelity strategy asks for.

    Attributes:
        arch: the configuration (architecture and, in a joint space, its recipe).
        epochs: the epochs to train it for.
        data_fraction: the fraction of the training split to train on (1.0: all).
        rung: 0 for the smallest budget, growing with each promotion.
        bracket: the Hyperband bracket (0 for a single successive-halving ladder).
        config_id: the strategy's id of the configuration (equal across its rungs).
    """

    arch: Arch
    epochs: int
    data_fraction: float = 1.0
    rung: int = 0
    bracket: int = 0
    config_id: int = 0

    @property
    def key(self) -> tuple[str, int, float]:
        """What makes two requests the same evaluation: the arch at one budget."""
        return (self.arch.key, self.epochs, self.data_fraction)


class FidelityStrategy(Strategy):
    """Base class of multi-fidelity strategies (``sh``, ``hyperband``, ``asha``, ``bohb``).

    The loop never calls :meth:`ask`/:meth:`tell` on these; it calls the methods below.
    """

    multi_fidelity = True
    #: the largest budget, in epochs (a trial at it is a full-fidelity evaluation)
    max_epochs: int = 1

    def ask_trial(self) -> TrialRequest | None:
        """The next evaluation, or ``None`` when the next one depends on running trials
        (the loop waits for a result and asks again). :meth:`done` says when to stop."""
        raise NotImplementedError

    def tell_trial(self, request: TrialRequest, score: Score) -> None:
        """The score of an asked request (``None``: the trial failed)."""
        raise NotImplementedError

    def replay_trials(self, finished: Iterable[tuple[TrialRequest, Score]]) -> None:
        """Rebuild state from finished trials (finish order) after a restart; requests that
        were asked but never finished are asked again."""
        for request, score in finished:
            self.tell_trial(request, score)

    def done(self) -> bool:
        """``True`` when the strategy has nothing left to ask (its brackets are spent);
        Hyperband and ASHA start new brackets forever, bounded by the search budget."""
        return False

    def live_keys(self) -> set[str] | None:
        """Arch keys of the configurations that may still be asked at a larger budget (their
        rung checkpoints are kept when a search ends; the others' may be deleted); ``None``:
        the strategy cannot tell (keep them all)."""
        return None
