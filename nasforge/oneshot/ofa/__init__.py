"""Once-for-All (Cai et al., ICLR 2020): one elastic supernet over the ``mobile`` space,
trained once with progressive shrinking and in-place distillation; any subnet extracted as a
stand-alone ``nn.Module``; a specialised subnet per latency target in seconds.

* :mod:`~nasforge.oneshot.ofa.elastic`: :class:`ElasticMobileSupernet` (elastic kernel through
  learned kernel transforms, depth, expansion with importance-sorted channels, width, SE,
  input resolution; ``extract(arch)``), :data:`ELASTIC_DIMS`, :func:`elastic_values`;
* :mod:`~nasforge.oneshot.ofa.train`: :class:`OFAConfig` / :class:`PhaseConfig` (the
  progressive-shrinking schedule), :class:`OFATrainer` (resumable, exact);
* :mod:`~nasforge.oneshot.ofa.specialize`: :class:`SpecializeConfig`, :func:`sample_subnets`,
  :class:`AccuracyPredictor` (fitted on inherited accuracies, cross-validated),
  :func:`specialize` (a registered strategy over the predictors under a hard limit or a
  weighted product; never measures).

The product side (``nasforge ofa train`` / ``specialize`` / ``list``) is in
:mod:`nasforge.experiment.ofa_run`, :mod:`~nasforge.experiment.ofa_specialize` and
:mod:`~nasforge.experiment.ofa_cli`.
"""

from __future__ import annotations

from nasforge.oneshot.ofa.elastic import ELASTIC_DIMS, ElasticMobileSupernet, elastic_values
from nasforge.oneshot.ofa.specialize import (
    AccuracyPredictor,
    SpecializeConfig,
    Specialized,
    sample_subnets,
    specialize,
)
from nasforge.oneshot.ofa.train import OFAConfig, OFAEpochRecord, OFATrainer, PhaseConfig

__all__ = [
    "ELASTIC_DIMS",
    "AccuracyPredictor",
    "ElasticMobileSupernet",
    "OFAConfig",
    "OFAEpochRecord",
    "OFATrainer",
    "PhaseConfig",
    "SpecializeConfig",
    "Specialized",
    "elastic_values",
    "sample_subnets",
    "specialize",
]
