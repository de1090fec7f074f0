"""Weight-sharing NAS: DARTS with its regularisers, collapse diagnostics and latency awareness.

Public API (DARTS):

* :class:`DartsConfig`, :class:`DartsSearch` (``step_epoch() -> record``, ``derive() -> Arch``,
  ``state_dict()`` / ``load_state_dict()``), in :mod:`nasforge.oneshot.darts`;
* :data:`REGULARIZERS`, :data:`DEFAULT_REGULARIZATION`, :class:`RegularizerConfig`;
* :class:`ArchWeights` and the mixed networks (:mod:`nasforge.oneshot.mixed`);
* :func:`layout_for` / :class:`CellLayout` and :func:`derive_perturbation`;
* :class:`MixedLatency` (expected latency from a measured table, hard-limit derivation);
* :func:`dominant_eigenvalue`, :func:`entropy`.
"""

from __future__ import annotations

from nasforge.oneshot.darts import DERIVATIONS, DartsConfig, DartsSearch
from nasforge.oneshot.derive import CellLayout, derive_perturbation, layout_for
from nasforge.oneshot.diagnostics import dominant_eigenvalue, entropy
from nasforge.oneshot.latency import MixedLatency
from nasforge.oneshot.mixed import ArchWeights, MixedDartsNetwork, MixedNB201Network, MixedOp
from nasforge.oneshot.regularizers import (
    DEFAULT_REGULARIZATION,
    REGULARIZERS,
    RegularizerConfig,
)

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
    "RegularizerConfig",
    "derive_perturbation",
    "dominant_eigenvalue",
    "entropy",
    "layout_for",
]
