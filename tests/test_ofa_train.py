"""Progressive shrinking (OFA): config checks, phases as configured, in-place distillation,
channel reorganisation when ``expand`` becomes elastic, exact resume, checkpoints."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch

from nasforge.data import Dataset, load_dataset
from nasforge.errors import ConfigError
from nasforge.oneshot.ofa.elastic import ELASTIC_DIMS, elastic_dim
from nasforge.oneshot.ofa.train import (
    DEFAULT_PHASES,
    ElasticDim,
    OFAConfig,
    OFAEpochRecord,
    OFATrainer,
)
from nasforge.space import Arch
from nasforge.spaces.mobile import MobileSpace

WHERE = "ofa.train"


def tiny(n_train: int = 256, n_val: int = 128) -> Dataset:
    d = load_dataset("mnist1d")
    return Dataset(
        d.name,
        d.x_train[:n_train],
        d.y_train[:n_train],
        d.x_val[:n_val],
        d.y_val[:n_val],
        d.x_test[:8],
        d.y_test[:8],
        d.classes,
    )


@pytest.fixture(scope="module")
def data() -> Dataset:
    return tiny()


def mobile() -> MobileSpace:
    return MobileSpace(
        (1, 40),
        10,
        stages=((8, 1, 1), (16, 2, 2)),
        kernels=(3, 5),
        expands=(1, 3, 6),
        widths=(0.5, 1.0),
        stem_channels=8,
        head_features=16,
        resolutions=(0.75, 1.0),
    )


def phase(name: str, elastic: tuple[str, ...], epochs: int = 1, **kw: Any) -> dict[str, Any]:
    return {"name": name, "elastic": list(elastic), "epochs": epochs, **kw}


def config(*phases: dict[str, Any], **options: Any) -> OFAConfig:
    return OFAConfig.from_options(
        WHERE, phases=list(phases), batch_size=64, bn_batches=2, bn_batch_size=64, **options
    )


def record_forwards(trainer: OFATrainer) -> list[Arch]:
    """Every arch the supernet forwards from now on, in order."""
    seen: list[Arch] = []
    net = trainer.supernet
    original = net.forward

    def forward(x: torch.Tensor, arch: Mapping[str, Any]) -> torch.Tensor:
        seen.append(Arch(dict(arch)))
        out: torch.Tensor = original(x, arch)
        return out

    net.forward = forward  # type: ignore[method-assign]
    return seen


def differs_only_in(
    arch: Mapping[str, Any], largest: Mapping[str, Any], dims: Collection[str]
) -> bool:
    """Whether ``arch`` keeps the largest value of every label outside ``dims`` (and all the
    largest arch's blocks unless ``depth`` is in ``dims``)."""
    same = all(elastic_dim(lb) in dims or arch[lb] == largest[lb] for lb in arch)
    blocks = set(arch) <= set(largest) if "depth" in dims else set(arch) == set(largest)
    return same and blocks


def weights(trainer: OFATrainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.supernet.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"phases": [phase("a", ()), phase("b", ("kernal",))]}, "phases.1.elastic.0"),
        ({"phases": [phase("a", ("kernel", "kernel"))]}, "phases.0.elastic"),
        ({"phases": [phase("a", ("kernel",), choices={"depth": 2})]}, "phases.0.choices.depth"),
        ({"phases": [phase("a", ("depth",), choices={"depth": 0})]}, "phases.0.choices.depth"),
        ({"phases": [phase("a", (), epochs=-1)]}, "phases.0.epochs"),
        ({"phases": [phase("a", (), lrr=0.1)]}, "phases.0.lrr"),
        ({"phases": [{"name": "a"}]}, "phases.0.epochs"),
        ({"phases": []}, "phases"),
        ({"lr": 0}, "lr"),
        ({"subnets_per_step": 0}, "subnets_per_step"),
        ({"distill": -1}, "distill"),
        ({"temperature": 0}, "temperature"),
        ({"sandwich": "maybe"}, "sandwich"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"epochs": 3}, "epochs"),
    ],
)
def test_config_errors_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        OFAConfig.from_options(WHERE, **options)
    assert str(err.value).startswith(f"{WHERE}.{field}: "), str(err.value)


