"""The anti-collapse regularisers of DARTS, each named and switchable.

Names (``DartsConfig.regularization``; ``"none"`` alone is plain DARTS):

* ``darts_minus`` (DARTS-, Chu et al. 2021): an auxiliary skip connection ``aux * x`` on every
  stride-1 edge, ``aux`` decaying linearly from :attr:`RegularizerConfig.aux_skip` to 0 over
  the search, so the skip op no longer wins by being the easiest path for gradients.
* ``partial_channels`` (PC-DARTS, Xu et al. 2020): the candidate ops see ``1/K`` of the
  channels (the rest bypass the edge, then channels are shuffled), with edge normalisation:
  per node a softmax over learned edge weights scales its inputs.
* ``beta`` (beta-DARTS, Ye et al. 2022): beta-decay regularisation, ``lambda_t`` times the mean
  over edges of ``logsumexp(alpha_edge)`` added to the validation loss, ``lambda_t`` rising
  linearly (per epoch) to :attr:`RegularizerConfig.beta_lambda`.
* ``drnas`` (DrNAS, Chen et al. 2021): op weights are samples of a Dirichlet with
  concentration ``elu(alpha) + 1`` (reparametrised, so gradients reach alpha), plus a small
  KL term to the flat Dirichlet; the derivation uses the Dirichlet's mean.
* ``sdarts_rs`` (SDARTS-RS, Chen & Hsieh 2020): the network weights train under randomly
  smoothed op weights ``softmax(alpha) + U(-eps, eps)`` (clipped at 0), ``eps`` rising
  linearly over :attr:`RegularizerConfig.sdarts_epsilon`.
* ``early_stop`` (DARTS+, Liang et al. 2019): the search stops at the first epoch whose
  derived cell has :attr:`RegularizerConfig.skip_limit` skip connections or more.

All randomness here draws from torch's global generator; the search seeds it per step from
its own generator, so runs and resumed runs repeat exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nasforge.errors import ConfigError

REGULARIZERS: tuple[str, ...] = (
    "darts_minus",
    "partial_channels",
    "beta",
    "drnas",
    "sdarts_rs",
    "early_stop",
)
#: the default: beta-decay regularisation (beta-DARTS reaches the NB201 optimum region, 94.36
#: on CIFAR-10, at no extra cost per step; DrNAS reports the same but samples every step)
DEFAULT_REGULARIZATION: tuple[str, ...] = ("beta",)


@dataclass(frozen=True)
class RegularizerConfig:
    """Strengths of the regularisers (used only by the ones switched on).

    Attributes:
        aux_skip: DARTS-'s initial auxiliary skip weight (decays linearly to 0).
        partial_k: PC-DARTS' K (the ops see ``channels // K`` channels).
        beta_lambda: beta-DARTS' final weight of the beta-decay term.
        drnas_kl: DrNAS' weight of the KL term to the flat Dirichlet.
        sdarts_epsilon: SDARTS-RS' (first, last) noise amplitude.
        skip_limit: DARTS+'s skip count that stops the search (``None``: 2 for DARTS cells,
            3 of the 6 edges for NB201 cells).
    """

    aux_skip: float = 1.0
    partial_k: int = 4
    beta_lambda: float = 1.0
    drnas_kl: float = 1e-3
    sdarts_epsilon: tuple[float, float] = (0.03, 0.3)
    skip_limit: int | None = None

    def __post_init__(self) -> None:
        if self.aux_skip < 0:
            raise ConfigError(f"darts.regularizers.aux_skip: must be >= 0, got {self.aux_skip}")
        if self.partial_k < 1:
            raise ConfigError(f"darts.regularizers.partial_k: must be >= 1, got {self.partial_k}")
        if self.beta_lambda < 0 or self.drnas_kl < 0:
            raise ConfigError("darts.regularizers.beta_lambda / drnas_kl: must be >= 0")
        lo, hi = self.sdarts_epsilon
        if not 0 <= lo <= hi:
            raise ConfigError(
                f"darts.regularizers.sdarts_epsilon: need 0 <= first <= last, got {lo}, {hi}"
            )
        if self.skip_limit is not None and self.skip_limit < 1:
            raise ConfigError(f"darts.regularizers.skip_limit: must be >= 1, got {self.skip_limit}")


def parse_regularization(value: str | Sequence[str]) -> tuple[str, ...]:
    """The regulariser names of a config value.

    ``"none"`` (or an empty list) is plain DARTS, ``"default"`` is
    :data:`DEFAULT_REGULARIZATION`; a name or a list of names selects those.

    Raises:
        ConfigError: an unknown name (lists the known ones).
    """
    names = [value] if isinstance(value, str) else list(value)
    if names in (["none"], []):
        return ()
    if names == ["default"]:
        return DEFAULT_REGULARIZATION
    bad = [n for n in names if n not in REGULARIZERS]
    if bad:
        raise ConfigError(
            f"darts.regularization: unknown regulariser(s) {bad}; expected 'none', 'default' "
            f"or names from {', '.join(REGULARIZERS)}"
        )
    return tuple(dict.fromkeys(names))


def ramp(epoch: int, epochs: int) -> float:
    """Fraction of the search done by the end of ``epoch`` (``1 / epochs`` in the first, 1 in
    the last): the linear schedules reach their final value in the last epoch."""
    return min((epoch + 1) / max(epochs, 1), 1.0)


def aux_skip_weight(cfg: RegularizerConfig, epoch: int, epochs: int) -> float:
    """DARTS-'s auxiliary skip weight in ``epoch``: linear from ``aux_skip`` to 0."""
    return cfg.aux_skip * (1.0 - epoch / max(epochs, 1))


