"""Elastic input resolution of the ``mobile`` space (option ``resolutions``): the dimension,
the resized nets (built, planned, tabled, exported, BN-folded, extracted from the single-path
supernet) and the refusal of bad options, for 1-D (mnist1d-like) and 2-D (MNIST-like) inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.errors import ConfigError, SpaceError
from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.onnx import export_onnx, ort_session
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import LatencyTable
from nasforge.hardware.timing import TimingConfig
from nasforge.nn import fuse_bn
from nasforge.nn.blocks import Resized
from nasforge.nn.layers import build_layer
from nasforge.oneshot.bn import recalibrate_bn
from nasforge.oneshot.sampling import FairSampler
from nasforge.oneshot.supernet import Supernet
from nasforge.space import Arch, Categorical
from nasforge.space.plan import Cell, LayerSpec, plan_layers
from nasforge.spaces import create_space
from nasforge.spaces.mobile import RESOLUTION, MobileSpace

SHAPES = [(1, 40), (1, 28, 28)]
RESOLUTIONS = (0.5, 0.75, 1.0)
#: the spatial size each multiplier gives, per input shape (round(side * m))
EXPECTED: dict[tuple[int, ...], dict[float, tuple[int, ...]]] = {
    (1, 40): {0.5: (20,), 0.75: (30,), 1.0: (40,)},
    (1, 28, 28): {0.5: (14, 14), 0.75: (21, 21), 1.0: (28, 28)},
}
SMALL: dict[str, Any] = dict(
    stages=((8, 1, 1), (16, 2, 2)),
    kernels=(3, 5),
    expands=(1, 3),
    widths=(0.5, 1.0),
    stem_channels=8,
    head_features=16,
)


def small(shape: tuple[int, ...], resolutions: tuple[float, ...] = RESOLUTIONS) -> MobileSpace:
    return MobileSpace(shape, 10, resolutions=resolutions, **SMALL)


def at(space: MobileSpace, m: float, seed: int = 0) -> Arch:
    """A sampled arch of ``space`` at resolution ``m``."""
    arch = space.sample(np.random.default_rng(seed))
    return space.make({**arch.to_dict(), RESOLUTION: m})


def mobile(shape: tuple[int, ...], **options: Any) -> MobileSpace:
    """The registered ``mobile`` space, created as a config would (``space.options``)."""
    space = create_space("mobile", shape, 10, **options)
    assert isinstance(space, MobileSpace)
    return space


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            bn: Any = mod
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(bn.bias.shape, generator=g) * 0.1)


# -- the dimension --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=["1d", "2d"])
def test_resolution_is_the_first_dimension_only_with_more_than_one_choice(
    shape: tuple[int, ...],
) -> None:
    plain = mobile(shape)
    one = mobile(shape, resolutions=[1.0])
    elastic = mobile(shape, resolutions=[0.5, 0.75, 1])
    assert RESOLUTION not in plain.labels() and RESOLUTION not in one.labels()
    assert one.labels() == plain.labels()
    first = elastic.dimensions()[0]
    assert isinstance(first, Categorical) and first.label == RESOLUTION
    assert first.choices == RESOLUTIONS and all(type(c) is float for c in first.choices)
    assert elastic.labels()[1:] == plain.labels()
    # archs of the space without the option keep their keys and compute at the input size
    arch = plain.sample(np.random.default_rng(0))
    assert one.make(arch.to_dict()).key == arch.key
    assert plain.input_size(arch) == shape[1:] and plain.resolution(arch) == 1.0
    assert plain.plan(arch) == one.plan(arch)
    for m, size in EXPECTED[shape].items():
        assert elastic.input_size(at(elastic, m)) == size
    # a single multiplier other than 1.0: no dimension, every net at that size
    half = mobile(shape, resolutions=[0.5])
    assert half.labels() == plain.labels() and half.input_size(arch) == EXPECTED[shape][0.5]


def test_an_arch_without_or_outside_the_resolution_is_refused() -> None:
    space = small((1, 40))
    arch = at(space, 0.75).to_dict()
    with pytest.raises(SpaceError, match="resolution = 0.6 is not allowed"):
        space.input_size({**arch, RESOLUTION: 0.6})
    del arch[RESOLUTION]
    with pytest.raises(SpaceError, match="missing label 'resolution'"):
        space.input_size(arch)
    with pytest.raises(SpaceError, match="resolution"):
        space.validate(arch)


# -- build, describe, plan ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=["1d", "2d"])
def test_build_resizes_the_input_and_computes_at_input_size(shape: tuple[int, ...]) -> None:
    space = small(shape)
    x = torch.randn(3, *shape)
    for m in RESOLUTIONS:
        arch = at(space, m, seed=int(m * 100))
        model: Any = space.build(arch).eval()
        features = model[0]
        assert isinstance(features, Resized) == (m != 1.0)
        seen: list[tuple[int, ...]] = []
        stem_conv = features[0][0]
        hook = stem_conv.register_forward_hook(
            lambda _mod, args, _out, seen=seen: seen.append(tuple(args[0].shape[2:]))
        )
        with torch.no_grad():
            out = model(x)
        hook.remove()
        assert out.shape == (3, 10)
        assert seen == [EXPECTED[shape][m]]
        described = space.describe(arch).splitlines()
        size = "x".join(map(str, EXPECTED[shape][m]))
        assert (described[0] == f"resolution: {m} ({size})") == (m != 1.0)
        assert described[-1].startswith("stage1:")


@pytest.mark.parametrize("shape", SHAPES, ids=["1d", "2d"])
def test_plan_is_the_model_that_build_makes(shape: tuple[int, ...]) -> None:
    """Layer by layer, the plan's layers chained on the input give the built model's output
    (same weights copied in order), with every layer's input shape as planned."""
    space = small(shape)
    known = set(space.all_layers())
    rng = np.random.default_rng(1)
    seen_resolutions = set()
    for i in range(9):
        arch = at(space, RESOLUTIONS[i % 3], seed=int(rng.integers(1 << 30)))
        seen_resolutions.add(arch[RESOLUTION])
        model = space.build(arch).eval()
        _randomize_bn(model)
        plan = space.plan(arch)
        specs = list(plan_layers(plan))
        assert all(isinstance(seg, LayerSpec) and rep == 1 for seg, rep in plan)
        assert set(specs) <= known
        assert (specs[0].op == "mobile.resize") == (arch[RESOLUTION] != 1.0)
        layers = [build_layer(s).eval() for s in specs]
        # the model's parameters and buffers, in order, are the plan layers' (resize has none)
        src = [t for _, t in model.state_dict().items()]
        dst = [t for lay in layers for t in lay.state_dict().values()]
        assert [t.shape for t in src] == [t.shape for t in dst]
        with torch.no_grad():
            for a, b in zip(src, dst):
                b.copy_(a)
        x = torch.randn(2, *shape)
        y = x
        with torch.no_grad():
            for spec, lay in zip(specs, layers):
                assert tuple(y.shape[1:]) == spec.in_shape, spec.key
                y = lay(y)
            torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)
        assert space.plan(space.make(arch.to_dict())) == plan
    assert seen_resolutions == set(RESOLUTIONS)


