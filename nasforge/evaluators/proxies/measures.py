"""Zero-cost proxies: one score per freshly initialised network, from its paper's definition.

Every measure takes a model (built and seeded by the caller, in train mode, weights as
initialised), an input batch ``x`` and labels ``y`` and returns one float (higher = predicted
better). Measures that do not need data ignore ``x``/``y`` (:data:`DATA_FREE`).

* ``synflow`` (Tanaka et al. 2020, as a NAS proxy Abdelfattah et al. 2021): weights replaced
  by their absolute values, BN as identity (eval mode at init), an all-ones input in double
  precision; score = sum over parameters of ``|theta * d(sum of outputs)/d theta|``. Data-free.
* ``grad_norm`` (Abdelfattah et al.): sum over conv/linear layers of ``||dL/dW||_2`` for the
  cross-entropy loss of one batch.
* ``snip`` (Lee et al. 2019): sum over conv/linear weights of ``|W * dL/dW|``.
* ``fisher`` (Theis et al. 2018, Turner et al. 2020): per conv/linear output activation ``a``
  with gradient ``g``: sum over channels of ``0.5 * mean_batch((sum_spatial a*g)^2)``, summed.
* ``naswot`` (Mellor et al. 2021, v2): binary ReLU codes ``c`` of the batch at every ReLU; kernel
  ``K = sum c c^T + (1-c)(1-c)^T``; score = ``log|K|`` (slogdet).
* ``jacob_cov`` (Mellor et al. 2020, v1): Jacobians of the summed output w.r.t. the input per
  sample, their correlation matrix's eigenvalues ``v``; score = ``-sum(log(v+k) + 1/(v+k))``,
  ``k = 1e-5``.
* ``params``, ``flops`` (baselines): :func:`nasforge.hardware.profile.count_params` /
  :func:`~nasforge.hardware.profile.count_flops`.

``grad_norm``, ``snip`` and ``fisher`` share one forward/backward pass of the same batch
(:func:`gradient_measures`): their definitions read the same gradients, so computing them
together gives exactly what three separate passes would, at a third of the cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from nasforge.hardware.profile import count_flops, count_params

PROXIES: tuple[str, ...] = (
    "synflow",
    "naswot",
    "jacob_cov",
    "grad_norm",
    "snip",
    "fisher",
    "params",
    "flops",
)
#: proxies that read no input data (synflow uses an all-ones input by definition)
DATA_FREE = frozenset({"synflow", "params", "flops"})
GRADIENT = ("grad_norm", "snip", "fisher")
_LAYERS = (nn.Conv2d, nn.Conv1d, nn.Linear)


def _weights(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _LAYERS)]


def _with_grads(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, its gradient) of every conv/linear layer whose weight got a gradient."""
    out = []
    for m in _weights(model):
        w = m.weight
        if isinstance(w, torch.Tensor) and w.grad is not None:
            out.append((w, w.grad))
    return out


def synflow(model: nn.Module, input_shape: Sequence[int]) -> float:
    """SynFlow of ``model`` (modified: weights made absolute, on a copy in double precision).

    Args:
        model: the network; it is converted to double and its weights to their absolute
            values, so pass a model the caller no longer needs (or a copy).
        input_shape: one sample's shape (C, H, W) / (C, L).
    """
    model.double()
    model.eval()  # BN at init: running mean 0, var 1 -> (almost) identity, as "bn=False"
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad(set_to_none=True)
    out = model(torch.ones(1, *input_shape, dtype=torch.float64))
    torch.sum(out).backward()
    total = 0.0
    with torch.no_grad():
        for w, g in _with_grads(model):
            total += float((w * g).abs().sum())
    return total


def gradient_measures(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: Sequence[str] = GRADIENT
) -> dict[str, float]:
    """``grad_norm``, ``snip`` and ``fisher`` from one cross-entropy forward/backward pass."""
    model.train()
    model.zero_grad(set_to_none=True)
    acts: list[torch.Tensor] = []
    hooks = []
    if "fisher" in names:

        def keep(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
            out.retain_grad()
            acts.append(out)

        hooks = [m.register_forward_hook(keep) for m in _weights(model)]
    try:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        return _from_grads(_with_grads(model), acts, names)


def _from_grads(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], acts: list[torch.Tensor], names: Sequence[str]
) -> dict[str, float]:
    out: dict[str, float] = {}
    if "grad_norm" in names:
        out["grad_norm"] = sum(float(g.norm(2)) for _, g in pairs)
    if "snip" in names:
        out["snip"] = sum(float((w * g).abs().sum()) for w, g in pairs)
    if "fisher" in names:
        total = 0.0
        for a in acts:
            if a.grad is None:
                continue
            g = (a * a.grad).flatten(2).sum(-1) if a.dim() > 2 else a * a.grad
            total += float((0.5 * g.pow(2).mean(0)).sum())
        out["fisher"] = total
    return out


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """NASWOT v2: ``log|K|`` of the Hamming kernel of the batch's binary ReLU codes."""
    n = x.shape[0]
    k = torch.zeros(n, n, dtype=torch.float64)

    def code(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: object) -> None:
        c = (inp[0].detach().reshape(n, -1) > 0).double()
        k.add_(c @ c.t() + (1.0 - c) @ (1.0 - c).t())

    hooks = [m.register_forward_hook(code) for m in model.modules() if isinstance(m, nn.ReLU)]
    model.train()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet) if float(sign) > 0 else -math.inf


def jacob_cov(model: nn.Module, x: torch.Tensor) -> float:
    """NASWOT v1: eigenvalues of the correlation of the per-sample input Jacobians."""
    model.train()
    model.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    model(xg).sum().backward()
    assert xg.grad is not None
    jac = xg.grad.reshape(x.shape[0], -1).double().numpy()
    with np.errstate(all="ignore"):
        corr = np.corrcoef(jac)
    if not np.all(np.isfinite(corr)):
        return -math.inf  # a constant Jacobian (e.g. a cell that ignores its input)
    v = np.clip(np.linalg.eigvalsh(corr), 0.0, None)  # rounding can give -1e-16
    k = 1e-5
    return float(-np.sum(np.log(v + k) + 1.0 / (v + k)))


def params(model: nn.Module) -> float:
    return float(count_params(model))


def flops(model: nn.Module, input_shape: Sequence[int]) -> float:
    return float(count_flops(model, input_shape))


MeasureFn = Callable[..., float]

__all__ = [
    "DATA_FREE",
    "GRADIENT",
    "PROXIES",
    "flops",
    "gradient_measures",
    "jacob_cov",
    "naswot",
    "params",
    "synflow",
]
