"""Training stages: ``finetune`` (cross-entropy) and ``distill`` (from the teacher).

Both train ``state.model`` in place with the run's recipe (``state.train``), keep
``state.masks`` applied after every step, then export the float model to ONNX: it is the
``pruned+finetuned`` row, timed on the target against every other artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from nasforge.compression.pruning import sparse_size_bytes
from nasforge.compression.quantization import export_onnx
from nasforge.compression.quantization.runtime import file_size
from nasforge.compression.results import StageOutput
from nasforge.compression.stages.base import PipelineState, Stage, register_stage
from nasforge.train import LossFn, TrainConfig, train_model


class TrainStageConfig(BaseModel):
    """``epochs``: None takes the run's recipe (``finetune.epochs``); 0 only exports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int | None = Field(None, ge=0)


@dataclass(frozen=True)
class FinetuneResult(StageOutput):
    """Epochs trained and whether the loss distilled from the teacher."""

    epochs: int = 0
    distilled: bool = False


class FinetuneStage(Stage[TrainStageConfig]):
    """Fine-tune the float model with cross-entropy (no label smoothing)."""

    config_cls = TrainStageConfig
    distils = False

    def _epochs(self, recipe: TrainConfig) -> int:
        return recipe.epochs if self.config.epochs is None else self.config.epochs

    def trains(self, recipe: TrainConfig) -> bool:
        return self._epochs(recipe) > 0

    def loss(self, state: PipelineState) -> LossFn | None:
        """The training loss (None: cross-entropy)."""
        return None

    def run(self, state: PipelineState) -> StageOutput:
        model, ds = state.model, state.dataset
        epochs = self._epochs(state.train)
        if epochs > 0:
            how = " with distillation" if self.distils else ""
            state.say(f"fine-tuning {epochs} epoch(s){how}")
            train_model(
                model,
                ds.x_train,
                ds.y_train,
                state.recipe(epochs=epochs),
                loss_fn=self.loss(state),
                step_hook=state.masks.hook if state.masks is not None else None,
            )
            model.eval()
        stem = "pruned" if state.pruned else "finetuned"
        path = export_onnx(model, state.out_dir / f"model.{stem}.onnx", state.input_shape)
        notes: tuple[str, ...] = ()
        if state.masks is not None:
            size = sparse_size_bytes(model)
            notes = (
                "unstructured sparsity: size is the sparse encoding; dense kernels do not run "
                "faster",
            )
        else:
            size = file_size(path)
        row = ("pruned" if state.pruned else "float") + ("+finetuned" if epochs else "")
        return FinetuneResult(
            self.name,
            row,
            state.accuracy(model),
            size,
            path.name,
            notes,
            epochs=epochs,
            distilled=self.distils and epochs > 0,
        )


class DistillStage(FinetuneStage):
    """Fine-tune the float model on the teacher's logits (Hinton distillation with the
    run's ``distill`` temperature and alpha)."""

    distils = True

    def loss(self, state: PipelineState) -> LossFn | None:
        return state.distillation_loss()


register_stage("finetune", FinetuneStage)
register_stage("distill", DistillStage)