def test_all_layers_cover_every_resolution_and_the_default_is_unchanged() -> None:
    shape = (1, 28, 28)
    layers = small(shape).all_layers()
    resizes = [s for s in layers if s.op == "mobile.resize"]
    assert [s.key for s in resizes] == [
        "mobile.resize(14,14,2)@1x28x28",
        "mobile.resize(21,21,2)@1x28x28",
    ]
    stems = {s.in_shape for s in layers if s.op == "mobile.stem"}
    assert stems == {(1, 14, 14), (1, 21, 21), (1, 28, 28)}
    by_size = {m: set(small(shape, (m,)).all_layers()) for m in RESOLUTIONS}
    assert set(layers) == set().union(*by_size.values())
    assert not any(s.op == "mobile.resize" for s in by_size[1.0])
    # sampled plans only use enumerated layers
    space = small(shape)
    rng = np.random.default_rng(4)
    known = set(layers)
    for _ in range(100):
        for seg, _ in space.plan(space.sample(rng)):
            assert not isinstance(seg, Cell) and seg in known


# -- a latency table of a two-resolution space ----------------------------------------------------
def test_latency_table_of_a_two_resolution_space_measures_and_predicts(tmp_path: Path) -> None:
    options: dict[str, Any] = dict(
        stages=[[8, 1, 1], [16, 2, 1]],
        kernels=[3, 5],
        expands=[1],
        widths=[1.0],
        activations=["relu"],
        se=[False],
        stem_channels=8,
        head_features=16,
        resolutions=[0.5, 1.0],
    )
    shape = (1, 28, 28)
    space = create_space("mobile", shape, 10, **options)
    config = BuildConfig(
        calibration_archs=2, held_out_archs=0, timing=TimingConfig(warmup=1, repeats=3, rounds=2)
    )
    table = TableBuilder(space, "torch", 1, config, space_options=options, progress=False).build(
        tmp_path / "res.json"
    )
    again = LatencyTable.load(tmp_path / "res.json", warn=False)
    rebuilt = again.make_space()
    assert isinstance(rebuilt, MobileSpace) and rebuilt.resolutions == (0.5, 1.0)
    keys = {s.key for s in rebuilt.all_layers()}
    assert keys == set(table.entries) and "mobile.resize(14,14,2)@1x28x28" in keys
    assert all(e.min_ms > 0 for e in table.entries.values())
    raw = LatencyPredictor(again, rebuilt, calibrated=False)
    overhead = again.call_overhead_ms["min"]
    for m in (0.5, 1.0):
        arch = at(rebuilt, m)
        total, _, _ = raw.raw_ms(arch)
        expected = overhead + sum(raw.layer_ms(s) for s in plan_layers(rebuilt.plan(arch)))
        assert total == pytest.approx(expected)
        assert 0 < LatencyPredictor(again, rebuilt).predict(arch) < 1_000


