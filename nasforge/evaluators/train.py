"""`TrainEvaluator`: train a candidate, score it on the validation split, measure its cost."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
    StopTrial,
)
from nasforge.evaluators.rung_checkpoint import (
    BUDGET_STARTED_FROM,
    RungCheckpoints,
    RungPolicy,
    RungStart,
    fingerprint,
)
from nasforge.hardware import count_flops, count_params, model_size_bytes
from nasforge.hardware.model import LatencyModel
from nasforge.hardware.noise import Stability
from nasforge.space import Arch, SearchSpace
from nasforge.space.joint import split_arch
from nasforge.train import LoopState, TrainConfig, TrainSpan, evaluate_accuracy, train_model


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
            reporter: called after each epoch with ``loss`` and ``val_acc``.

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
        rung = self._rung(arch, cfg, budget, fidelity, len(y))
        start = self._continue(rung, arch, epochs, model) if rung is not None else None
        span = None
        if rung is not None:
            span = TrainSpan(rung.schedule_epochs, None if start is None else start.state)
        curve, stopped, state = train_span(model, x, y, cfg, (d.x_val, d.y_val), reporter, span)
        started = start.epoch if start is not None else 0
        # the model's whole curve from epoch 1: the checkpoint's epochs, then this trial's
        whole = [*start.curve, *curve] if start is not None and start.curve else curve
        if rung is not None and rung.store is not None and state is not None and not stopped:
            # the top rung keeps nothing: no rung continues from it
            keep = epochs < rung.schedule_epochs
            rung.store.save(arch.key, model, state, rung.fingerprint, keep=keep, curve=whole)
        # the last epoch's validation accuracy is this model's (same weights, eval mode)
        full = not stopped and epochs > started and len(curve) == epochs - started
        metrics["val_acc"] = curve[-1] if full else evaluate_accuracy(model, d.x_val, d.y_val)
        metrics["train_seconds"] = time.perf_counter() - t0
        info: dict[str, object] = {
            "epochs": epochs,
            "data_fraction": fidelity.data_fraction,
            "train_samples": len(y),
            "stopped_early": stopped,
            "curve": whole,
        }
        if rung is not None:
            metrics[BUDGET_STARTED_FROM] = float(started)
            info["epochs_trained"] = [started, started + len(curve)]
            info["schedule_epochs"] = rung.schedule_epochs
            if start is not None:
                info["continued_from"] = str(start.path)
        if recipe:
            info["recipe"] = dict(recipe)
        if stability is not None:
            info[STABILITY_INFO] = stability.to_dict()
        return Result(metrics, cost_seconds=time.perf_counter() - t0, info=info)

    def _rung(
        self,
        arch: Arch,
        cfg: TrainConfig,
        budget: Fidelity | float | None,
        fidelity: Fidelity,
        samples: int,
    ) -> _Rung | None:
        """How this trial trains as a rung: ``None`` for a plain budget or no policy (as
        before); a rung on the top budget's schedule, with a checkpoint store when there is a
        run directory and continuing is on."""
        policy = self.rungs
        if policy is None or not isinstance(budget, Fidelity):
            return None
        if not policy.enabled or cfg.epochs > policy.max_epochs:
            return _Rung(cfg.epochs, None, "")  # its own schedule, from scratch
        fp = fingerprint(arch, cfg, policy.max_epochs, fidelity.data_fraction, samples)
        return _Rung(policy.max_epochs, self.checkpoints, fp)

    def _continue(
        self, rung: _Rung, arch: Arch, epochs: int, model: torch.nn.Module
    ) -> RungStart | None:
        """Load the newest usable checkpoint of ``arch`` at ``epochs`` or fewer into
        ``model`` (its fresh, seeded build); ``None``: train from scratch."""
        if rung.store is None:
            return None
        start = rung.store.find(arch.key, epochs, rung.fingerprint)
        if start is None:
            return None
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            model.load_state_dict(start.model)
        except RuntimeError as exc:  # the space builds it otherwise now: scratch, said once
            model.load_state_dict(fresh)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            rung.store.note(f"{start.path}: does not fit the model ({first}); not continued")
            return None
        return start

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


@dataclass(frozen=True)
class _Rung:
    """A multi-fidelity trial's training: the schedule's length, where its checkpoints go
    (``None``: none) and the fingerprint a checkpoint must match."""

    schedule_epochs: int
    store: RungCheckpoints | None
    fingerprint: str


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


def train_span(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    val: tuple[torch.Tensor, torch.Tensor],
    reporter: Reporter | None = None,
    span: TrainSpan | None = None,
) -> tuple[list[float], bool, LoopState | None]:
    """:func:`train_with_curve` for a part of a longer run (:class:`TrainSpan`): also where
    the run stopped (``None`` without a span, or when the reporter stopped it)."""
    curve: list[float] = []

    def report(epoch: int, values: dict[str, float]) -> None:
        curve.append(float(values.get("val_acc", float("nan"))))
        if reporter is not None:
            reporter(epoch, values)

    try:
        hist = train_model(model, x, y, cfg, val[0], val[1], reporter=report, span=span)
    except StopTrial:
        return curve, True, None
    return curve, False, hist.state


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
