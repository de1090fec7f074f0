"""Single-path supernets (SPOS / FairNAS): sampling, shared-weight forward, extraction,
BN recalibration, checkpoint resume, the ``supernet`` evaluator and ranking helpers."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nasforge.data import Dataset, load_dataset
from nasforge.errors import ConfigError
from nasforge.evaluators import EvaluatorContext, create_evaluator
from nasforge.evaluators.supernet import SupernetEvaluator
from nasforge.oneshot.bn import recalibrate_bn
from nasforge.oneshot.ranking import kendall_tau, ranking_report, seed_ceiling
from nasforge.oneshot.sampling import FairSampler, UniformSampler, choice_values
from nasforge.oneshot.spos import SupernetConfig, SupernetTrainer
from nasforge.oneshot.supernet import Supernet, register_supernet
from nasforge.space import Arch, Categorical, SearchSpace
from nasforge.spaces.mobile import MobileSpace
from nasforge.spaces.nb201 import LABELS, NB201Space
from nasforge.train import TrainConfig


def tiny(name: str, n_train: int = 96, n_val: int = 48) -> Dataset:
    d = load_dataset(name)
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


def nb201(prune: bool = True) -> NB201Space:
    return NB201Space((1, 8, 8), 10, C=4, N=1, prune_dead_edges=prune)


def mobile(shape: tuple[int, ...] = (1, 40)) -> MobileSpace:
    return MobileSpace(
        shape,
        10,
        stages=((8, 1, 1), (16, 2, 2)),
        kernels=(3, 5),
        expands=(1, 3),
        widths=(0.5, 1.0),
        stem_channels=8,
        head_features=16,
    )


def trained(space: SearchSpace, x: torch.Tensor, steps: int = 3) -> Supernet:
    """A supernet after a few fair steps (so weights and BN stats are no longer the init)."""
    torch.manual_seed(0)
    net = Supernet(space)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    sampler = FairSampler(space, seed=1)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        for arch in sampler.paths():
            net(x, arch).logsumexp(1).mean().backward()
        opt.step()
    return net


# -- sampling ---------------------------------------------------------------------------------
def test_fair_sampling_nb201_uses_every_op_of_every_edge_once_per_step() -> None:
    space = nb201()
    sampler = FairSampler(space, seed=3)
    assert sampler.m == 5
    for _ in range(4):
        paths = sampler.paths()
        assert len(paths) == 5
        for label in LABELS:
            assert sorted(str(a[label]) for a in paths) == sorted(space.ops)


def test_fair_sampling_mobile_assigns_every_choice_equally() -> None:
    space = mobile()
    sampler = FairSampler(space, seed=0)
    values = choice_values(space)
    assert sampler.m == math.lcm(*(len(v) for v in values.values()))
    assign = sampler.assignment()
    for label, vals in values.items():
        counts = Counter(assign[label])
        assert set(counts) == set(vals)
        assert set(counts.values()) == {sampler.m // len(vals)}, label
    for arch in sampler.paths():
        space.validate(arch)
    # over many steps every active choice of a conditional block is visited
    seen = Counter(a.get("stage1/block1/kernel") for _ in range(5) for a in sampler.paths())
    assert seen[3] > 0 and seen[5] > 0


def test_uniform_sampler_repeats_after_state_round_trip() -> None:
    space = mobile()
    a = UniformSampler(space, seed=7)
    a.paths()
    state = a.state_dict()
    first = [a.paths()[0] for _ in range(3)]
    b = UniformSampler(space, seed=99)
    b.load_state_dict(state)
    assert [b.paths()[0] for _ in range(3)] == first


# -- forward and extraction -------------------------------------------------------------------
@pytest.mark.parametrize(
    "space, shape",
    [(nb201(), (5, 1, 8, 8)), (mobile(), (5, 1, 40)), (mobile((1, 16, 16)), (5, 1, 16, 16))],
    ids=["nb201", "mobile1d", "mobile2d"],
)
def test_sampled_arch_forward_shape(space: SearchSpace, shape: tuple[int, ...]) -> None:
    net = Supernet(space)
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert net(torch.randn(*shape), space.sample(rng)).shape == (shape[0], 10)


@pytest.mark.parametrize(
    "space, shape",
    [
        (nb201(), (6, 1, 8, 8)),
        (nb201(prune=False), (6, 1, 8, 8)),
        (mobile(), (6, 1, 40)),
        (mobile((1, 16, 16)), (6, 1, 16, 16)),
    ],
    ids=["nb201", "nb201-unpruned", "mobile1d", "mobile2d"],
)
def test_extracted_standalone_equals_supernet_path(
    space: SearchSpace, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(1)
    x = torch.randn(*shape)
    net = trained(space, x)
    rng = np.random.default_rng(2)
    for _ in range(4):
        arch = space.sample(rng)
        batches = [torch.randn(*shape) for _ in range(2)]
        recalibrate_bn(net, lambda b, a=arch: net(b, a), batches)  # type: ignore[misc]
        standalone = net.extract(arch)
        assert type(standalone) is type(space.build(arch))
        torch.testing.assert_close(standalone(x), net(x, arch), rtol=1e-5, atol=1e-5)


def test_extracted_net_owns_its_weights() -> None:
    space = nb201()
    net = Supernet(space)
    arch = space.sample(np.random.default_rng(0))
    sub = net.extract(arch)
    before = [p.clone() for p in net.parameters()]
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_unknown_space_is_a_config_error() -> None:
    space = SearchSpace([Categorical("x", choices=(1, 2))], name="no_such_supernet")
    with pytest.raises(ConfigError, match="no_such_supernet"):
        Supernet(space)


# -- BN recalibration -------------------------------------------------------------------------
def test_bn_recalibration_sets_running_stats_to_the_batches_mean() -> None:
    space = nb201()
    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    net = trained(space, x)
    body: Any = net.body
    stem_bn = body.stem[1]
    before = stem_bn.running_mean.clone()
    batches = [torch.randn(8, 1, 8, 8) + 3.0 for _ in range(3)]
    arch = space.sample(np.random.default_rng(0))
    recalibrate_bn(net, lambda b: net(b, arch), batches)
    assert not torch.allclose(stem_bn.running_mean, before)
    with torch.no_grad():
        means = [body.stem[0](b).mean(dim=(0, 2, 3)) for b in batches]
    torch.testing.assert_close(stem_bn.running_mean, torch.stack(means).mean(0))
    assert stem_bn.momentum == 0.1 and not net.training


def test_bn_recalibration_of_sliced_widths_updates_the_used_channels() -> None:
    space = mobile()
    net = Supernet(space)
    rng = np.random.default_rng(0)
    arch = Arch({**space.sample(rng).to_dict(), "stage1/width": 0.5})
    recalibrate_bn(net, lambda b: net(b, arch), [torch.randn(8, 1, 40) * 4 for _ in range(2)])
    key = f"k{arch['stage1/block0/kernel']}_e{arch['stage1/block0/expand']}"
    body: Any = net.body
    bn = body.stages[1][0][key].project[1]
    assert not torch.allclose(bn.running_var[:8], torch.ones(8))  # used: half the channels
    assert torch.equal(bn.running_var[8:], torch.ones(8))  # unused: reset


# -- training and resume ----------------------------------------------------------------------
@pytest.mark.parametrize("sampling", ["uniform", "fair"])
def test_checkpoint_resume_continues_identically(sampling: str, tmp_path: Any) -> None:
    data = tiny("digits")
    cfg = SupernetConfig(sampling=sampling, epochs=2, batch_size=32, bn_batches=1)
    straight = SupernetTrainer(nb201(), data, cfg)
    straight.train()
    first = SupernetTrainer(nb201(), data, cfg)
    first.step_epoch()
    first.save(tmp_path / "sn.pt")
    resumed = SupernetTrainer(nb201(), data, cfg)
    resumed.load(tmp_path / "sn.pt")
    assert resumed.epoch == 1
    resumed.train()
    a, b = straight.supernet.state_dict(), resumed.supernet.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.loss for r in straight.records] == [r.loss for r in resumed.records]
    assert straight.records[0].paths == (5 if sampling == "fair" else 1) * 3


def test_checkpoint_of_another_recipe_is_refused(tmp_path: Any) -> None:
    data = tiny("digits")
    t = SupernetTrainer(nb201(), data, SupernetConfig(epochs=0))
    t.save(tmp_path / "sn.pt")
    other = SupernetTrainer(nb201(), data, SupernetConfig(epochs=0, lr=0.2))
    with pytest.raises(ConfigError, match="lr"):
        other.load(tmp_path / "sn.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pt"):
        other.load(tmp_path / "junk.pt")


# -- evaluator --------------------------------------------------------------------------------
def test_supernet_evaluator_from_registry(tmp_path: Any) -> None:
    data = tiny("mnist1d")
    space = mobile()
    ctx = EvaluatorContext(space, data, TrainConfig(batch_size=32), None, tmp_path, seed=0)
    ev = create_evaluator("supernet", ctx, sampling="fair", epochs=1, bn_batches=1)
    assert isinstance(ev, SupernetEvaluator)
    archs = [space.sample(np.random.default_rng(i)) for i in range(2)]
    res = ev.evaluate(archs[0])
    assert ev.produces() <= set(res.metrics)
    assert 0.0 <= res.metrics["val_acc"] <= 1.0
    assert res.metrics["params"] > 0 and "supernet_seconds" in res.info
    assert "supernet_seconds" not in ev.evaluate(archs[1]).info
    assert (tmp_path / "supernet.pt").exists()
    # a second worker loads the checkpoint and scores the same
    again: Any = create_evaluator("supernet", ctx, sampling="fair", epochs=1, bn_batches=1)
    loaded = again.evaluate(archs[0])
    assert loaded.metrics["val_acc"] == res.metrics["val_acc"]
    assert loaded.info["supernet_seconds"] == 0.0 < res.info["supernet_seconds"]
    assert again.trainer.records == ev.trainer.records
    with pytest.raises(ConfigError, match="evaluator.options.sampling"):
        create_evaluator("supernet", ctx, sampling="sometimes")


# -- ranking ----------------------------------------------------------------------------------
def test_kendall_tau_and_ceiling() -> None:
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert seed_ceiling([0.1, 0.2, 0.3], [0.1, 0.3, 0.2]) == pytest.approx(1 / 3)
    assert math.isnan(kendall_tau([1.0], [2.0]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1])


def test_ranking_report_with_given_standalone() -> None:
    data = tiny("digits")
    trainer = SupernetTrainer(nb201(), data, SupernetConfig(epochs=1, batch_size=32, bn_batches=1))
    trainer.train()
    archs = [nb201().sample(np.random.default_rng(i)) for i in range(4)]
    report = ranking_report(
        trainer,
        archs,
        TrainConfig(),
        standalone=[[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.4, 0.3]],
        rankers={"params": [1, 2, 3, 4]},
    )
    assert len(report.supernet) == 4
    assert report.tau_seed_to_seed == pytest.approx(kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]))
    assert report.tau_rankers["params"] == pytest.approx(1.0)
    assert report.tau_supernet == kendall_tau(report.supernet, [0.1, 0.2, 0.3, 0.4]) or math.isnan(
        report.tau_supernet
    )


# -- extension: a supernet for a user's space -------------------------------------------------
class ToyMLPSpace(SearchSpace):
    name = "toy_mlp_for_supernet"

    def __init__(self) -> None:
        super().__init__(
            [Categorical("hidden", choices=(4, 8)), Categorical("act", ("relu", "tanh"))]
        )

    def build(self, arch: Arch) -> nn.Module:
        act = nn.ReLU() if arch["act"] == "relu" else nn.Tanh()
        return nn.Sequential(
            nn.Flatten(), nn.Linear(6, int(arch["hidden"])), act, nn.Linear(int(arch["hidden"]), 3)
        )


class ToyMLPBody(nn.Module):
    """Largest weights shared, sliced to the chosen hidden width."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, arch: Mapping[str, Any]) -> torch.Tensor:
        h = int(arch["hidden"])
        z = F.linear(x.flatten(1), self.fc1.weight[:h], self.fc1.bias[:h])
        z = torch.relu(z) if arch["act"] == "relu" else torch.tanh(z)
        return F.linear(z, self.fc2.weight[:, :h], self.fc2.bias)

    def inherited_key(self, key: str, arch: Mapping[str, Any]) -> str:
        return {"1.weight": "fc1.weight", "1.bias": "fc1.bias"}.get(key) or key.replace(
            "3.", "fc2."
        )


def test_registered_user_supernet_runs_samples_and_extracts() -> None:
    register_supernet(ToyMLPSpace.name, ToyMLPBody)
    space = ToyMLPSpace()
    net = Supernet(space)
    x = torch.randn(4, 6)
    sampler = FairSampler(space, seed=0)
    assert sampler.m == 2
    for arch in sampler.paths():
        torch.testing.assert_close(net.extract(arch)(x), net(x, arch))
