"""Ranking honesty of a supernet: does inherited-weight accuracy order archs as training does?

:func:`ranking_report` trains every arch stand-alone with two seeds, scores it on the
supernet, and reports Kendall's tau between the supernet's accuracies and the first seed's
stand-alone accuracies beside the **seed-to-seed tau** (stand-alone seed 0 against seed 1):
the noise ceiling no ranker can be expected to beat, since the "true" order itself moves that
much between two trainings. Other rankers (params, FLOPs, a proxy: any score per arch) are
correlated against the same stand-alone accuracies.

Kendall's tau is SciPy's tau-b (ties counted as such); it is ``nan`` when fewer than two
archs or a constant list are given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from scipy.stats import kendalltau

from nasforge.data import Dataset
from nasforge.oneshot.spos import SupernetTrainer
from nasforge.space import Arch, SearchSpace
from nasforge.train import TrainConfig, evaluate_accuracy, train_model


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two equally long score lists (``nan`` when undefined).

    Raises:
        ValueError: the lists differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"kendall_tau: lists of different lengths ({len(a)} and {len(b)})")
    if len(a) < 2:
        return float("nan")
    tau = kendalltau(list(a), list(b))[0]
    return float(tau) if tau is not None else float("nan")


def seed_ceiling(seed_a: Sequence[float], seed_b: Sequence[float]) -> float:
    """The seed-to-seed tau: stand-alone accuracies of the same archs under two training
    seeds; the ceiling of any ranker's tau against one of them."""
    return kendall_tau(seed_a, seed_b)


def standalone_accuracies(
    space: SearchSpace,
    dataset: Dataset,
    archs: Sequence[Arch],
    train: TrainConfig,
    split: Literal["val", "test"] = "val",
    on_arch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train each arch from scratch with ``train`` (its seed seeds init and batches) and return
    its accuracy on ``split``; ``on_arch(index, acc)`` is called after each."""
    x, y = (dataset.x_val, dataset.y_val) if split == "val" else (dataset.x_test, dataset.y_test)
    out = []
    for i, arch in enumerate(archs):
        torch.manual_seed(train.seed)
        net = space.build(arch)
        train_model(net, dataset.x_train, dataset.y_train, train)
        out.append(evaluate_accuracy(net, x, y))
        if on_arch is not None:
            on_arch(i, out[-1])
    return out


def supernet_accuracies(
    trainer: SupernetTrainer, archs: Sequence[Arch], split: Literal["val", "test"] = "val"
) -> list[float]:
    """Inherited-weight accuracy of each arch (BN recalibrated per arch)."""
    return [trainer.accuracy(a, split) for a in archs]


@dataclass(frozen=True)
class RankingReport:
    """Accuracies per arch and the taus against stand-alone seed 0.

    Attributes:
        supernet: inherited-weight accuracy per arch.
        standalone: stand-alone accuracy per arch, one list per seed (first = reference).
        tau_supernet: supernet vs ``standalone[0]``.
        tau_seed_to_seed: ``standalone[0]`` vs ``standalone[1]`` (``nan`` with one seed).
        tau_rankers: other rankers (params, FLOPs, proxies) vs ``standalone[0]``.
    """

    supernet: list[float]
    standalone: list[list[float]]
    tau_supernet: float
    tau_seed_to_seed: float
    tau_rankers: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (``nan`` stays a float)."""
        return {
            "supernet": list(self.supernet),
            "standalone": [list(s) for s in self.standalone],
            "tau_supernet": self.tau_supernet,
            "tau_seed_to_seed": self.tau_seed_to_seed,
            "tau_rankers": dict(self.tau_rankers),
        }

    def summary(self) -> str:
        """One line: the supernet's tau, the ceiling, and every ranker's."""
        parts = [
            f"supernet tau {self.tau_supernet:.3f}",
            f"seed-to-seed {self.tau_seed_to_seed:.3f}",
        ]
        parts += [f"{k} {v:.3f}" for k, v in self.tau_rankers.items()]
        return f"{len(self.supernet)} archs: " + ", ".join(parts)


def ranking_report(
    trainer: SupernetTrainer,
    archs: Sequence[Arch],
    train: TrainConfig,
    seeds: Sequence[int] = (0, 1),
    rankers: Mapping[str, Sequence[float]] | None = None,
    standalone: Sequence[Sequence[float]] | None = None,
) -> RankingReport:
    """Kendall's tau of the (trained) supernet against stand-alone training, on validation.

    Args:
        trainer: a trained supernet.
        archs: the archs to rank (at least two).
        train: the stand-alone recipe; its seed is replaced by each of ``seeds``.
        seeds: stand-alone training seeds; the first is the reference, the second gives the
            seed-to-seed ceiling.
        rankers: other scores per arch (higher = better), correlated with the reference.
        standalone: stand-alone accuracies already measured (one list per seed), reused
            instead of training again (e.g. to compare uniform and fair supernets).
    """
    if standalone is None:
        standalone = [
            standalone_accuracies(
                trainer.space, trainer.dataset, archs, train.model_copy(update={"seed": s})
            )
            for s in seeds
        ]
    runs = [list(s) for s in standalone]
    sup = supernet_accuracies(trainer, archs)
    ref = runs[0]
    ceiling = seed_ceiling(runs[0], runs[1]) if len(runs) > 1 else math.nan
    taus = {name: kendall_tau(list(scores), ref) for name, scores in (rankers or {}).items()}
    return RankingReport(sup, runs, kendall_tau(sup, ref), ceiling, taus)
