"""Batch augmentation (nasforge.augment): every op keeps the batch's shape, dtype and finiteness,
magnitude 0 changes nothing, ops do what their names say (checked against torch's own rot90 /
roll and closed forms), and the draws come only from the loop's generator."""

from __future__ import annotations

import pytest
import torch

from nasforge import augment
from nasforge.augment import (
    IMAGE_OPS,
    MAX_MAGNITUDE,
    SIGNAL_OPS,
    apply_op,
    augment_batch,
    rand_augment,
    trivial_augment,
)
from nasforge.data import load_dataset


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_dataset("digits").x_train[:32].clone()


@pytest.fixture(scope="module")
def signals() -> torch.Tensor:
    return load_dataset("mnist1d", samples=200).x_train[:32].clone()


@pytest.fixture(scope="module")
def rgb() -> torch.Tensor:
    return torch.randn(8, 3, 12, 10, generator=_gen(5))


def _batches(images: torch.Tensor, signals: torch.Tensor, rgb: torch.Tensor):
    return [(images, IMAGE_OPS), (rgb, IMAGE_OPS), (signals, SIGNAL_OPS)]


@pytest.mark.parametrize("wide", [False, True])
def test_every_op_keeps_shape_dtype_and_finite(images, signals, rgb, wide) -> None:
    for x, ops in _batches(images, signals, rgb):
        sign = torch.randint(2, (len(x),), generator=_gen(1)) * 2 - 1
        for name in ops:
            for magnitude in (1, 9, MAX_MAGNITUDE):
                out = apply_op(name, x, magnitude, _gen(), wide=wide, sign=sign)
                assert out.shape == x.shape and out.dtype == x.dtype, (name, magnitude)
                assert torch.isfinite(out).all(), (name, magnitude)


def test_magnitude_zero_is_the_identity(images, signals, rgb) -> None:
    for x, ops in _batches(images, signals, rgb):
        for name in ops:
            for wide in (False, True):
                assert torch.equal(apply_op(name, x, 0, _gen(), wide=wide), x), name
            # the op itself at strength 0, not only the short cut that skips it
            out = ops[name].fn(x, torch.zeros(len(x)), _gen())
            assert torch.allclose(out, x, atol=1e-5), name
    assert torch.equal(rand_augment(images, _gen(), n=3, m=0), images)
    assert torch.equal(rand_augment(signals, _gen(), n=3, m=0), signals)


def test_every_op_but_identity_changes_the_batch(images, signals) -> None:
    for x, ops in ((images, IMAGE_OPS), (signals, SIGNAL_OPS)):
        for name in ops:
            out = apply_op(name, x, MAX_MAGNITUDE, _gen())
            changed = not torch.equal(out, x)
            assert changed == (name != "identity"), name


def test_solarize_inverts_above_the_threshold(images) -> None:
    x = images
    lo = x.amin((1, 2, 3), keepdim=True)
    hi = x.amax((1, 2, 3), keepdim=True)
    full = augment.solarize(x, torch.ones(len(x)), _gen())  # threshold at each sample's black
    assert torch.allclose(full, torch.where(x > lo, lo + hi - x, x))
    half = augment.solarize(x, torch.full((len(x),), 0.5), _gen())
    assert torch.equal(half == x, x <= (lo + hi) / 2)


def test_rotate_a_quarter_turn_equals_rot90(images) -> None:
    quarter = augment.rotate(images, torch.full((len(images),), 90.0), _gen())
    turned = [torch.rot90(images, k, dims=(-2, -1)) for k in (1, -1)]
    assert any(torch.allclose(quarter, t, atol=1e-5) for t in turned)
    assert not torch.allclose(turned[0], turned[1])


def test_translate_by_whole_pixels_shifts_and_fills_black(images) -> None:
    x = images
    lo = x.amin((1, 2, 3), keepdim=True)
    one = torch.full((len(x),), 1 / x.shape[-1])
    out = augment.translate_x(x, one, _gen())
    moved = torch.roll(x, 1, dims=-1)
    moved_back = torch.roll(x, -1, dims=-1)
    left = torch.where(torch.arange(8) == 0, lo, moved)
    right = torch.where(torch.arange(8) == 7, lo, moved_back)
    assert torch.allclose(out, left, atol=1e-5) or torch.allclose(out, right, atol=1e-5)


def test_photometric_ops_at_full_negative_strength(images) -> None:
    x = images
    minus_one = -torch.ones(len(x))
    black = augment.brightness(x, minus_one, _gen())
    assert torch.equal(black, x.amin((1, 2, 3), keepdim=True).expand_as(x))
    flat = augment.contrast(x, minus_one, _gen())
    assert torch.allclose(flat, x.mean((1, 2, 3), keepdim=True).expand_as(x))


