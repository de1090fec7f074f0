"""Pruning stages: ``prune_channels``, ``prune_unstructured`` and ``imp``.

Each changes ``state.model`` in place, marks the state ``pruned`` and returns the accuracy
before fine-tuning as the row ``pruned (no fine-tune)``; the unstructured ones leave their
masks in ``state.masks`` so that later training keeps the pruned weights at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nasforge.compression.config import ChannelPruneConfig, IMPConfig, UnstructuredPruneConfig
from nasforge.compression.pruning import (
    ChannelPruner,
    ChannelPruningConfig,
    IMPRound,
    PruningPlan,
    apply_plan,
    build_latency_table,
    iterative_magnitude_pruning,
    latency_aware_plan,
    magnitude_masks,
    make_importance,
    recalibrate_bn,
)
from nasforge.compression.results import StageOutput
from nasforge.compression.stages.base import PipelineState, Stage, register_stage
from nasforge.hardware.backends import BackendSpec
from nasforge.train import TrainConfig

AGGRESSIVE_RATIO = 0.3
"""Pruning beyond this fraction without fine-tuning triggers the brief's anti-pattern warning."""
ROW = "pruned (no fine-tune)"


def _unfinetuned_warning(
    ratio: float, later: Sequence[Stage[Any]], recipe: TrainConfig
) -> list[str]:
    if ratio > AGGRESSIVE_RATIO and not any(s.trains(recipe) for s in later):
        return [
            f"pruned {ratio:.0%} without fine-tuning (finetune.epochs=0): "
            "expect an accuracy cliff; compression beyond a moderate ratio needs "
            "fine-tuning"
        ]
    return []


@dataclass(frozen=True)
class ChannelPruneResult(StageOutput):
    """Estimated MACs before/after, channels removed, and the saved plan's file name."""

    macs_before: int = 0
    macs_after: int = 0
    channels_removed: int = 0
    plan_notes: tuple[str, ...] = ()
    plan_file: str = "pruning_plan.json"

    def details(self) -> dict[str, object]:
        return {
            "pruning": {
                "macs_before": self.macs_before,
                "macs_after": self.macs_after,
                "channels_removed": self.channels_removed,
                "notes": list(self.plan_notes),
            }
        }


class ChannelPruneStage(Stage[ChannelPruneConfig]):
    """Structured channel pruning (optionally to a measured latency target), then BN
    statistics re-estimated on training batches."""

    config_cls = ChannelPruneConfig
    section = "prune"

    def check(self, later: Sequence[Stage[Any]], recipe: TrainConfig) -> list[str]:
        return _unfinetuned_warning(self.config.ratio, later, recipe)

    def run(self, state: PipelineState) -> StageOutput:
        p, ds, model = self.config, state.dataset, state.model
        batches = [(ds.x_train[i : i + 64], ds.y_train[i : i + 64]) for i in range(0, 256, 64)]
        imp = make_importance(p.importance, model, batches, state.seed)
        pc = ChannelPruningConfig(
            p.ratio, p.target, p.scope, p.round_to, p.min_keep, tuple(p.ignore)
        )
        if p.latency_target_ms is not None:
            plan = self._latency_plan(state, imp, pc, p.latency_target_ms)
        else:
            plan = ChannelPruner(imp, pc).plan(model, state.input_shape)
        plan.save(state.out_dir / "pruning_plan.json")
        state.say(
            f"channel pruning: {plan.channels_removed} channels, "
            f"est. {plan.macs_reduction:.0%} MACs removed"
        )
        apply_plan(model, plan)
        # Stale BN statistics would make the before-fine-tune accuracy meaningless.
        recalibrate_bn(model, state.train_batches(1024))
        state.pruned = True
        model.eval()
        return ChannelPruneResult(
            self.name,
            ROW,
            state.accuracy(model),
            notes=("before fine-tuning",),
            macs_before=plan.macs_before,
            macs_after=plan.macs_after,
            channels_removed=plan.channels_removed,
            plan_notes=plan.notes,
        )

    def _latency_plan(
        self, state: PipelineState, imp: Any, pc: ChannelPruningConfig, target_ms: float
    ) -> PruningPlan:
        p, model, shape = self.config, state.model, state.input_shape
        state.say(f"measuring a channel latency table for a {target_ms} ms target")
        # every variant timed by hardware's harness on the target, interleaved
        table = build_latency_table(
            model,
            shape,
            BackendSpec("onnxruntime", threads=state.target.threads),
            imp,
            round_to=p.round_to,
            min_keep=p.min_keep,
        )
        (state.out_dir / "latency_table.json").write_text(table.to_json())
        return latency_aware_plan(model, shape, imp, table, target_ms, pc)


