"""Weight-sharing NAS: DARTS with its regularisers, collapse diagnostics and latency awareness.

Public API (DARTS):

* :class:`DartsConfig`, :class:`DartsSearch` (``step_epoch() -> record``, ``derive() -> Arch``,
  ``state_dict()`` / ``load_state_dict()``), in :mod:`nasforge.oneshot.darts`;
* :data:`REGULARIZERS`, :data:`DEFAULT_REGULARIZATION`, :class:`RegularizerConfig`;
* :class:`ArchWeights` and the mixed networks (:mod:`nasforge.oneshot.mixed`);
* :func:`layout_for` / :class:`CellLayout` and :func:`derive_perturbation`;
* :class:`MixedLatency` (expected latency from a measured table, hard-limit derivation);
* :func:`dominant_eigenvalue`, :func:`entropy`.

Public API (single-path one-shot):

* :class:`Supernet` (``forward(x, arch)``, ``extract(arch)``), :func:`register_supernet`;
* :class:`SupernetConfig`, :class:`SupernetTrainer` (uniform or FairNAS strictly fair
  sampling, resumable), :func:`make_sampler`;
* :func:`recalibrate_bn`; :func:`ranking_report` / :class:`RankingReport` (Kendall tau of
  inherited vs stand-alone accuracy beside the seed-to-seed ceiling).
"""

from __future__ import annotations

from nasforge.oneshot.bn import recalibrate_bn
from nasforge.oneshot.darts import DERIVATIONS, DartsConfig, DartsSearch
from nasforge.oneshot.derive import CellLayout, derive_perturbation, layout_for
from nasforge.oneshot.diagnostics import dominant_eigenvalue, entropy
from nasforge.oneshot.latency import MixedLatency
from nasforge.oneshot.mixed import ArchWeights, MixedDartsNetwork, MixedNB201Network, MixedOp
from nasforge.oneshot.ranking import RankingReport, ranking_report
from nasforge.oneshot.regularizers import (
    DEFAULT_REGULARIZATION,
    REGULARIZERS,
    RegularizerConfig,
)
from nasforge.oneshot.sampling import make_sampler
from nasforge.oneshot.spos import SupernetConfig, SupernetTrainer
from nasforge.oneshot.supernet import Supernet, register_supernet

__all__ = [
    "DEFAULT_REGULARIZATION",
    "DERIVATIONS",
    "REGULARIZERS",
    "ArchWeights",
    "CellLayout",
    "DartsConfig",
    "DartsSearch",
    "MixedDartsNetwork",
    "MixedLatency",
    "MixedNB201Network",
    "MixedOp",
    "RankingReport",
    "RegularizerConfig",
    "Supernet",
    "SupernetConfig",
    "SupernetTrainer",
    "derive_perturbation",
    "dominant_eigenvalue",
    "entropy",
    "layout_for",
    "make_sampler",
    "ranking_report",
    "recalibrate_bn",
    "register_supernet",
]