def test_default_schedule_is_ofa_order_and_no_shrinking_keeps_the_epochs() -> None:
    cfg = OFAConfig()
    assert cfg.phases == DEFAULT_PHASES
    assert get_args(ElasticDim) == ELASTIC_DIMS  # the config accepts exactly the supernet's
    assert cfg.phases[0].elastic == ()
    added = [
        set(p.elastic) - set(before.elastic) - {"resolution"}
        for before, p in zip(cfg.phases, cfg.phases[1:], strict=False)
    ]
    # full -> kernel -> depth -> expand (with width, act, se): every dimension at the end
    assert added[:2] == [{"kernel"}, {"depth"}] and "expand" in added[2]
    assert all(added) and set(cfg.phases[-1].elastic) == set(ELASTIC_DIMS)
    # the last phase, which trains the small subnets, gets the most epochs
    assert cfg.phases[-1].epochs == max(p.epochs for p in cfg.phases)
    assert cfg.sandwich
    flat = OFAConfig.no_shrinking(cfg)
    assert flat.total_epochs == cfg.total_epochs == sum(p.epochs for p in cfg.phases)
    assert len(flat.phases) == 1 and set(flat.phases[0].elastic) == set(ELASTIC_DIMS)
    assert flat.model_copy(update={"phases": cfg.phases}) == cfg


# -- sampling ---------------------------------------------------------------------------------
def test_sample_arch_draws_only_the_elastic_dims(data: Dataset) -> None:
    trainer = OFATrainer(mobile(), data, config(phase("a", ())))
    largest = trainer.supernet.largest_arch()
    rng = np.random.default_rng(0)
    assert trainer.largest == largest == trainer.sample_arch(rng, ())
    for dims in [("kernel",), ("resolution", "depth"), ("expand", "width"), ELASTIC_DIMS]:
        archs = [trainer.sample_arch(rng, dims) for _ in range(40)]
        for a in archs:
            trainer.space.validate(a)
            assert differs_only_in(a, largest, set(dims))
        changed = {elastic_dim(lb) for a in archs for lb in a if a[lb] != largest.get(lb)}
        changed |= {"depth"} if any(set(a) != set(largest) for a in archs) else set()
        assert changed == set(dims)
    limited = [trainer.sample_arch(rng, ("expand",), {"expand": 2}) for _ in range(30)]
    assert {a[lb] for a in limited for lb in a if lb.endswith("expand")} == {3, 6}
    with pytest.raises(ConfigError, match="kernal"):
        trainer.sample_arch(rng, ("kernal",))


def test_smallest_arch_takes_the_last_sampled_choice_and_draws_nothing(data: Dataset) -> None:
    trainer = OFATrainer(mobile(), data, config(phase("a", ())))
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    small = trainer.sample_arch(rng, ELASTIC_DIMS, {"expand": 2}, smallest=True)
    assert rng.bit_generator.state == before
    space = trainer.space
    assert small["resolution"] == 0.75 and "stage1/block1/kernel" not in small  # depth 1
    for lb, v in small.items():
        dim = elastic_dim(lb)
        expected = {"kernel": 3, "expand": 3, "width": 0.5, "se": False, "depth": 1}.get(dim)
        if dim == "act":
            expected = space.dimension(lb).choices[-1]  # type: ignore[attr-defined]
        if dim != "resolution":
            assert v == expected, lb
    # only the elastic dimensions shrink
    kernel_only = trainer.sample_arch(rng, ("kernel",), smallest=True)
    assert differs_only_in(kernel_only, trainer.largest, {"kernel"})
    assert all(kernel_only[lb] == 3 for lb in kernel_only if lb.endswith("kernel"))


