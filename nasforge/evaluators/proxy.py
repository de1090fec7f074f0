"""Zero-cost proxies as an evaluator (``evaluator.kind: proxy``) and the scorer behind it.

:class:`ProxyScorer` builds a candidate with the space's own :meth:`SearchSpace.build` under
a fixed torch seed (so one arch always gets one initialisation), draws one input batch once
(seeded) and computes the requested measures of :mod:`nasforge.evaluators.proxies.measures`.
It works on any space whose ``build`` returns an ``nn.Module`` taking ``space.input_shape``.

Inputs of the data-dependent proxies (``naswot``, ``jacob_cov``, ``grad_norm``, ``snip``,
``fisher``) come from ``inputs``:

* ``"random"``: standard-normal inputs and uniform labels (as MeCo and data-free studies do);
* a bundled dataset name (``digits``, ``mnist5k``): the first ``batch_size`` training images
  of a seeded shuffle, resized (bilinear) to the space's input size, channels repeated,
  standardised; labels folded into the space's classes;
* ``"dataset"``: the experiment's own dataset (the context's train split), adapted the same way.

:attr:`ProxyScorer.input_description` says which was used; :class:`ProxyEvaluator` reports it
in each result's ``info`` together with the CPU seconds the scoring took.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.evaluators.base import Evaluator, EvaluatorContext, Fidelity, Reporter, Result
from nasforge.evaluators.proxies import measures
from nasforge.space import Arch, SearchSpace

INPUT_SOURCES = ("random", "digits", "mnist5k", "dataset")


def _adapt(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Images ``x`` (N, C, H, W) resized to ``shape`` (C', H', W'), channels repeated or cut,
    standardised per channel. 1-D signals (N, C, L) are interpolated linearly."""
    c = int(shape[0])
    x = x.float()
    if x.dim() == 4 and len(shape) == 3:
        if tuple(x.shape[2:]) != tuple(shape[1:]):
            x = nn.functional.interpolate(
                x, size=tuple(shape[1:]), mode="bilinear", align_corners=False
            )
    elif x.dim() == 3 and len(shape) == 2:
        if x.shape[2] != shape[1]:
            x = nn.functional.interpolate(x, size=int(shape[1]), mode="linear")
    else:
        raise ConfigError(
            f"evaluator.options.inputs: data of shape {tuple(x.shape[1:])} cannot feed "
            f"a space with input shape {tuple(shape)}; use inputs: random"
        )
    if x.shape[1] != c:
        reps = -(-c // x.shape[1])
        x = x.repeat(1, reps, *([1] * (x.dim() - 2)))[:, :c]
    dims = [0, *range(2, x.dim())]
    return (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True).clamp_min(1e-6)


class ProxyScorer:
    """Computes zero-cost proxies of archs of one space.

    Args:
        space: builds the networks; must have ``input_shape`` and ``num_classes``.
        proxies: names from :data:`~nasforge.evaluators.proxies.measures.PROXIES`.
        batch_size: samples in the one input batch of the data-dependent proxies.
        inputs: one of :data:`INPUT_SOURCES` (``"dataset"`` needs ``data``).
        seed: seeds the weight initialisation (same for every arch) and the batch.
        data: ``(x, y)`` tensors for ``inputs="dataset"``.

    Raises:
        ConfigError: an unknown proxy or input source, a bad batch size, or a space that
            does not say its input shape (the message names the option).
    """

    def __init__(
        self,
        space: SearchSpace,
        proxies: Sequence[str] = measures.PROXIES,
        batch_size: int = 64,
        inputs: str = "mnist5k",
        seed: int = 0,
        data: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if isinstance(proxies, str):
            proxies = [proxies]
        bad = [p for p in proxies if p not in measures.PROXIES]
        if bad or not proxies:
            raise ConfigError(
                f"evaluator.options.proxies: unknown proxy {bad}; expected a non-empty list "
                f"from {', '.join(measures.PROXIES)}"
            )
        if int(batch_size) < 2:
            raise ConfigError(f"evaluator.options.batch_size: must be >= 2, got {batch_size}")
        if inputs not in INPUT_SOURCES:
            raise ConfigError(
                f"evaluator.options.inputs: unknown source {inputs!r}; expected one of "
                f"{', '.join(INPUT_SOURCES)}"
            )
        shape = getattr(space, "input_shape", None)
        classes = getattr(space, "num_classes", None)
        if shape is None or classes is None:
            raise ConfigError(
                f"space {space.name!r}: proxies need its input_shape and num_classes attributes"
            )
        self.space = space
        self.proxies = tuple(dict.fromkeys(proxies))
        self.batch_size = int(batch_size)
        self.inputs = inputs
        self.seed = int(seed)
        self.input_shape = tuple(int(s) for s in shape)
        self.num_classes = int(classes)
        self._data = data
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        #: arch key -> (proxies, CPU seconds): archs with one key build one network, so they
        #: are scored once; callers may preload it from a file of earlier scores
        self.cache: dict[str, tuple[dict[str, float], float]] = {}
        self.input_description = "none (data-free proxies only)"
        if not self.data_free:
            self._batch = self._make_batch()

    @property
    def data_free(self) -> bool:
        """Whether none of the chosen proxies reads input data."""
        return all(p in measures.DATA_FREE for p in self.proxies)

    def _make_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        n, shape = self.batch_size, self.input_shape
        if self.inputs == "random":
            x = torch.randn(n, *shape, generator=gen)
            y = torch.randint(0, self.num_classes, (n,), generator=gen)
            self.input_description = (
                f"random: {n} standard-normal inputs {shape}, uniform labels (seed {self.seed})"
            )
            return x, y
        if self.inputs == "dataset":
            if self._data is None:
                raise ConfigError("evaluator.options.inputs: 'dataset' needs a data: section")
            x_all, y_all = self._data
            name = "the experiment's train split"
        else:
            from nasforge.data import load_dataset

            ds = load_dataset(self.inputs, seed=self.seed)
            x_all, y_all = ds.x_train, ds.y_train
            name = f"{self.inputs} train split"
        if len(x_all) < n:
            raise ConfigError(
                f"evaluator.options.batch_size: {n} is more than the {len(x_all)} samples of {name}"
            )
        idx = torch.randperm(len(x_all), generator=gen)[:n]
        x = _adapt(x_all[idx], shape)
        y = y_all[idx].long() % self.num_classes
        self.input_description = (
            f"{name}: {n} samples of shape {tuple(x_all.shape[1:])} resized to {shape}, "
            f"standardised (seed {self.seed})"
        )
        return x, y

    def _build(self, arch: Arch) -> nn.Module:
        torch.manual_seed(self.seed)
        model = self.space.build(arch)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"space {self.space.name!r}: build() must return an nn.Module")
        return model

    def score(self, arch: Arch) -> tuple[dict[str, float], float]:
        """The proxies of ``arch`` and the CPU seconds (this process) they took (for an arch
        whose key was scored before: the cached values and the seconds they took then)."""
        hit = self.cache.get(arch.key)
        if hit is not None:
            return dict(hit[0]), hit[1]
        values, cpu = self._compute(arch)
        self.cache[arch.key] = (dict(values), cpu)
        return values, cpu

    def _compute(self, arch: Arch) -> tuple[dict[str, float], float]:
        t0 = time.process_time()
        model = self._build(arch)
        out: dict[str, float] = {}
        batch = self._batch
        wanted = set(self.proxies)
        if "params" in wanted:
            out["params"] = measures.params(model)
        if "flops" in wanted:
            out["flops"] = measures.flops(model, self.input_shape)
        if batch is not None:
            x, y = batch
            grads = [p for p in self.proxies if p in measures.GRADIENT]
            if grads:
                out.update(measures.gradient_measures(model, x, y, grads))
            if "naswot" in wanted:
                out["naswot"] = measures.naswot(model, x)
            if "jacob_cov" in wanted:
                out["jacob_cov"] = measures.jacob_cov(model, x)
        if "synflow" in wanted:
            # after the others: synflow makes the weights absolute and double
            # a fresh build: the passes above moved BN running statistics (train mode)
            target = model if len(wanted) == 1 else self._build(arch)
            out["synflow"] = measures.synflow(target, self.input_shape)
        return {p: out[p] for p in self.proxies}, time.process_time() - t0

    def score_many(self, archs: Sequence[Arch]) -> list[dict[str, float]]:
        """:meth:`score` of each arch (proxies only)."""
        return [self.score(a)[0] for a in archs]


class ProxyEvaluator(Evaluator):
    """``evaluator.kind: proxy``: scores a candidate by zero-cost proxies instead of training.

    Metrics: each chosen proxy under its own name, ``proxy_score`` (the proxy named by
    ``score``, what an objective usually maximises) and ``proxy_cpu_s``. ``info`` says which
    inputs the data-dependent proxies used. ``cost_seconds`` is the scoring's CPU time.
    """

    def __init__(self, scorer: ProxyScorer, score: str | None = None) -> None:
        score = score or scorer.proxies[0]
        if score not in scorer.proxies:
            raise ConfigError(
                f"evaluator.options.score: {score!r} is not among the proxies "
                f"{', '.join(scorer.proxies)}"
            )
        self.scorer = scorer
        self.score_name = score

    def produces(self) -> frozenset[str]:
        return frozenset({*self.scorer.proxies, "proxy_score", "proxy_cpu_s"})

    def evaluate(
        self, arch: Arch, budget: float | Fidelity | None = None, reporter: Reporter | None = None
    ) -> Result:
        values, cpu = self.scorer.score(arch)
        metrics = {**values, "proxy_score": values[self.score_name], "proxy_cpu_s": cpu}
        info = {"inputs": self.scorer.input_description, "seed": self.scorer.seed}
        return Result(metrics=metrics, cost_seconds=cpu, info=info)


def proxy_evaluator(
    context: EvaluatorContext,
    proxies: Sequence[str] | str = measures.PROXIES,
    batch_size: int = 64,
    inputs: str | None = None,
    score: str | None = None,
    seed: int | None = None,
) -> ProxyEvaluator:
    """Factory of ``evaluator.kind: proxy`` (options: ``proxies``, ``batch_size``,
    ``inputs``, ``score``, ``seed``; inputs default to ``"dataset"`` (the experiment's
    train split) when it has one, else ``"random"``; the seed defaults to the experiment's)."""
    if inputs is None:
        inputs = "dataset" if context.dataset is not None else "random"
    data = None
    if inputs == "dataset":
        if context.dataset is None:
            raise ConfigError("evaluator.options.inputs: 'dataset' needs a data: section")
        data = (context.dataset.x_train, context.dataset.y_train)
    scorer = ProxyScorer(
        context.space,
        [proxies] if isinstance(proxies, str) else list(proxies),
        batch_size,
        inputs,
        context.seed if seed is None else int(seed),
        data,
    )
    return ProxyEvaluator(scorer, score)


__all__ = ["INPUT_SOURCES", "ProxyEvaluator", "ProxyScorer", "proxy_evaluator"]
