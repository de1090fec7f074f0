"""The training recipe (train: section): schedules (cosine, step, one-cycle, constant) with
linear warm-up, the older ``cosine:`` switch, augmentation in the loop; an old config trains
bit for bit as before issue 15 (against a hard copy of the loop as it was)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from nasforge.data import load_dataset
from nasforge.errors import ConfigError
from nasforge.experiment.config import parse_config
from nasforge.train import TrainConfig, TrainSection, make_scheduler, train_model


def _lrs(cfg: TrainConfig, steps_per_epoch: int = 10) -> list[float]:
    """The learning rate of every batch of a run of ``cfg``."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _old_cosine(step: int, total: int) -> float:
    """The factor of the loop before issue 15 (hard copy)."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def test_default_schedule_is_the_old_cosine_exactly() -> None:
    cfg = TrainConfig(epochs=3, lr=0.05)
    expected = [0.05 * _old_cosine(s, 30) for s in range(30)]
    assert _lrs(cfg) == expected  # bit for bit, not approximately
    assert _lrs(TrainConfig(epochs=3, schedule="constant")) == [0.05] * 30


def test_warmup_rises_linearly_then_the_schedule_runs_over_the_rest() -> None:
    cfg = TrainConfig(epochs=4, lr=0.1, warmup_epochs=1)
    lrs = _lrs(cfg)
    warm = lrs[:10]
    assert warm == pytest.approx([0.1 * (s + 1) / 11 for s in range(10)])
    steps = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert all(d == pytest.approx(0.1 / 11) for d in steps)
    assert lrs[10] == pytest.approx(0.1)  # cosine starts at its peak after the warm-up
    assert lrs[10:] == pytest.approx([0.1 * _old_cosine(t, 30) for t in range(30)])
    flat = _lrs(TrainConfig(epochs=2, lr=0.1, warmup_epochs=0.5, schedule="constant"))
    assert flat[:5] == pytest.approx([0.1 * (s + 1) / 6 for s in range(5)])
    assert flat[5:] == [0.1] * 15
    # a warm-up longer than the run is cut at the run's end, still rising
    long = _lrs(TrainConfig(epochs=1, lr=0.1, warmup_epochs=3))
    assert long == sorted(long) and long[-1] < 0.1


def test_step_drops_by_gamma_every_period() -> None:
    lrs = _lrs(TrainConfig(epochs=6, lr=0.2, schedule="step", step_every_epochs=2, step_gamma=0.5))
    assert lrs[:20] == [0.2] * 20
    assert lrs[20:40] == pytest.approx([0.1] * 20)
    assert lrs[40:] == pytest.approx([0.05] * 20)
    # default period: a third of the epochs -> two drops
    default = _lrs(TrainConfig(epochs=3, lr=0.2, schedule="step"))
    assert sorted(set(round(v, 12) for v in default)) == pytest.approx([0.002, 0.02, 0.2])


def test_onecycle_rises_to_lr_then_falls() -> None:
    lrs = _lrs(TrainConfig(epochs=5, lr=0.4, schedule="onecycle"))
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(0.4)
    assert 10 <= peak <= 20  # torch's default rising phase: 30% of 50 batches
    assert lrs[0] == pytest.approx(0.4 / 25)  # OneCycleLR's div_factor
    assert lrs[-1] < lrs[0] / 100
    assert all(b > a for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))
    assert all(b < a for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))
    warm = _lrs(TrainConfig(epochs=5, lr=0.4, schedule="onecycle", warmup_epochs=2))
    assert max(range(len(warm)), key=warm.__getitem__) == 19  # the rise = the warm-up


@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle", "constant"])
@pytest.mark.parametrize("epochs,warmup", [(0, 0), (1, 0), (1, 1), (2, 5)])
def test_short_runs_build_every_schedule(schedule, epochs, warmup) -> None:
    for steps_per_epoch in (1, 2, 3):
        cfg = TrainConfig(epochs=epochs, schedule=schedule, warmup_epochs=warmup)
        lrs = _lrs(cfg, steps_per_epoch)
        assert all(math.isfinite(v) and v > 0 for v in lrs)


def test_the_older_cosine_switch_folds_into_schedule() -> None:
    assert TrainSection(cosine=False).schedule == "constant"
    assert TrainSection(cosine=True).schedule == "cosine"
    assert TrainSection(cosine=False, schedule="constant").schedule == "constant"
    section = TrainSection(cosine=False)
    assert TrainSection(**section.model_dump()) == section  # a dumped config reads back
    assert "cosine" not in section.model_dump() and section.cosine is None
    assert TrainConfig.from_section(section, seed=1).schedule == "constant"
    with pytest.raises(ValidationError, match="cosine: false contradicts schedule: step"):
        TrainSection(cosine=False, schedule="step")
    with pytest.raises(ValidationError, match="cosine: true contradicts schedule: onecycle"):
        TrainSection(cosine=True, schedule="onecycle")


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"train": {"cosine": False, "schedule": "step"}})
    assert "train" in str(err.value) and "keep only schedule" in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    for bad, field in [
        ({"schedule": "linear"}, "train.schedule"),
        ({"warmup_epochs": -1}, "train.warmup_epochs"),
        ({"augment": "autoaugment"}, "train.augment"),
        ({"augment_m": 31}, "train.augment_m"),
        ({"step_gamma": 0}, "train.step_gamma"),
        ({"step_every_epochs": 0}, "train.step_every_epochs"),
    ]:
        with pytest.raises(ConfigError, match=field):
            parse_config({"train": bad})


# -- the loop ---------------------------------------------------------------------------------


def _old_train_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> None:
    """Hard copy of train_model's loop before issue 15 (its schedule and augmentation)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        nesterov=True,
    )  # fmt: skip
    steps_per_epoch = max(1, math.ceil(len(x) / cfg.batch_size))
    total = max(1, cfg.epochs * steps_per_epoch)
    cosine = cfg.schedule == "cosine"
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)) if cosine else 1.0
    )
    ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    for _epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue
            xb = x[idx]
            if cfg.augment == "shift":
                dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
                dims = (-1,) if xb.dim() == 3 else (-2, -1)
                shifts = (dx,) if xb.dim() == 3 else (dy, dx)
                xb = torch.roll(xb, shifts=shifts, dims=dims)
            loss = ce(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def _net(shape: tuple[int, ...]) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d if len(shape) == 3 else nn.Conv1d
    bn = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
    flat = 8 * math.prod(shape[1:])
    return nn.Sequential(
        conv(shape[0], 8, 3, padding=1), bn(8), nn.ReLU(), nn.Flatten(), nn.Linear(flat, 10)
    )


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds.x_train[:300], ds.y_train[:300], ds.x_val, ds.y_val


@pytest.mark.parametrize(
    "train", [{}, {"cosine": False}, {"augment": "shift"}, {"augment": "shift", "cosine": True}]
)
def test_an_old_config_trains_bit_for_bit_as_before(digits, train) -> None:
    x, y, _, _ = digits
    cfg = TrainConfig.from_section(TrainSection(**train, epochs=2, batch_size=32), seed=4)
    new, old = _net(x.shape[1:]), _net(x.shape[1:])
    train_model(new, x, y, cfg)
    _old_train_model(old, x, y, cfg)
    for (name, a), b in zip(new.state_dict().items(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("augment", ["randaugment", "trivialaugment"])
def test_augmented_training_repeats_with_its_seed(digits, augment) -> None:
    x, y, x_val, y_val = digits
    cfg = TrainConfig(epochs=1, batch_size=32, augment=augment, augment_m=12, seed=2)
    runs = []
    for seed in (2, 2, 3):
        model = _net(x.shape[1:])
        hist = train_model(model, x, y, cfg.model_copy(update={"seed": seed}), x_val, y_val)
        assert all(math.isfinite(v) for v in hist.losses)
        runs.append(torch.cat([p.flatten() for p in model.state_dict().values()]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    plain = _net(x.shape[1:])
    train_model(plain, x, y, cfg.model_copy(update={"augment": "none"}))
    assert not torch.equal(runs[0], torch.cat([p.flatten() for p in plain.state_dict().values()]))


@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle"])
def test_every_schedule_trains_a_model_that_learns(digits, schedule) -> None:
    x, y, x_val, y_val = digits
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, schedule=schedule, warmup_epochs=0.5)
    hist = train_model(_net(x.shape[1:]), x, y, cfg, x_val, y_val)
    assert hist.val_acc[-1] > 0.6  # 10 classes: chance is 0.1


def test_one_dimensional_data_trains_with_randaugment() -> None:
    ds = load_dataset("mnist1d", samples=400)
    cfg = TrainConfig(epochs=1, batch_size=32, augment="randaugment", augment_n=3)
    hist = train_model(_net(ds.input_shape), ds.x_train, ds.y_train, cfg, ds.x_val, ds.y_val)
    assert len(hist.val_acc) == 1 and math.isfinite(hist.losses[0])
