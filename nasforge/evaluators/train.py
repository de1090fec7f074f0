"""`TrainEvaluator`: train a candidate, score it on the validation split, measure its cost."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasforge.data import Dataset
from nasforge.errors import ConfigError
from nasforge.evaluators.base import (
    STABILITY_INFO,
    UNSTABLE_METRIC,
    Evaluator,
    Fidelity,
    Reporter,
    Result,
)
from nasforge.evaluators.rung_checkpoint import RungCheckpoints, RungPolicy
from nasforge.evaluators.rung_train import plan_rung, train_rung, train_span
from nasforge.hardware import count_flops, count_params, model_size_bytes
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.noise import Stability
from nasforge.space import Arch, SearchSpace
from nasforge.space.joint import split_arch
from nasforge.train import TrainConfig, evaluate_accuracy


@contextlib.contextmanager
def file_lock(path: str | Path | None) -> Iterator[None]:
    """An exclusive lock across processes (so only one worker measures latency at a time)."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class TrainEvaluator(Evaluator):
    """Train for ``train.epochs`` (or the budget's epochs, on the budget's fraction of the
    training split), report ``val_acc`` and costs.

    A joint arch (:mod:`nasforge.space.joint`) trains its inner network with its recipe
    (``recipe/...`` labels over ``train``); ``compress/...`` labels are refused (the
    ``compressed`` evaluator compresses). :attr:`Result.info` holds the per-epoch validation
    curve (``curve``, from epoch 1: a continued rung's starts with its checkpoint's epochs),
    the epochs and data fraction trained with, and the recipe overrides.

    Metrics: ``val_acc`` (validation, in [0, 1]), ``latency_ms`` (measured on the target
    backend with the BN-folded model, or predicted from a latency table; absent when
    ``latency`` is ``None``), ``params``, ``flops``, ``size_bytes``, ``train_seconds``, and
    ``mflops`` (millions of FLOPs) when ``latency`` is ``None``. Never touches the test split.

    A measured ``latency_ms`` comes with the harness's noise verdict: the metric
    ``latency_unstable`` (``1.0`` when the host was too busy to trust the figure even after
    the harness re-measured, else ``0.0``; absent when latency is predicted or not measured)
    and, in :attr:`Result.info`, ``latency_stability`` (:meth:`Stability.to_dict`, with the
    reasons).

    A multi-fidelity trial (a :class:`Fidelity` budget) with a :class:`RungPolicy` and a run
    directory continues its configuration's lower rung (:mod:`~nasforge.evaluators.
    rung_checkpoint`): every rung trains on the schedule of ``rungs.max_epochs``, starts from
    the newest checkpoint of the same configuration at fewer epochs (same recipe and data
    fraction) and trains the difference; the metric ``budget_started_from`` says the epoch it
    started from (0: scratch), ``info["epochs_trained"]`` the epochs it trained, and the cost
    is the increment. A budget above ``rungs.max_epochs``, a plain budget (a number) or
    ``rungs.enabled: false`` trains from scratch on the budget's own schedule, as before.

    Args:
        space: builds the candidate.
        dataset: train and validation splits are used.
        train: the training recipe.
        latency: measures or predicts latency; ``None`` reports ``mflops`` as the cost
            instead (a proxy that ``nasforge doctor`` warns about), and no ``latency_ms``.
        lock_path: a file lock held while measuring, so parallel workers time one at a time.
        rungs: how multi-fidelity rungs train (``None``: each from scratch, as before).
        run_dir: where rung checkpoints go (``run_dir/rungs``); ``None``: nowhere (scratch).
    """

    def __init__(
        self,
        space: SearchSpace,
        dataset: Dataset,
        train: TrainConfig,
        latency: LatencyModel | None,
        lock_path: str | Path | None = None,
        rungs: RungPolicy | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.space = space
        self.dataset = dataset
        self.train = train
        self.latency = latency
        self.lock_path = lock_path
        self.rungs = rungs
        self.checkpoints = RungCheckpoints(run_dir) if run_dir is not None else None
        self._subsets: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def produces(self) -> frozenset[str]:
        """``val_acc``, ``params``, ``flops``, ``size_bytes``, ``train_seconds`` and either
        ``latency_ms`` (a latency model is given; with ``latency_unstable`` when it measures)
        or ``mflops`` (``latency.mode: flops``)."""
        cost: tuple[str, ...] = ("mflops",) if self.latency is None else ("latency_ms",)
        if self.latency is not None and self.latency.predictor is None:
            cost += (UNSTABLE_METRIC,)
        return frozenset(("val_acc", "params", "flops", "size_bytes", "train_seconds", *cost))

    def cost_metrics(self, arch: Arch, model: torch.nn.Module) -> dict[str, float]:
        """``params``, ``flops``, ``size_bytes`` and the latency metrics of ``model``."""
        return self._costs(arch, model)[0]

    def _costs(
        self, arch: Arch, model: torch.nn.Module
    ) -> tuple[dict[str, float], Stability | None]:
        """The cost metrics and, when latency was measured, its noise verdict."""
        shape = self.dataset.input_shape
        metrics: dict[str, float] = {
            "params": float(count_params(model)),
            "flops": float(count_flops(model, shape)),
            "size_bytes": float(model_size_bytes(model)),
        }
        if self.latency is None:  # latency.mode: flops (a proxy, named as one)
            metrics["mflops"] = metrics["flops"] / 1e6
        elif self.latency.predictor is not None:
            metrics["latency_ms"] = float(self.latency.predict(arch))
        else:
            with file_lock(self.lock_path):
                measured = self.latency.measure(model, shape)
            metrics["latency_ms"] = float(measured.value_ms(self.latency.statistic))
            metrics[UNSTABLE_METRIC] = 1.0 if measured.unstable else 0.0
            return metrics, measured.stability
        return metrics, None

    def evaluate(
        self,
        arch: Arch,
        budget: Fidelity | float | None = None,
        reporter: Reporter | None = None,
    ) -> Result:
        """Train ``arch`` (a joint arch: its inner network with its recipe) and score it.

        Args:
            arch: the candidate; ``recipe/...`` labels override the training recipe.
            budget: a :class:`Fidelity` (epochs, fraction of the training split) or a number
                of epochs; ``None``: the recipe's epochs on the whole split. An explicit
                budget's epochs override a searched ``recipe/epochs``.
            reporter: called after each epoch with ``loss`` and ``val_acc``; a rung that
                continues a checkpoint first hands it the checkpoint's epochs through
                :meth:`Reporter.replay` (``val_acc`` only; a stopper ignores them).

        Raises:
            ConfigError: ``arch`` has ``compress/...`` labels (the ``compressed`` evaluator's).
        """
        t0 = time.perf_counter()
        inner, recipe, compress = split_arch(self.space, arch)
        if compress:
            raise ConfigError(
                f"evaluator.kind: the train evaluator does not compress ({', '.join(compress)} "
                "searched in automl.compress); use evaluator.kind: compressed"
            )
        cfg, fidelity = trial_recipe(self.train, recipe, budget)
        epochs = cfg.epochs
        model = build_seeded(self.space, inner, cfg.seed)
        metrics, stability = self._costs(arch, model)
        d = self.dataset
        x, y = self._train_split(fidelity.data_fraction)
        rung = plan_rung(
            self.rungs, self.checkpoints, arch, cfg, budget, fidelity.data_fraction, len(y)
        )
        run = train_rung(model, x, y, cfg, (d.x_val, d.y_val), reporter, rung)
        # the last epoch's validation accuracy is this model's (same weights, eval mode)
        full = run.trained_all(epochs)
        metrics["val_acc"] = run.curve[-1] if full else evaluate_accuracy(model, d.x_val, d.y_val)
        metrics["train_seconds"] = time.perf_counter() - t0
        info: dict[str, object] = {
            "epochs": epochs,
            "data_fraction": fidelity.data_fraction,
            "train_samples": len(y),
            "stopped_early": run.stopped,
            "curve": run.whole,
        }
        run.record(metrics, info)
        if recipe:
            info["recipe"] = dict(recipe)
        if stability is not None:
            info[STABILITY_INFO] = stability.to_dict()
        return Result(metrics, cost_seconds=time.perf_counter() - t0, info=info)

    def _train_split(self, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The training split, or a seeded class-stratified ``fraction`` of it (cached)."""
        d = self.dataset
        if fraction >= 1.0:
            return d.x_train, d.y_train
        if not 0.0 < fraction:
            raise ConfigError(f"budget data_fraction: expected a value in (0, 1], got {fraction}")
        if fraction not in self._subsets:
            idx = stratified_subset(d.y_train, fraction, self.train.seed)
            self._subsets[fraction] = (d.x_train[idx], d.y_train[idx])
        return self._subsets[fraction]


def trial_recipe(
    base: TrainConfig, recipe: dict[str, Any], budget: Fidelity | float | None
) -> tuple[TrainConfig, Fidelity]:
    """The recipe one trial trains with (``base`` with the joint arch's ``recipe`` overrides;
    an explicit budget's epochs win over a searched ``recipe/epochs``) and its budget as a
    :class:`Fidelity`. Shared by every evaluator that trains candidates."""
    fidelity = (
        budget
        if isinstance(budget, Fidelity)
        else Fidelity(None if budget is None else int(budget))
    )
    cfg = _recipe_config(base, recipe)
    if fidelity.epochs is not None and fidelity.epochs != cfg.epochs:
        cfg = cfg.model_copy(update={"epochs": fidelity.epochs})
    return cfg, fidelity


def build_seeded(space: SearchSpace, inner: Arch, seed: int) -> torch.nn.Module:
    """The network of ``inner`` (a joint space builds its architecture part) with initial
    weights from ``seed``, not from whatever the process drew before: the same (arch, recipe,
    budget) is the same model in any worker, first trial or not."""
    torch.manual_seed(seed)
    return getattr(space, "inner", space).build(inner)


def train_with_curve(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    reporter: Reporter | None = None,
) -> tuple[list[float], bool]:
    """Train ``model`` in place; ``(validation accuracy per epoch, stopped early by the
    reporter)``. ``reporter`` gets every epoch's ``loss`` and ``val_acc``."""
    curve, stopped, _ = train_span(model, x, y, cfg, (x_val, y_val), reporter)
    return curve, stopped


def stratified_subset(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded, class-stratified ``fraction`` of labels ``y`` (every class
    keeps its share, at least one sample of each where possible), via scikit-learn's
    ``train_test_split``; a split it cannot stratify (a class with one sample) falls back to
    a seeded uniform subset."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    keep = max(1, round(n * fraction))
    if keep >= n:
        return torch.arange(n)
    labels = y.numpy()
    idx = np.arange(n)
    try:
        chosen, _ = train_test_split(
            idx, train_size=keep, stratify=labels, random_state=seed, shuffle=True
        )
    except ValueError:  # too few samples of a class, or fewer kept samples than classes
        chosen = np.random.default_rng(seed).permutation(n)[:keep]
    return torch.as_tensor(np.sort(chosen), dtype=torch.long)


def _recipe_config(base: TrainConfig, recipe: dict[str, Any]) -> TrainConfig:
    """``base`` with a joint arch's ``recipe`` overrides, validated as a whole."""
    if not recipe:
        return base
    from nasforge.space import joint

    merge = getattr(joint, "recipe_train_config", None)
    if merge is not None:
        return merge(base, recipe)  # type: ignore[no-any-return]
    return TrainConfig.model_validate({**base.model_dump(), **recipe})