def test_posterize_keeps_that_many_levels(images) -> None:
    out = augment.posterize(images, torch.full((len(images),), 6.0), _gen())  # 2 bits
    for sample in out:
        assert len(torch.unique(sample)) <= 4


def test_signal_ops_against_closed_forms(signals) -> None:
    x = signals
    length = x.shape[-1]
    shifted = augment.shift(x, torch.full((len(x),), 3 / length), _gen())
    assert torch.equal(shifted, torch.roll(x, 3, dims=-1))
    ramp = augment.trend(x, torch.ones(len(x)), _gen()) - x
    span = x.amax((1, 2)) - x.amin((1, 2))
    assert torch.allclose(ramp[..., -1] - ramp[..., 0], span[:, None].expand(-1, x.shape[1]))
    flat = augment.scale(x, -torch.ones(len(x)), _gen())
    assert torch.allclose(flat, x.mean(-1, keepdim=True).expand_as(x))
    warped = augment.warp(x, torch.full((len(x),), 0.9), _gen())
    assert not torch.allclose(warped, x)
    noisy = augment.noise(x, torch.full((len(x),), 0.5), _gen())
    ratio = (noisy - x).std() / x.std()
    assert 0.4 < float(ratio) < 0.6


def test_cutout_fills_one_box_with_the_mean(images) -> None:
    v = torch.full((len(images),), 0.5)  # a 4x4 box on 8x8, maybe hanging over the border
    out = augment.cutout(images, v, _gen())
    means = images.mean((1, 2, 3))
    for sample, before, mean in zip(out, images, means, strict=True):
        filled = (sample != before) | (sample == mean)
        rows, cols = filled[0].any(1).nonzero(), filled[0].any(0).nonzero()
        assert 0 < len(rows) <= 4 and 0 < len(cols) <= 4
        assert torch.all(sample[:, filled[0]] == mean)


def test_same_generator_same_batch_other_seed_other_batch(images, signals) -> None:
    for x in (images, signals):
        for kind in ("randaugment", "trivialaugment"):
            a = augment_batch(x, kind, _gen(3), n=2, m=12)
            b = augment_batch(x, kind, _gen(3), n=2, m=12)
            c = augment_batch(x, kind, _gen(4), n=2, m=12)
            assert torch.equal(a, b), kind
            assert not torch.equal(a, c), kind


def test_each_sample_draws_its_own_op(images, signals) -> None:
    for x in (images, signals):
        same = x[:1].expand(64, *x.shape[1:]).clone()
        for out in (rand_augment(same, _gen(), n=1, m=15), trivial_augment(same, _gen())):
            distinct = torch.unique(out.flatten(1), dim=0)
            assert len(distinct) >= 4


def test_none_and_shift_keep_their_draws(images) -> None:
    gen = _gen()
    assert augment_batch(images, "none", gen) is images
    assert torch.equal(gen.get_state(), _gen().get_state())
    # ``shift``: the original whole-batch roll, one draw of two offsets
    reference = _gen()
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=reference))
    expected = torch.roll(images, shifts=(dy, dx), dims=(-2, -1))
    assert torch.equal(augment_batch(images, "shift", _gen()), expected)


def test_unknown_kind_or_layout_names_the_field() -> None:
    with pytest.raises(ValueError, match="train.augment"):
        augment_batch(torch.zeros(4, 3, 8, 8), "mixup", _gen())
    with pytest.raises(ValueError, match=r"train.augment.*\(4, 10\)"):
        augment_batch(torch.zeros(4, 10), "randaugment", _gen())


def test_a_layer_gives_each_sample_its_own_op_as_if_applied_alone(images, signals) -> None:
    for x in (images, signals):
        ops = augment.ops_for(x)
        out = rand_augment(x, _gen(7), n=1, m=20)
        replay = _gen(7)  # rand_augment's first draws: the op, then the sign, per sample
        choice = torch.randint(len(ops), (len(x),), generator=replay)
        sign = torch.randint(2, (len(x),), generator=replay) * 2 - 1
        names = list(ops)
        for i in range(len(x)):
            name = names[int(choice[i])]
            if name in ("cutout", "noise"):  # their own draws follow the layer's order
                continue
            alone = apply_op(name, x[i : i + 1], 20, _gen(), sign=sign[i : i + 1])
            assert torch.allclose(out[i : i + 1], alone, atol=1e-5), name
