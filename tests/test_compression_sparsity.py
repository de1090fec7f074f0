"""Unstructured magnitude pruning, schedules, IMP with rewinding, and distillation losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasforge.compression import DistillationLoss, FeatureDistiller
from nasforge.compression.pruning import (
    GradualMagnitudePruner,
    SparsitySchedule,
    imp_sparsity,
    iterative_magnitude_pruning,
    magnitude_masks,
    weight_sparsity,
)
from nasforge.train import TrainConfig, train_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    return x, (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.3, 0.77])
def test_masks_prune_exactly_and_survive_training(scope: str, sparsity: float) -> None:
    model = _net()
    masks = magnitude_masks(model, sparsity, scope)
    n = sum(m.numel() for m in masks.masks.values())
    if scope == "global":
        assert n - sum(int(m.sum()) for m in masks.masks.values()) == round(sparsity * n)
    else:
        for m in masks.masks.values():
            assert (~m).sum() == round(sparsity * m.numel())
    masks.apply(model)
    x, y = _data()
    train_model(model, x, y, TrainConfig(epochs=2, batch_size=16), step_hook=masks.hook)
    for name, m in masks.masks.items():
        assert torch.all(model.get_submodule(name).weight[~m] == 0)  # momentum did not revive them
    assert weight_sparsity(model) >= masks.sparsity - 1e-9


def test_schedules() -> None:
    cubic = SparsitySchedule(0.8, "cubic", 0, 100)
    lin = SparsitySchedule(0.8, "linear", 10, 110)
    assert cubic.at(0) == 0 and cubic.at(100) == pytest.approx(0.8) and cubic.at(50) > 0.4
    assert lin.at(5) == 0 and lin.at(60) == pytest.approx(0.4)
    pruner = GradualMagnitudePruner(SparsitySchedule(0.6, "linear", 0, 12, frequency=3))
    x, y = _data()
    model = _net()
    train_model(model, x, y, TrainConfig(epochs=3, batch_size=16), step_hook=pruner)
    assert pruner.masks is not None and pruner.masks.sparsity == pytest.approx(0.6, abs=0.01)


def test_imp_rounds_leave_exactly_the_asked_sparsity() -> None:
    x, y = _data()
    model, _, res = iterative_magnitude_pruning(
        _net(), x, y, x, y, TrainConfig(epochs=1, batch_size=16), rounds=3, rate=0.3, rewind_step=2
    )
    assert [r.round for r in res.rounds] == [0, 1, 2, 3]
    for r in res.rounds:
        assert r.pruned_weights == round(imp_sparsity(0.3, r.round) * r.total_weights)
    assert weight_sparsity(model) >= res.rounds[-1].sparsity - 1e-9
    assert res.to_dict()["rewind_step"] == 2


def test_memoized_distillation_equals_plain_and_runs_the_teacher_once_per_sample() -> None:
    x, y = _data(32)
    teacher = _net().eval()
    calls: list[int] = []
    teacher.register_forward_hook(lambda m, a, out: calls.append(len(a[0])))
    student = _net()
    with torch.no_grad():
        student[0].weight.add_(0.1)
    plain = DistillationLoss(teacher, temperature=3.0, alpha=0.5)
    memo = DistillationLoss(teacher, temperature=3.0, alpha=0.5, memoize=True)
    s = student(x)
    for idx, new_rows in (
        (torch.arange(16), 16),
        (torch.arange(8, 24), 8),
        (torch.arange(32), 8),
        (torch.arange(32), 0),
    ):
        calls.clear()
        got = memo(s[idx], y[idx], x[idx])
        assert sum(calls) == new_rows  # the teacher sees only samples it has not seen
        assert torch.allclose(got, plain(s[idx], y[idx], x[idx]), atol=1e-6)


def test_distillation_losses() -> None:
    x, y = _data(32)
    teacher = _net().eval()
    kd = DistillationLoss(teacher, temperature=3.0, alpha=1.0)
    with torch.no_grad():
        assert kd(teacher(x), y, x).abs() < 1e-5  # student == teacher: no distillation loss
    ce = DistillationLoss(teacher, alpha=0.0)
    logits = torch.randn(32, 3)
    assert torch.allclose(ce(logits, y, x), nn.functional.cross_entropy(logits, y))
    student = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    fd = FeatureDistiller(student, _net().eval(), [("2", "2")], (1, 8, 8), beta=1.0)
    before = fd.projections[0].weight.detach().clone()
    train_model(fd, x, y, TrainConfig(epochs=1, batch_size=16), loss_fn=fd.loss)
    assert not torch.equal(before, fd.projections[0].weight)  # the projection is learned
