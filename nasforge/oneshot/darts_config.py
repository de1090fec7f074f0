"""`DartsConfig`: everything a DARTS search (:class:`~nasforge.oneshot.darts.DartsSearch`) is
set up with, checked when it is made (errors name ``darts.<field>``; the experiment config
renames them ``oneshot.options.<field>``).

A module of its own so that the search stays a readable size; ``nasforge.oneshot.darts``
re-exports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nasforge.errors import ConfigError
from nasforge.oneshot import regularizers as reg
from nasforge.oneshot.budget import check_alpha_lr

DERIVATIONS = ("argmax", "perturbation")


@dataclass(frozen=True)
class DartsConfig:
    """Everything a DARTS search is set up with (defaults: DARTS' CIFAR-10 search settings,
    on a CPU-sized supernet, regularised by
    :data:`~nasforge.oneshot.regularizers.DEFAULT_REGULARIZATION`).

    Attributes:
        epochs: search epochs.
        batch_size: examples per step, for both splits.
        steps_per_epoch: steps per epoch (``None``: one pass over the training split).
        channels: supernet channels of the first stage.
        cells_per_stage: supernet cells per stage (nb201: ``N``; darts: ``3 * it + 2`` cells).
        order: 1 (first order) or 2 (unrolled, finite-difference second order).
        lr, lr_min, momentum, weight_decay, grad_clip: network weights' SGD with a cosine
            schedule from ``lr`` to ``lr_min``.
        alpha_lr, alpha_betas, alpha_weight_decay: architecture weights' Adam; ``alpha_lr``
            ``"auto"`` scales it to the run's steps (:mod:`nasforge.oneshot.budget`).
        regularization: ``"none"`` (plain DARTS), ``"default"`` or regulariser names.
        regularizers: their strengths.
        derivation: ``argmax`` or ``perturbation`` (DARTS-PT) for :meth:`DartsSearch.derive`.
        latency_penalty: weight of the expected-latency term (0: off; needs a latency table):
            ``latency_penalty * E[latency] / E0`` (ProxylessNAS; ``E0`` the expected latency
            under uniform weights), or with ``latency_limit_ms`` the hinge
            ``latency_penalty * max(E[latency] - limit, 0) / limit`` while the argmax arch is
            predicted over the limit (a plain expected-latency term drives every edge to the
            free ``none`` op when the data are easy; :meth:`MixedLatency.hinge_ms`).
        latency_limit_ms: hard limit on the derived arch's predicted latency (needs a table).
        latency_margin: the search aims this fraction below ``latency_limit_ms`` (hinge and
            hard limit), so that a derived arch predicted just under the limit does not
            measure over it; set it to the table's held-out error (``nasforge latency
            validate``) when the limit must hold on measurement. 0: aim at the limit.
        hessian_every: compute the dominant Hessian eigenvalue every this many epochs (0: off).
        hessian_iters: power-iteration steps.
        eval_batches: validation batches for the per-epoch record and DARTS-PT.
        seed: seeds the supernet, alpha and every random draw of the search.
    """

    epochs: int = 50
    batch_size: int = 64
    steps_per_epoch: int | None = None
    channels: int = 8
    cells_per_stage: int = 1
    order: int = 1
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    alpha_lr: float | str = "auto"
    alpha_betas: tuple[float, float] = (0.5, 0.999)
    alpha_weight_decay: float = 1e-3
    regularization: tuple[str, ...] | str = "default"
    regularizers: reg.RegularizerConfig = field(default_factory=reg.RegularizerConfig)
    derivation: str = "argmax"
    latency_penalty: float = 0.0
    latency_limit_ms: float | None = None
    latency_margin: float = 0.0
    hessian_every: int = 1
    hessian_iters: int = 10
    eval_batches: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "regularization", reg.parse_regularization(self.regularization))
        positive = ("epochs", "batch_size", "channels", "cells_per_stage", "eval_batches")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"darts.{name}: must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"darts.steps_per_epoch: must be >= 1, got {self.steps_per_epoch}")
        if self.order not in (1, 2):
            raise ConfigError(f"darts.order: must be 1 or 2, got {self.order}")
        if self.derivation not in DERIVATIONS:
            raise ConfigError(
                f"darts.derivation: {self.derivation!r} is not one of {', '.join(DERIVATIONS)}"
            )
        if not self.lr > 0:
            raise ConfigError(f"darts.lr: must be > 0, got {self.lr}")
        object.__setattr__(self, "alpha_lr", check_alpha_lr(self.alpha_lr))
        if self.latency_penalty < 0:
            raise ConfigError(f"darts.latency_penalty: must be >= 0, got {self.latency_penalty}")
        if self.latency_limit_ms is not None and not self.latency_limit_ms > 0:
            raise ConfigError(f"darts.latency_limit_ms: must be > 0, got {self.latency_limit_ms}")
        if not 0.0 <= self.latency_margin < 1.0:
            raise ConfigError(f"darts.latency_margin: must be in [0, 1), got {self.latency_margin}")
        if self.hessian_every < 0 or self.hessian_iters < 1:
            raise ConfigError("darts.hessian_every must be >= 0 and darts.hessian_iters >= 1")

    @property
    def latency_target_ms(self) -> float | None:
        """The limit the search aims at: ``latency_limit_ms`` less ``latency_margin``."""
        if self.latency_limit_ms is None:
            return None
        return self.latency_limit_ms * (1.0 - self.latency_margin)

    def uses(self, name: str) -> bool:
        """Whether regulariser ``name`` is switched on."""
        return name in self.regularization

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regularization"] = list(self.regularization)
        return d


__all__ = ["DERIVATIONS", "DartsConfig"]
