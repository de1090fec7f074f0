"""Collapse diagnostics of a DARTS search: entropy of the architecture weights and the dominant
Hessian eigenvalue of the validation loss with respect to them.

Zela et al. (2020, "Understanding and Robustifying DARTS") showed that the dominant eigenvalue
of this Hessian grows as the search heads for a degenerate (skip-heavy) cell: a sharp
minimum in alpha, which the discretisation to one op per edge then leaves badly. Low entropy
says the weights have committed; together with the derived cell's skip/none count per epoch
they are the collapse signal the report plots.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch


def entropy(probs: torch.Tensor) -> float:
    """Mean over edges of the entropy (nats) of each edge's op weights (rows of ``probs``)."""
    p = probs.detach().clamp_min(1e-12)
    p = p / p.sum(dim=-1, keepdim=True)
    return float(-(p * p.log()).sum(dim=-1).mean())


def dominant_eigenvalue(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    iters: int = 10,
    generator: torch.Generator | None = None,
    tol: float = 1e-3,
) -> float:
    """The largest-magnitude eigenvalue of the Hessian of ``loss_fn()`` w.r.t. ``params``.

    Power iteration on Hessian-vector products (double backward through ``torch.autograd``);
    the Hessian is never formed. Stops after ``iters`` products or when the Rayleigh quotient
    changes by less than ``tol`` (relative).

    Args:
        loss_fn: computes the scalar loss (called once; its graph is kept for the products).
        params: the tensors (requiring grad) the Hessian is taken over.
        iters: at most this many Hessian-vector products.
        generator: draws the start vector (repeatable runs).
        tol: relative change of the estimate that ends the iteration.

    Returns:
        The Rayleigh quotient ``v' H v`` of the last unit vector (signed).
    """
    loss = loss_fn()
    grads = torch.autograd.grad(loss, list(params), create_graph=True)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    norm = _norm(v)
    v = [x / norm for x in v]
    eig = 0.0
    for i in range(max(iters, 1)):
        hv = torch.autograd.grad(grads, list(params), grad_outputs=v, retain_graph=True)
        new = float(sum((a * b).sum() for a, b in zip(hv, v)))
        norm = _norm(hv)
        if float(norm) == 0.0:
            return 0.0
        v = [h.detach() / norm for h in hv]
        if i > 0 and abs(new - eig) <= tol * max(abs(new), 1e-12):
            return new
        eig = new
    return eig


def _norm(vs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Euclidean norm of a list of tensors taken as one vector."""
    return torch.sqrt(torch.stack([(x * x).sum() for x in vs]).sum())


def cell_summary(probs: Mapping[str, torch.Tensor], ops: Sequence[str]) -> dict[str, object]:
    """Per cell: mean entropy and the op weights as nested lists (for trajectories)."""
    return {
        cell: {
            "entropy": entropy(p),
            "weights": [[round(float(x), 6) for x in row] for row in p.detach()],
            "ops": list(ops),
        }
        for cell, p in probs.items()
    }


__all__ = ["cell_summary", "dominant_eigenvalue", "entropy"]
