"""The mobile space's compound-scaling options (width_mult, depth_mult, resolution_mult) and
:func:`scale_arch` (issue 15, part E)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.errors import ConfigError
from nasforge.nn.layers import build_layer
from nasforge.space.plan import LayerSpec, plan_layers
from nasforge.spaces import create_space
from nasforge.spaces.mobile import DEFAULT_STAGES, MobileSpace
from nasforge.spaces.mobile_scale import compound_factors, scale_arch

SMALL: dict[str, Any] = dict(
    stages=((8, 1, 1), (16, 2, 2)),
    kernels=(3, 5),
    expands=(1, 3),
    widths=(0.5, 1.0),
    stem_channels=8,
    head_features=16,
)


def mobile(shape: tuple[int, ...], **options: Any) -> MobileSpace:
    space = create_space("mobile", shape, 10, **options)
    assert isinstance(space, MobileSpace)
    return space


def test_default_multipliers_keep_the_space_exactly() -> None:
    plain = MobileSpace((1, 8, 8), 10)
    ones = mobile((1, 8, 8), width_mult=1.0, depth_mult=1.0, resolution_mult=1.0)
    assert ones.stages == plain.stages == DEFAULT_STAGES
    assert (ones.stem_channels, ones.head_features) == (16, 128)
    assert ones.labels() == plain.labels() and ones.all_layers() == plain.all_layers()


def test_width_mult_scales_stem_stage_and_head_channels() -> None:
    space = mobile((1, 8, 8), width_mult=2.0)
    assert [s.channels for s in space.stages] == [32, 48, 80, 160]
    assert (space.stem_channels, space.head_features) == (32, 256)
    # a stage's width choice multiplies the scaled channels
    arch = space.sample(np.random.default_rng(0))
    blocks = space.blocks(arch)
    for b in blocks:
        w = float(arch[f"stage{b.stage}/width"])
        assert b.out_ch >= 0.9 * space.stages[b.stage].channels * w and b.out_ch % 8 == 0


def test_depth_mult_is_the_ceiling_of_each_stages_max_depth() -> None:
    space = mobile((1, 40), depth_mult=1.5)
    assert [s.max_depth for s in space.stages] == [3, 5, 5, 5]  # ceil of 2, 3, 3, 3 x 1.5
    assert "stage1/block4/kernel" in space.labels() and "stage1/block5/kernel" not in space.labels()
    # 5 x 1.2 is 6.000000000000001 in floats: still 6
    assert mobile((1, 40), stages=((8, 1, 5),), depth_mult=1.2).stages[0].max_depth == 6


@pytest.mark.parametrize(
    ("shape", "resolutions", "mult", "sizes"),
    [
        ((1, 8, 8), (1.0,), 1.5, {1.0: (12, 12)}),
        ((1, 40), (0.5, 1.0), 1.3, {0.5: (26,), 1.0: (52,)}),
    ],
)
def test_resolution_mult_scales_the_computed_input_size(
    shape: tuple[int, ...], resolutions: tuple[float, ...], mult: float, sizes: dict[float, Any]
) -> None:
    space = mobile(shape, resolutions=resolutions, resolution_mult=mult)
    for m, size in sizes.items():
        arch = space.sample(np.random.default_rng(0))
        if len(resolutions) > 1:
            arch = space.make({**arch.to_dict(), "resolution": m})
        assert space.input_size(arch) == size
        model = space.build(arch).eval()
        assert model(torch.zeros(2, *shape)).shape == (2, 10)
        assert space.plan(arch)[0][0].op == "mobile.resize"


@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)], ids=["1d", "2d"])
def test_plan_of_a_scaled_space_is_the_model_that_build_makes(shape: tuple[int, ...]) -> None:
    """Every plan layer is enumerated by ``all_layers``, builds, takes the planned input shape,
    and the chain of plan layers (weights copied in order) computes the built model."""
    space = MobileSpace(shape, 10, width_mult=1.5, depth_mult=1.5, resolution_mult=1.25, **SMALL)
    known = set(space.all_layers())
    for seed in range(4):
        arch = space.sample(np.random.default_rng(seed))
        model = space.build(arch).eval()
        specs = list(plan_layers(space.plan(arch)))
        assert all(isinstance(s, LayerSpec) for s in specs) and set(specs) <= known
        layers = [build_layer(s).eval() for s in specs]
        src = list(model.state_dict().values())
        dst = [t for lay in layers for t in lay.state_dict().values()]
        assert [t.shape for t in src] == [t.shape for t in dst]
        with torch.no_grad():
            for a, b in zip(src, dst, strict=True):
                b.copy_(a)
            x = torch.randn(2, *shape)
            y = x
            for spec, lay in zip(specs, layers, strict=True):
                assert tuple(y.shape[1:]) == spec.in_shape, spec.key
                y = lay(y)
            torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("width_mult", 0, "must be > 0"),
        ("depth_mult", -1.0, "must be > 0"),
        ("resolution_mult", float("nan"), "not a finite number"),
        ("width_mult", "wide", "not a finite number"),
        ("width_mult", 100, "<= 16"),
        ("resolution_mult", 0.25, "every side must stay >= 4"),
    ],
)
def test_bad_multipliers_are_refused_naming_the_option(
    option: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        mobile((1, 8, 8), **{option: value})
    assert f"space.options.{option}" in str(err.value) and message in str(err.value)


def test_a_bad_multiplier_in_a_config_exits_2_naming_the_option(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "name: bad\ndata: {name: digits}\nsearch: {trials: 1, executor: inline}\n"
        "train: {epochs: 1}\nspace: {name: mobile, options: {width_mult: -2}}\n"
    )
    res = CliRunner().invoke(app, ["search", str(cfg), "--runs-dir", str(tmp_path), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "space.options.width_mult: -2 must be > 0" in res.output.replace("\n", " ")
    assert "Traceback" not in res.output


def test_scale_arch_repeats_each_stages_last_block_and_multiplies_the_options() -> None:
    base_space = MobileSpace((1, 8, 8), 10, width_mult=1.1)
    base = base_space.sample(np.random.default_rng(3))
    options, values = scale_arch({"width_mult": 1.1}, base.to_dict(), 1.2, 1.4, 1.3)
    assert options == pytest.approx({"width_mult": 1.32, "depth_mult": 1.4, "resolution_mult": 1.3})
    space = MobileSpace((1, 8, 8), 10, **options)
    arch = space.make(values)  # validates
    for i in range(len(DEFAULT_STAGES)):
        d = int(base[f"stage{i}/depth"])
        new_d = int(arch[f"stage{i}/depth"])
        assert new_d == min(math.ceil(d * 1.4 - 1e-9), space.stages[i].max_depth)
        for j in range(new_d):
            src = f"stage{i}/block{min(j, d - 1)}"
            for f in ("kernel", "expand", "se", "act"):
                assert arch[f"stage{i}/block{j}/{f}"] == base[f"{src}/{f}"]
        assert arch[f"stage{i}/width"] == base[f"stage{i}/width"]
    assert space.input_size(arch) == (10, 10)  # round(8 * 1.3)
    model = space.build(arch).eval()
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    params = sum(p.numel() for p in model.parameters())
    assert params > sum(p.numel() for p in base_space.build(base).parameters())


def test_scale_arch_by_one_is_the_base_and_shrinking_drops_blocks() -> None:
    space = MobileSpace((1, 40), 10)
    base = space.sample(np.random.default_rng(5)).to_dict()
    options, same = scale_arch({}, base)
    assert same == base and MobileSpace((1, 40), 10, **options).make(same).key
    options, small = scale_arch({}, base, depth=0.5)
    shrunk = MobileSpace((1, 40), 10, **options).make(small)  # no stale block labels
    for i in range(4):
        assert shrunk[f"stage{i}/depth"] == math.ceil(int(base[f"stage{i}/depth"]) * 0.5)


def test_compound_factors_follow_efficientnet() -> None:
    f = compound_factors(1.2, 1.1, 1.15, 2)
    assert f == pytest.approx({"depth": 1.44, "width": 1.21, "resolution": 1.3225})
    assert compound_factors(1.2, 1.1, 1.15, 0) == {"depth": 1.0, "width": 1.0, "resolution": 1.0}