# -- deployment: ONNX, BN folding -----------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=["1d", "2d"])
def test_resized_arch_exports_to_onnx_and_runs_as_in_torch(shape: tuple[int, ...]) -> None:
    space = small(shape)
    model = space.build(at(space, 0.75, seed=5)).eval()
    _randomize_bn(model)
    data = export_onnx(model, shape, batch_size=2, dynamic_batch=True)
    import onnx

    ops = {node.op_type for node in onnx.load_from_string(data).graph.node}
    assert "Resize" in ops
    sess = ort_session(data)
    x = torch.randn(3, *shape)
    (got,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES, ids=["1d", "2d"])
def test_bn_folded_resized_arch_equals_unfolded(shape: tuple[int, ...]) -> None:
    space = small(shape)
    model = space.build(at(space, 0.5, seed=6)).eval()
    _randomize_bn(model)
    fused: Any = fuse_bn(model)
    assert isinstance(fused[0], Resized)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in fused.modules())
    x = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


# -- the single-path supernet ---------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=["1d", "2d"])
def test_spos_supernet_extract_equals_its_forward_at_every_resolution(
    shape: tuple[int, ...],
) -> None:
    space = small(shape)
    torch.manual_seed(0)
    x = torch.randn(6, *shape)
    net = Supernet(space)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()
    for _ in range(2):  # a few fair steps, so weights and BN stats are no longer the init
        opt.zero_grad()
        for arch in FairSampler(space, seed=1).paths():
            net(x, arch).logsumexp(1).mean().backward()
        opt.step()
    for m in RESOLUTIONS:
        arch = at(space, m, seed=7)
        batches = [torch.randn(6, *shape) for _ in range(2)]
        recalibrate_bn(net, lambda b, a=arch: net(b, a), batches)  # type: ignore[misc]
        sub: Any = net.extract(arch)
        assert isinstance(sub[0], Resized) == (m != 1.0)
        with torch.no_grad():
            torch.testing.assert_close(sub(x), net(x, arch), rtol=1e-5, atol=1e-5)
    # the supernet's output depends on the resolution (the input really is resized)
    with torch.no_grad():
        net.eval()
        a, b = at(space, 0.5, seed=7), at(space, 1.0, seed=7)
        assert not torch.allclose(net(x, a), net(x, b))


# -- bad options ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, message",
    [
        ([], "at least one multiplier"),
        (0.5, "must be a list"),
        ("0.5", "must be a list"),
        ([0.5, 0], "space.options.resolutions[1]: 0.0 must be > 0"),
        ([-0.5], "must be > 0"),
        ([0.5, "big"], "'big' is not a finite number"),
        ([float("nan")], "not a finite number"),
        ([True], "not a finite number"),
        ([0.05, 1.0], "every side must stay >= 4"),
        ([0.75, 1.0, 0.75], "space.options.resolutions[2]: 0.75 gives the same"),
        ([1.0, 1], "gives the same"),
    ],
)
def test_bad_resolutions_are_refused_naming_the_field(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        create_space("mobile", (1, 40), 10, resolutions=value)
    assert "space.options.resolutions" in str(err.value) and message in str(err.value)


def test_bad_resolutions_in_a_config_exit_2_naming_the_field(tmp_path: Path) -> None:
    """digits is 1x8x8: a quarter of it would be 2x2."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "name: bad\ndata: {name: digits}\nsearch: {trials: 2, executor: inline}\n"
        "train: {epochs: 1}\nspace: {name: mobile, options: {resolutions: [0.25, 1.0]}}\n"
    )
    res = CliRunner().invoke(
        app, ["search", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    )
    assert res.exit_code == 2, res.output
    assert "space.options.resolutions[0]: 0.25 turns the 8x8 input into 2x2" in res.output
    assert "Traceback" not in res.output