@dataclass(frozen=True)
class SparsityResult(StageOutput):
    """Fraction of conv/linear weights masked."""

    sparsity: float = 0.0

    def details(self) -> dict[str, object]:
        return {"pruning": {"sparsity": self.sparsity}}


class UnstructuredPruneStage(Stage[UnstructuredPruneConfig]):
    """One-shot magnitude masks; the masks stay in ``state.masks`` for later training."""

    config_cls = UnstructuredPruneConfig
    section = "prune"

    def check(self, later: Sequence[Stage[Any]], recipe: TrainConfig) -> list[str]:
        return _unfinetuned_warning(self.config.ratio, later, recipe)

    def run(self, state: PipelineState) -> StageOutput:
        p = self.config
        masks = magnitude_masks(state.model, p.ratio, p.scope, exclude=p.ignore)
        masks.apply(state.model)
        state.masks, state.pruned = masks, True
        state.say(f"unstructured magnitude pruning to {masks.sparsity:.1%} sparsity")
        state.model.eval()
        return SparsityResult(
            self.name,
            ROW,
            state.accuracy(state.model),
            notes=("before fine-tuning",),
            sparsity=masks.sparsity,
        )


@dataclass(frozen=True)
class IMPStageResult(SparsityResult):
    """Sparsity plus the sparsity/validation-accuracy curve, one point per round."""

    curve: tuple[IMPRound, ...] = ()

    def details(self) -> dict[str, object]:
        return {"imp_curve": [asdict(r) for r in self.curve], **super().details()}


class IMPStage(Stage[IMPConfig]):
    """Iterative magnitude pruning with rewinding: ``imp_rounds`` rounds that each prune
    the same fraction of the survivors, reaching ``ratio`` overall. Trains with the run's
    recipe (at least one epoch per round) and the label smoothing of first training, as
    it retrains from rewound weights rather than fine-tuning a trained net."""

    config_cls = IMPConfig
    section = "prune"

    def check(self, later: Sequence[Stage[Any]], recipe: TrainConfig) -> list[str]:
        return _unfinetuned_warning(self.config.ratio, later, recipe)

    def trains(self, recipe: TrainConfig) -> bool:
        return True

    def run(self, state: PipelineState) -> StageOutput:
        p, ds = self.config, state.dataset
        rate = 1.0 - (1.0 - p.ratio) ** (1.0 / p.imp_rounds)
        state.say(f"iterative magnitude pruning: {p.imp_rounds} rounds of {rate:.1%}")
        train = state.recipe(epochs=max(state.train.epochs, 1), label_smoothing=0.1)
        model, masks, res = iterative_magnitude_pruning(
            state.model,
            ds.x_train,
            ds.y_train,
            ds.x_val,
            ds.y_val,
            train,
            p.imp_rounds,
            rate,
            p.imp_rewind_step,
            progress=lambda r: state.say(
                f"  IMP round {r.round}: sparsity {r.sparsity:.1%}, val acc {r.val_acc:.4f}"
            ),
        )
        state.model, state.masks, state.pruned = model.eval(), masks, True
        return IMPStageResult(
            self.name,
            ROW,
            state.accuracy(model),
            notes=("before fine-tuning",),
            sparsity=masks.sparsity,
            curve=res.rounds,
        )


register_stage("prune_channels", ChannelPruneStage)
register_stage("prune_unstructured", UnstructuredPruneStage)
register_stage("imp", IMPStage)