def concentration(alpha: torch.Tensor) -> torch.Tensor:
    """DrNAS' Dirichlet concentration ``elu(alpha) + 1`` (positive)."""
    return F.elu(alpha) + 1.0


def op_probs(alpha: torch.Tensor, drnas: bool, sample: bool) -> torch.Tensor:
    """Op weights of each edge (rows of ``alpha``): softmax, or DrNAS' Dirichlet sample or mean."""
    if not drnas:
        return F.softmax(alpha, dim=-1)
    conc = concentration(alpha)
    if sample:
        return torch.distributions.Dirichlet(conc).rsample()
    return conc / conc.sum(dim=-1, keepdim=True)


def smooth(probs: torch.Tensor, epsilon: float) -> torch.Tensor:
    """SDARTS-RS: ``probs + U(-epsilon, epsilon)`` clipped at 0 (no gradient to alpha)."""
    noise = torch.empty_like(probs).uniform_(-epsilon, epsilon)
    return (probs.detach() + noise).clamp_min(0.0)


def sdarts_epsilon(cfg: RegularizerConfig, epoch: int, epochs: int) -> float:
    lo, hi = cfg.sdarts_epsilon
    return lo + (hi - lo) * ramp(epoch, epochs)


def beta_loss(alphas: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """beta-DARTS' term: per cell the mean over edges of ``logsumexp(alpha_edge)``, summed."""
    return sum(
        (torch.logsumexp(a, dim=-1).mean() for a in alphas.values()),
        torch.zeros(()),
    )


def drnas_kl(alphas: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """DrNAS' KL of each edge's Dirichlet to the flat one, averaged over edges, summed."""
    total = torch.zeros(())
    for a in alphas.values():
        conc = concentration(a)
        flat = torch.distributions.Dirichlet(torch.ones_like(conc))
        total = (
            total
            + torch.distributions.kl_divergence(torch.distributions.Dirichlet(conc), flat).mean()
        )
    return total


def edge_weights(betas: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """PC-DARTS' edge normalisation: a softmax of ``betas`` within each node's input edges."""
    out = torch.empty_like(betas)
    for group in groups:
        idx = torch.tensor(list(group), dtype=torch.long)
        out = out.index_put((idx,), F.softmax(betas[idx], dim=0))
    return out


def default_skip_limit(cell_edges: int, keep: int | None) -> int:
    """DARTS+'s stopping skip count: 2 in DARTS cells, half the edges of an NB201-like cell."""
    return 2 if keep is not None else max(cell_edges // 2, 1)


__all__ = [
    "DEFAULT_REGULARIZATION",
    "REGULARIZERS",
    "RegularizerConfig",
    "aux_skip_weight",
    "beta_loss",
    "concentration",
    "default_skip_limit",
    "drnas_kl",
    "edge_weights",
    "op_probs",
    "parse_regularization",
    "ramp",
    "sdarts_epsilon",
    "smooth",
]