# -- the loop ---------------------------------------------------------------------------------
def test_phases_follow_the_config_and_the_largest_trains_every_step(data: Dataset) -> None:
    cfg = config(
        phase("full", ()),
        phase("kernel", ("kernel",)),
        phase("skipped", ("width",), epochs=0),
        phase("depth-1", ("kernel", "depth"), choices={"depth": 1}),
        phase("res-depth", ("resolution", "kernel", "depth")),
        phase("all", ELASTIC_DIMS, epochs=2),
    )
    trainer = OFATrainer(mobile(), data, cfg)
    seen = record_forwards(trainer)
    largest = trainer.largest
    steps = trainer.steps_per_epoch
    expected = ["full", "kernel", "depth-1", "res-depth", "all", "all"]
    for epoch, name in enumerate(expected):
        assert trainer.phase.name == name and not trainer.done
        start = len(seen)
        rec = trainer.step_epoch()
        p = next(p for p in cfg.phases if p.name == name)
        assert (rec.epoch, rec.phase, rec.elastic, rec.steps) == (
            epoch,
            name,
            list(p.elastic),
            steps,
        )
        per_step = 1 + (cfg.subnets_per_step + cfg.sandwich if p.elastic else 0)
        archs = seen[start:]
        assert len(archs) == steps * per_step and rec.subnets == steps * (per_step - 1)
        assert all(archs[i] == largest for i in range(0, len(archs), per_step))  # teacher first
        dims = set(p.elastic) - set(p.choices)  # choices={"depth": 1}: the deepest only
        subnets = [a for i, a in enumerate(archs) if i % per_step]
        assert all(differs_only_in(a, largest, dims) for a in subnets)
        if p.elastic:
            assert any(a != largest for a in subnets)
            assert rec.loss != rec.teacher_loss
        else:
            assert rec.loss == rec.teacher_loss
    assert trainer.done and [r.phase for r in trainer.records] == expected
    assert {a["resolution"] for a in seen[-steps * 3 :]} == {0.75, 1.0}
    with pytest.raises(RuntimeError):
        trainer.step_epoch()


def test_sandwich_trains_largest_then_smallest_then_random_subnets(data: Dataset) -> None:
    cfg = config(
        phase("full", ()),
        phase("depth", ("kernel", "depth")),
        phase("all", ELASTIC_DIMS, choices={"expand": 2}),
        sandwich=True,
        subnets_per_step=2,
    )
    trainer = OFATrainer(mobile(), data, cfg)
    seen = record_forwards(trainer)
    largest, steps = trainer.largest, trainer.steps_per_epoch
    for p in cfg.phases:
        start = len(seen)
        rec = trainer.step_epoch()
        archs = seen[start:]
        per_step = 1 + (2 + 1 if p.elastic else 0)  # largest, smallest, two random
        assert len(archs) == steps * per_step and rec.subnets == steps * (per_step - 1)
        assert all(archs[i] == largest for i in range(0, len(archs), per_step))
        if not p.elastic:
            continue
        limit = {str(d): n for d, n in p.choices.items()}
        smallest = trainer.sample_arch(np.random.default_rng(0), p.elastic, limit, smallest=True)
        assert smallest != largest
        assert all(archs[i] == smallest for i in range(1, len(archs), per_step))
        randoms = [a for i, a in enumerate(archs) if i % per_step >= 2]
        assert len({a.key for a in randoms}) > 2
        assert all(differs_only_in(a, largest, set(p.elastic)) for a in randoms)


def test_distillation_changes_the_update(data: Dataset) -> None:
    phases = (phase("kernel", ("kernel", "expand")),)
    runs = []
    for distill in (0.0, 1.0, 0.0):
        trainer = OFATrainer(mobile(), data, config(*phases, distill=distill))
        trainer.step_epoch()
        runs.append((weights(trainer), trainer.records[0]))
    assert same_weights(runs[0][0], runs[2][0])  # deterministic
    assert not same_weights(runs[0][0], runs[1][0])
    assert runs[0][1].loss != runs[1][1].loss


