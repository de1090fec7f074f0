"""`DartsSearch`: differentiable architecture search on the ``nb201`` and ``darts`` spaces.

One epoch alternates, per step, an update of the architecture weights (alpha) on a
validation batch and an update of the network weights on a training batch (DARTS, Liu et al.
2019): first order (alpha's gradient at the current weights) or second order (at the weights
after one virtual SGD step, the mixed second derivative by central finite differences, as in
DARTS' ``architect.py``; the virtual step leaves out momentum). The regularisers of
:mod:`nasforge.oneshot.regularizers` and the latency penalty of :mod:`nasforge.oneshot.latency`
switch on by name; the settings are :class:`~nasforge.oneshot.darts_config.DartsConfig`. After
each epoch :meth:`DartsSearch.step_epoch` returns a plain record (collapse diagnostics, the
derived cell, the edges' endpoints, the ``alpha_lr`` used and why); :meth:`DartsSearch.derive`
gives the final arch, a valid :class:`~nasforge.space.Arch` of the space. ``alpha_lr``
defaults to ``"auto"``: scaled to the run's steps (:mod:`nasforge.oneshot.budget`), since
DARTS' 3e-4 barely moves alpha in a CPU-sized run.

The supernet is CPU-sized by default (``channels`` 8, one cell per stage); the derived arch is
built at the space's own size. Supernet batch norm always uses batch statistics (the weights
change every step, so running statistics would describe an old mixture); evaluations put
the running statistics back as they were.

Randomness: one ``torch.Generator`` owns the data order, the start vectors of the eigenvalue
iteration and a seed per step for torch's global generator (Dirichlet samples, random
smoothing), so a run repeats exactly, and :meth:`state_dict` / :meth:`load_state_dict`
continue one exactly (with the same ``alpha_lr``, kept in the state).

Data parallelism (``torchrun``, :mod:`nasforge.oneshot.distributed`): when the process group is
joined, every rank draws the same global batches and step seeds and works on its slice of each
(:func:`~nasforge.oneshot.distributed.shard`); the network step runs the supernet in DDP, which
averages the weights' gradients; alpha's gradients are averaged with
:func:`~nasforge.oneshot.distributed.all_reduce_mean_` before the alpha step (alpha lives
outside the network). So the ranks hold identical weights and alphas after every step.
Second order is refused under DDP (its virtual step would need the gradient of the whole batch
inside :func:`~nasforge.oneshot.bilevel.unrolled_arch_grads`). An epoch's training loss and
accuracy are over all ranks' examples, its ``cpu_seconds`` the sum over the ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nasforge.data import Dataset
from nasforge.errors import ConfigError, NasforgeError
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import LatencyTable
from nasforge.oneshot import distributed
from nasforge.oneshot import regularizers as reg
from nasforge.oneshot.bilevel import (
    Split,
    batch_order,
    check_split,
    kept_buffers,
    unrolled_arch_grads,
)
from nasforge.oneshot.budget import AlphaLR, resolve_alpha_lr
from nasforge.oneshot.darts_config import DERIVATIONS, DartsConfig
from nasforge.oneshot.derive import derive_perturbation, layout_for
from nasforge.oneshot.diagnostics import cell_summary, dominant_eigenvalue, entropy
from nasforge.oneshot.latency import MixedLatency
from nasforge.oneshot.mixed import ArchWeights
from nasforge.space import Arch, SearchSpace

STATE_FORMAT = 1


class DartsSearch:
    """A DARTS search over ``space``; see the module docstring.

    Args:
        space: an ``nb201`` or ``darts`` space (its ops are the candidates).
        config: the search settings.
        train: (x, y) of the split the network weights learn on.
        val: (x, y) of the split the architecture weights learn on.
        latency: a latency table (or a predictor) for ``space``, needed by
            ``latency_penalty`` and ``latency_limit_ms``.

    Raises:
        ConfigError: the space has no mixed cells, a setting does not fit the space or the
            latency options lack a table.
    """

    def __init__(
        self,
        space: SearchSpace,
        config: DartsConfig,
        train: Split,
        val: Split,
        latency: LatencyTable | LatencyPredictor | None = None,
    ) -> None:
        self.space, self.config = space, config
        self.layout = layout_for(space)
        self.train, self.val = check_split("train", train), check_split("val", val)
        cfg, rc = config, config.regularizers
        partial = rc.partial_k if cfg.uses("partial_channels") else 1
        self.skip_limit = rc.skip_limit or reg.default_skip_limit(
            len(self.layout.edges(self.layout.skip_cell)), self.layout.keep
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.net = self.layout.build_supernet(cfg.channels, cfg.cells_per_stage, partial)
            self.alpha = {
                c: nn.Parameter(1e-3 * torch.randn(shape))
                for c, shape in self.layout.shapes().items()
            }
            self.betas = (
                {
                    c: nn.Parameter(1e-3 * torch.randn(e))
                    for c, (e, _) in self.layout.shapes().items()
                }
                if cfg.uses("partial_channels")
                else None
            )
        self.net.train()
        self.alpha_lr = resolve_alpha_lr(cfg.alpha_lr, cfg.epochs * self.steps())
        self.w_opt = torch.optim.SGD(
            self.net.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.a_opt = torch.optim.Adam(
            self.arch_parameters(),
            self.alpha_lr.value,
            betas=cfg.alpha_betas,
            weight_decay=cfg.alpha_weight_decay,
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.stopped: str | None = None
        self._ddp: nn.Module | None = None  # the network as the weight step runs it (DDP)
        self.latency: MixedLatency | None = None
        if latency is not None:
            pred = (
                latency
                if isinstance(latency, LatencyPredictor)
                else LatencyPredictor(latency, space)
            )
            self.latency = MixedLatency(self.layout, pred)
        elif cfg.latency_penalty > 0 or cfg.latency_limit_ms is not None:
            raise ConfigError(
                "darts.latency_penalty / darts.latency_limit_ms: need a latency table for the "
                f"{space.name} space (build one with `nasforge latency build`)"
            )
        self.latency_scale = 1.0
        if self.latency is not None and cfg.latency_target_ms is not None:
            self.latency_scale = cfg.latency_target_ms
        elif self.latency is not None:
            uniform = {c: torch.full(s, 1.0 / s[1]) for c, s in self.layout.shapes().items()}
            self.latency_scale = float(self.latency.expected_ms(uniform))

    @classmethod
    def from_dataset(
        cls,
        space: SearchSpace,
        config: DartsConfig,
        data: Dataset,
        latency: LatencyTable | LatencyPredictor | None = None,
    ) -> DartsSearch:
        """A search on ``data``'s train (network weights) and validation (alpha) splits."""
        return cls(space, config, (data.x_train, data.y_train), (data.x_val, data.y_val), latency)

    # -- parameters and weights -------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """Alpha of every cell, then PC-DARTS' edge weights (if on)."""
        out = list(self.alpha.values())
        if self.betas is not None:
            out += list(self.betas.values())
        return out

    def probs(self) -> dict[str, torch.Tensor]:
        """The op weights each cell's derivation reads (softmax, or DrNAS' Dirichlet mean)."""
        drnas = self.config.uses("drnas")
        return {c: reg.op_probs(a, drnas, sample=False).detach() for c, a in self.alpha.items()}

    def edge_weights(self) -> dict[str, torch.Tensor] | None:
        """PC-DARTS' normalised edge weights per cell (``None`` when off)."""
        if self.betas is None:
            return None
        return {c: reg.edge_weights(b, self.layout.groups(c)) for c, b in self.betas.items()}

    def weights(self, for_network: bool = False, sample: bool = True) -> ArchWeights:
        """The :class:`ArchWeights` of one forward pass.

        ``for_network``: for the network-weight step (detached from alpha, smoothed by
        SDARTS-RS when on). ``sample``: DrNAS draws a Dirichlet sample (else its mean).
        """
        cfg = self.config
        drnas = cfg.uses("drnas")
        ops = {c: reg.op_probs(a, drnas, sample) for c, a in self.alpha.items()}
        edges = self.edge_weights()
        if for_network:
            ops = {c: p.detach() for c, p in ops.items()}
            edges = {c: w.detach() for c, w in edges.items()} if edges is not None else None
            if cfg.uses("sdarts_rs"):
                eps = reg.sdarts_epsilon(cfg.regularizers, self.epoch, cfg.epochs)
                ops = {c: reg.smooth(p, eps) for c, p in ops.items()}
        return ArchWeights(ops, edges, self.aux_skip())

    def aux_skip(self) -> float:
        """DARTS-'s auxiliary skip weight in the current epoch (0 when off)."""
        cfg = self.config
        if not cfg.uses("darts_minus"):
            return 0.0
        return reg.aux_skip_weight(cfg.regularizers, self.epoch, cfg.epochs)

    def arch_penalty(self, weights: ArchWeights) -> torch.Tensor:
        """The regularisers' and latency penalty's terms added to the validation loss."""
        cfg = self.config
        total = torch.zeros(())
        if cfg.uses("beta"):
            lam = cfg.regularizers.beta_lambda * reg.ramp(self.epoch, cfg.epochs)
            total = total + lam * reg.beta_loss(self.alpha)
        if cfg.uses("drnas"):
            total = total + cfg.regularizers.drnas_kl * reg.drnas_kl(self.alpha)
        if self.latency is not None and cfg.latency_penalty > 0:
            if cfg.latency_target_ms is not None:  # a hinge, while the argmax is over the limit
                argmax = self.layout.argmax(self.probs(), self.edge_weights())
                expected = self.latency.hinge_ms(
                    weights.ops, weights.edges, cfg.latency_target_ms, argmax
                ).float()
            else:
                expected = self.latency.expected_ms(weights.ops, weights.edges).float()
            total = total + cfg.latency_penalty * expected / self.latency_scale
        return total

    # -- one epoch ----------------------------------------------------------------------------
    def steps(self) -> int:
        n = self.config.steps_per_epoch
        return n if n is not None else max(len(self.train[1]) // self.config.batch_size, 1)

    def lr(self) -> float:
        """Network weights' learning rate in the current epoch (cosine schedule)."""
        cfg = self.config
        t = self.epoch / max(cfg.epochs, 1)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * t))

    @property
    def done(self) -> bool:
        """Every epoch ran, or the search stopped early."""
        return self.stopped is not None or self.epoch >= self.config.epochs

    def step_epoch(self) -> dict[str, Any]:
        """Run one epoch and return its record (see :meth:`record`).

        Raises:
            NasforgeError: the search is already done.
        """
        if self.done:
            raise NasforgeError(
                f"darts: the search is done ({self.stopped or f'{self.epoch} epochs'})"
            )
        start = time.process_time()
        cfg = self.config
        ctx = distributed.current()
        if ctx.active and cfg.order == 2:
            raise ConfigError(
                f"darts.order: 2 (second order) is not supported in data-parallel training "
                f"({ctx.world_size} processes); use order 1, or run in one process"
            )
        if self._ddp is None:  # wrapped once, by every rank at the same step (DDP syncs here)
            self._ddp = distributed.wrap(self.net, ctx)
        lr = self.lr()
        for group in self.w_opt.param_groups:
            group["lr"] = lr
        bs = cfg.batch_size
        tr_order = batch_order(len(self.train[1]), self.steps() * bs, self.generator)
        va_order = batch_order(len(self.val[1]), self.steps() * bs, self.generator)
        losses, correct, seen = 0.0, 0.0, 0.0
        for step in range(self.steps()):
            # the global batch (the same on every rank); this rank's slice of it
            ti = distributed.shard(tr_order[step * bs : (step + 1) * bs], ctx)
            vi = distributed.shard(va_order[step * bs : (step + 1) * bs], ctx)
            xb, yb, xv, yv = self.train[0][ti], self.train[1][ti], self.val[0][vi], self.val[1][vi]
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.a_opt.zero_grad(set_to_none=True)
                if cfg.order == 2:
                    self._unrolled_step(xb, yb, xv, yv, lr)
                else:
                    w = self.weights()
                    loss = F.cross_entropy(self.net(xv, w), yv) + self.arch_penalty(w)
                    loss.backward()
                # alpha is outside the DDP-wrapped network: average its gradients here
                grads = [a.grad for a in self.arch_parameters() if a.grad is not None]
                distributed.all_reduce_mean_(grads, ctx)
                self.a_opt.step()
                self.w_opt.zero_grad(set_to_none=True)
                logits = self._ddp(xb, self.weights(for_network=True))
                loss = F.cross_entropy(logits, yb)
                loss.backward()
                nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
                self.w_opt.step()
            losses += float(loss.detach()) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
        self.epoch += 1
        # training loss and accuracy over every rank's examples; CPU seconds summed
        tot = torch.tensor([losses, correct, seen, time.process_time() - start], dtype=torch.double)
        distributed.all_reduce_mean_([tot], ctx)
        losses, correct, seen, cpu = (float(v) * ctx.world_size for v in tot)
        rec = self.record(cpu)
        rec["train_loss"], rec["train_acc"] = losses / seen, correct / seen
        rec["lr"] = lr
        rec["world_size"] = ctx.world_size
        skips = rec["skip_count"]
        if cfg.uses("early_stop") and skips >= self.skip_limit:
            self.stopped = f"early stop: {skips} skip connections >= {self.skip_limit}"
        # every rank computes the same; rank 0's word makes the ranks stop at the same epoch
        self.stopped = distributed.broadcast_object(self.stopped, ctx)
        rec["stopped"] = self.stopped
        self.history.append(rec)
        return rec

    def _unrolled_step(
        self, xb: torch.Tensor, yb: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, lr: float
    ) -> None:
        """Alpha's second-order gradient (DARTS eq. 7-8) plus the penalty's into ``.grad``."""
        arch = self.arch_parameters()
        w = self.weights()  # one sample (DrNAS) for every term of this step
        grads = unrolled_arch_grads(
            self.net, arch, w, (xb, yb), (xv, yv), lr, self.config.weight_decay
        )
        penalty = self.arch_penalty(w)
        pen_grads = (
            torch.autograd.grad(penalty, arch, allow_unused=True)
            if penalty.requires_grad
            else [None] * len(arch)
        )
        for a, g, pg in zip(arch, grads, pen_grads):
            a.grad = g if pg is None else g + pg

    # -- diagnostics ----------------------------------------------------------------------------
    def evaluate(self, weights: ArchWeights | None = None) -> tuple[float, float]:
        """(loss, accuracy) of the supernet on ``eval_batches`` fixed validation batches."""
        w = weights if weights is not None else self.weights(sample=False)
        losses, correct, seen = 0.0, 0.0, 0.0
        with torch.no_grad(), kept_buffers(self.net):
            for xv, yv in self._eval_batches():
                logits = self.net(xv, w)
                losses += float(F.cross_entropy(logits, yv)) * len(yv)
                correct += int((logits.argmax(1) == yv).sum())
                seen += len(yv)
        return losses / seen, correct / seen

    def _eval_batches(self) -> Iterator[Split]:
        """The same ``eval_batches`` batches every time: a seeded sample of the validation
        split, not its first rows (a split may be sorted by class, as mnist5k's is, and batch
        statistics on a one-class batch misreport the accuracy and the Hessian)."""
        bs, (x, y) = self.config.batch_size, self.val
        n = min(self.config.eval_batches * bs, len(y))
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.config.seed))
        idx = order[:n]
        for i in range(math.ceil(n / bs)):
            yield x[idx[i * bs : (i + 1) * bs]], y[idx[i * bs : (i + 1) * bs]]

    def hessian_eigenvalue(self) -> float:
        """Dominant eigenvalue of the Hessian of the validation loss (first eval batch, the
        deterministic weights) with respect to alpha."""
        xv, yv = next(self._eval_batches())
        alphas = list(self.alpha.values())
        with kept_buffers(self.net):
            return dominant_eigenvalue(
                lambda: F.cross_entropy(self.net(xv, self.weights(sample=False)), yv),
                alphas,
                self.config.hessian_iters,
                self.generator,
            )

    def record(self, cpu_seconds: float = 0.0) -> dict[str, Any]:
        """The current state as a plain record (JSON-ready): epoch, validation loss/accuracy,
        the argmax-derived arch and its skip/none count, entropy, Hessian eigenvalue, op
        weights per cell, expected and derived latency, regularisers in effect (and, from
        :meth:`step_epoch`, training loss/accuracy, learning rate and the early stop)."""
        cfg = self.config
        probs = self.probs()
        arch = self.layout.argmax(probs, self.edge_weights())
        val_loss, val_acc = self.evaluate()
        every = cfg.hessian_every
        eig = self.hessian_eigenvalue() if every and self.epoch % every == 0 else None
        skips = self.layout.op_counts(arch, "skip_connect")
        rec: dict[str, Any] = {
            "epoch": self.epoch,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "arch": arch.to_dict(),
            "arch_string": self.space.describe(arch),
            "skip_count": skips,
            "none_count": self.layout.op_counts(arch, "none"),
            "entropy": float(np.mean([entropy(p) for p in probs.values()])),
            "hessian_eigenvalue": eig,
            "cells": cell_summary(probs, self.layout.ops),
            "edges": {c: [list(e) for e in self.layout.edges(c)] for c in probs},  # (src, dst)
            "regularization": list(cfg.regularization),
            "aux_skip": self.aux_skip(),
            "cpu_seconds": cpu_seconds,
            "alpha_lr": self.alpha_lr.value,
            "alpha_lr_note": self.alpha_lr.note(),
        }
        if self.latency is not None:
            ew = self.edge_weights()
            rec["expected_latency_ms"] = float(self.latency.expected_ms(probs, ew))
            rec["derived_latency_ms"] = self.latency.predict(arch)
        return rec

    # -- derivation -----------------------------------------------------------------------------
    def derive(self, method: str | None = None) -> Arch:
        """The derived arch (``method``: ``argmax`` or ``perturbation``; default the config's),
        under ``latency_limit_ms`` when set (the most likely arch under the limit; a
        perturbation-derived arch over the limit falls back to that).

        Raises:
            ConfigError: unknown method.
            NasforgeError: no arch is under the latency limit.
        """
        method = method or self.config.derivation
        if method not in DERIVATIONS:
            raise ConfigError(
                f"darts.derivation: {method!r} is not one of {', '.join(DERIVATIONS)}"
            )
        probs, ew = self.probs(), self.edge_weights()
        limit = self.config.latency_target_ms
        if method == "perturbation":
            rng = np.random.default_rng(self.config.seed)
            w = self.weights(sample=False)
            arch, self.perturbation_log = derive_perturbation(
                self.layout,
                ArchWeights(probs, w.edges, w.aux_skip),
                lambda x: self.evaluate(x)[1],
                rng,
            )
            if limit is None or self.latency is None or self.latency.predict(arch) <= limit:
                return arch
        if limit is not None and self.latency is not None:
            return self.latency.derive_under_limit(probs, limit, ew)
        return self.layout.argmax(probs, ew)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue the search exactly (tensors and plain Python values only,
        loadable with ``torch.load(..., weights_only=True)``)."""
        return {
            "format": STATE_FORMAT,
            "space": self.space.name,
            "epoch": self.epoch,
            "net": self.net.state_dict(),
            "alpha": {c: a.detach().clone() for c, a in self.alpha.items()},
            "betas": {c: b.detach().clone() for c, b in self.betas.items()} if self.betas else None,
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "alpha_lr": self.alpha_lr.to_dict(),
            "generator": self.generator.get_state(),
            "history": list(self.history),
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a search with the same space and config.

        Raises:
            NasforgeError: the checkpoint is of another format, space or shape (names it).
        """
        if state.get("format") != STATE_FORMAT:
            raise NasforgeError(
                f"darts checkpoint: format {state.get('format')!r} is not supported"
            )
        if state.get("space") != self.space.name:
            raise NasforgeError(
                f"darts checkpoint: made for space {state.get('space')!r}, not {self.space.name!r}"
            )
        try:
            self.net.load_state_dict(state["net"])
            with torch.no_grad():
                for c, a in self.alpha.items():
                    a.copy_(state["alpha"][c])
                if self.betas is not None:
                    for c, b in self.betas.items():
                        b.copy_(state["betas"][c])
            self.w_opt.load_state_dict(state["w_opt"])
            self.a_opt.load_state_dict(state["a_opt"])  # its lr: the checkpoint's alpha_lr
            if "alpha_lr" in state:  # absent from checkpoints before alpha_lr "auto"
                self.alpha_lr = AlphaLR.from_dict(state["alpha_lr"])
            self.generator.set_state(state["generator"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise NasforgeError(
                f"darts checkpoint: does not fit this search ({type(exc).__name__}: {exc}); "
                "was it made with another config?"
            ) from None
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.stopped = state["stopped"]


__all__ = ["DERIVATIONS", "DartsConfig", "DartsSearch"]