def test_reorganize_exactly_when_expand_first_becomes_elastic(data: Dataset) -> None:
    cfg = config(
        phase("full", ()),
        phase("kernel", ("kernel",)),
        phase("empty", ("expand",), epochs=0),
        phase("expand-1", ("kernel", "expand")),
        phase("expand-2", ("kernel", "expand")),
        phase("kernel-again", ("kernel",)),
        phase("expand-3", ("expand",)),
    )
    trainer = OFATrainer(mobile(), data, cfg)
    calls: list[tuple[int, int]] = []
    net = trainer.supernet
    original = net.reorganize_channels

    def reorganize() -> None:
        calls.append((trainer.epoch, len(trainer.records)))
        original()

    net.reorganize_channels = reorganize  # type: ignore[method-assign]
    trainer.train()
    assert calls == [(2, 2), (5, 5)]
    # OFA's baseline without shrinking: nothing trained before, nothing to sort
    flat = OFATrainer(mobile(), data, OFAConfig.no_shrinking(cfg))
    assert not any(flat.adds_expand(i) for i in range(len(flat.config.phases)))


@pytest.mark.parametrize(("stop", "sandwich"), [(1, False), (2, True), (3, False), (3, True)])
def test_resume_is_exact_across_phase_boundaries(
    data: Dataset, tmp_path: Path, stop: int, sandwich: bool
) -> None:
    cfg = config(
        phase("full", ()),
        phase("kernel", ("kernel", "depth")),
        phase("expand", ("kernel", "depth", "expand", "width"), epochs=2),
        sandwich=sandwich,
    )
    straight = OFATrainer(mobile(), data, cfg)
    straight.train()
    first = OFATrainer(mobile(), data, cfg)
    for _ in range(stop):
        first.step_epoch()
    path = tmp_path / "ofa.pt"
    first.save(path)
    resumed = OFATrainer(mobile(), data, cfg)
    resumed.load(path)
    assert resumed.epoch == stop and resumed.phase == cfg.phases[resumed.phase_index(stop)]
    resumed.train(checkpoint=path)
    assert same_weights(weights(resumed), weights(straight))
    strip = [(r.epoch, r.phase, r.loss, r.teacher_loss, r.lr) for r in straight.records]
    assert [(r.epoch, r.phase, r.loss, r.teacher_loss, r.lr) for r in resumed.records] == strip
    assert resumed.train_seconds > 0 and resumed.done


def test_checkpoint_is_weights_only_and_refuses_another_recipe(
    data: Dataset, tmp_path: Path
) -> None:
    cfg = config(phase("full", ()), phase("kernel", ("kernel",)))
    trainer = OFATrainer(mobile(), data, cfg)
    trainer.step_epoch()
    path = tmp_path / "ckpt.pt"
    trainer.save(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["records"][0]["phase"] == "full"
    assert OFAEpochRecord(**state["records"][0]) == trainer.records[0]
    other = OFATrainer(mobile(), data, config(phase("full", ()), phase("kernel", ("depth",))))
    with pytest.raises(ConfigError, match="phases"):
        other.load(path)
    other = OFATrainer(mobile(), data, cfg.model_copy(update={"distill": 0.5}))
    with pytest.raises(ConfigError, match="distill"):
        other.load(path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="bad.pt"):
        trainer.load(bad)
    torch.save({"supernet": {}}, bad)
    with pytest.raises(ConfigError, match="not an OFA"):
        trainer.load(bad)


# -- on real data -----------------------------------------------------------------------------
def test_training_lowers_the_loss_and_extracts_recalibrated_subnets() -> None:
    data = tiny(n_train=512)
    cfg = config(phase("full", (), epochs=3), phase("all", ELASTIC_DIMS, epochs=3), lr=0.1)
    trainer = OFATrainer(mobile(), data, cfg)
    records = trainer.train()
    assert records[2].teacher_loss < records[0].teacher_loss
    assert records[5].loss < records[3].loss
    assert records[5].teacher_loss < records[0].teacher_loss
    rng = np.random.default_rng(1)
    arch = trainer.sample_arch(rng, ELASTIC_DIMS)
    acc = trainer.accuracy(trainer.largest)
    assert acc > 0.2  # ten classes: chance is 0.1
    model = trainer.extract(arch)
    trainer.supernet.eval()
    x = data.x_val[:16]
    with torch.no_grad():
        assert torch.allclose(model(x), trainer.supernet(x, arch), atol=1e-4)
