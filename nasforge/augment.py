"""Batch augmentation for the training loop: RandAugment and TrivialAugment(Wide) on
normalised float batches, images ``(N, C, H, W)`` and 1-D signals ``(N, C, L)``.

Written here rather than taken from torchvision: torchvision's wheel in this environment is a
CUDA build that does not import beside the CPU torch, and its ops work on one PIL-range image
at a time. These ops work on a whole batch of *normalised* tensors, each sample getting its
own op and sign, drawn from the training loop's ``torch.Generator`` (same seed, same batches).

Normalised data has no fixed "black" or "white": the photometric ops are defined relative to
each sample's own minimum ``lo`` (black), maximum ``hi`` (white) and mean, the way PIL's ops
are relative to 0 and 255. Geometric ops fill uncovered pixels with ``lo`` (PIL fills black).

Magnitude ``m`` is RandAugment's integer scale 0..30 (:data:`MAX_MAGNITUDE`); an op's strength
is ``m / 30`` of its maximum (RandAugment's ranges follow torchvision's, TrivialAugmentWide's
its wide ranges). Magnitude 0 leaves a sample unchanged for every op. Ops with a direction
(rotate, shear, translate, brightness ...) take a random sign per sample.

Image ops: identity, brightness, contrast, sharpness, solarize, posterize, rotate, shear_x,
shear_y, translate_x, translate_y, cutout. Signal ops (no flips: time has a direction):
identity, shift, trend, scale, noise, stretch, warp, cutout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "shift", "randaugment", "trivialaugment")
"""The values of ``train.augment``."""
MAX_MAGNITUDE = 30
"""RandAugment's magnitude scale: ``train.augment_m`` lies in 0..30."""

OpFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
"""``op(x, v, gen) -> x'``: ``x`` a sub-batch, ``v`` its per-sample signed strength (k,)."""
GridFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``grid(x, v)``: where a geometric op samples ``x`` (grid_sample's normalised grid)."""


@dataclass(frozen=True)
class AugmentOp:
    """One op: its function and the strength at magnitude 30 (RandAugment, TrivialAugmentWide).

    A geometric op also gives its sampling ``grid``, so that a layer resamples all its
    geometric samples in one ``grid_sample`` call (``fn`` is that resampling on its own).
    """

    fn: OpFn
    ra_max: float
    ta_max: float
    signed: bool
    grid: GridFn | None = None


def _per_sample(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v`` (k,) shaped to broadcast over a sample's other dims."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def _range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = tuple(range(1, x.dim()))
    return x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(tuple(range(1, x.dim())), keepdim=True)


def _blend(x: torch.Tensor, base: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: ``base + (1 + v) * (x - base)``, clipped to the sample's range."""
    lo, hi = _range(x)
    out = base + (1 + _per_sample(x, v)) * (x - base)
    return torch.minimum(torch.maximum(out, lo), hi)


# -- image ops (k, C, H, W) -------------------------------------------------------------------


def identity(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return x


def brightness(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blend with the sample's black (its minimum)."""
    return _blend(x, _range(x)[0], v)


def contrast(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blend with a flat image at the sample's mean."""
    return _blend(x, _mean(x), v)


def sharpness(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blend with PIL's SMOOTH-filtered image (border pixels kept, as PIL does)."""
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x
    c = x.shape[1]
    kernel = torch.ones(3, 3, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return _blend(x, smooth, v)


def solarize(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Invert (``lo + hi - x``) what lies above ``hi - v * (hi - lo)``; v in [0, 1]."""
    lo, hi = _range(x)
    threshold = hi - _per_sample(x, v) * (hi - lo)
    return torch.where(x > threshold, lo + hi - x, x)


def posterize(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Keep ``8 - round(v)`` bits of the sample's range (8 bits: unchanged)."""
    bits = 8 - torch.round(v)
    if bool((bits >= 8).all()):
        return x
    lo, hi = _range(x)
    levels = _per_sample(x, 2.0**bits)
    u = ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    q = torch.floor(u * levels).clamp(max=levels - 1) / levels
    out = lo + q * (hi - lo)
    return torch.where(_per_sample(x, bits) >= 8, x, out)


def _resample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``x`` sampled at ``grid``: images fill what is uncovered with their ``lo`` (black),
    signals extend their edge values."""
    if x.dim() == 4:
        lo = _range(x)[0]
        return lo + F.grid_sample(x - lo, grid, mode="bilinear", align_corners=False)
    out = F.grid_sample(
        x.unsqueeze(2), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.squeeze(2)


def _affine_grid(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)


def _theta(v: torch.Tensor) -> torch.Tensor:
    theta = torch.zeros(len(v), 2, 3, dtype=v.dtype)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    return theta


def rotate_grid(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate by ``v`` degrees about the centre."""
    rad = v * (math.pi / 180)
    theta = _theta(v)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(rad), -torch.sin(rad)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(rad), torch.cos(rad)
    return _affine_grid(x, theta)


def shear_x_grid(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    theta = _theta(v)
    theta[:, 0, 1] = v
    return _affine_grid(x, theta)


def shear_y_grid(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    theta = _theta(v)
    theta[:, 1, 0] = v
    return _affine_grid(x, theta)


def translate_x_grid(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Translate by ``v`` of the width."""
    theta = _theta(v)
    theta[:, 0, 2] = 2 * v
    return _affine_grid(x, theta)


def translate_y_grid(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Translate by ``v`` of the height."""
    theta = _theta(v)
    theta[:, 1, 2] = 2 * v
    return _affine_grid(x, theta)


def _geometric(grid: GridFn) -> OpFn:
    def op(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return _resample(x, grid(x, v))

    op.__doc__ = grid.__doc__
    return op


rotate = _geometric(rotate_grid)
shear_x = _geometric(shear_x_grid)
shear_y = _geometric(shear_y_grid)
translate_x = _geometric(translate_x_grid)
translate_y = _geometric(translate_y_grid)


def _cutout_mask(sizes: tuple[int, ...], v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(k, *sizes) 1 inside a box of side ``round(v * size)`` per axis at a random centre
    (it may hang over the border, as in DeVries & Taylor's cutout)."""
    k = len(v)
    mask = torch.ones(k, *sizes, dtype=torch.bool)
    for axis, size in enumerate(sizes):
        side = torch.round(v * size)
        centre = torch.floor(torch.rand(k, generator=gen) * size)
        start, stop = centre - torch.floor(side / 2), centre - torch.floor(side / 2) + side
        pos = torch.arange(size, dtype=v.dtype)
        inside = (pos >= start[:, None]) & (pos < stop[:, None])  # (k, size)
        shape = [k] + [1] * len(sizes)
        shape[axis + 1] = size
        mask &= inside.reshape(shape)
    return mask


def cutout(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Fill a box of side ``v`` of the image (of the signal's length in 1-D) with the
    sample's mean, across all channels."""
    mask = _cutout_mask(tuple(x.shape[2:]), v, gen).unsqueeze(1)
    return torch.where(mask, _mean(x), x)


# -- signal ops (k, C, L) ---------------------------------------------------------------------


def _time_grid(t: torch.Tensor) -> torch.Tensor:
    """grid_sample's grid for signals seen as (k, C, 1, L) images, at positions ``t`` (k, L)."""
    return torch.stack([t, torch.zeros_like(t)], dim=-1).unsqueeze(1)  # (k, 1, L, 2)


def _positions(x: torch.Tensor) -> torch.Tensor:
    length = x.shape[-1]
    return ((torch.arange(length, dtype=x.dtype) + 0.5) * 2 / length - 1).expand(len(x), length)


def shift(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Roll by ``round(v * L)`` steps, circularly (what wraps off one end comes in at the
    other, as mnist1d's own generator translates; no edge value is invented)."""
    length = x.shape[-1]
    steps = torch.round(v * length).long()
    index = (torch.arange(length) - steps[:, None]) % length  # (k, L)
    return torch.gather(x, -1, index[:, None, :].expand(-1, x.shape[1], -1))


def trend(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Add a linear ramp from ``-v/2`` to ``+v/2`` of the sample's range over the length
    (a drifting baseline; mnist1d's generator "shears" its signals this way)."""
    lo, hi = _range(x)
    ramp = torch.linspace(-0.5, 0.5, x.shape[-1], dtype=x.dtype)
    return x + _per_sample(x, v) * (hi - lo) * ramp


def scale(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Amplitude x ``1 + v`` about each channel's mean."""
    mean = x.mean(-1, keepdim=True)
    return mean + (1 + _per_sample(x, v)) * (x - mean)


def noise(x: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Add Gaussian noise of ``v`` x the sample's standard deviation."""
    std = x.flatten(1).std(1, unbiased=False) if x.shape[1] * x.shape[2] > 1 else v * 0
    eps = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x + _per_sample(x, v * std) * eps


def stretch_grid(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Stretch time by ``1 + v`` about the centre (length kept; edges extend)."""
    return _time_grid(_positions(x) / (1 + v[:, None]))


def warp_grid(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Smooth monotone time warp: position t -> t + v (1 - t^2) / 2 (|v| < 1 keeps order),
    one half of the signal slowed, the other sped up; the ends stay put."""
    t = _positions(x)
    return _time_grid(t + v[:, None] * (1 - t * t) / 2)


stretch = _geometric(stretch_grid)
warp = _geometric(warp_grid)


IMAGE_OPS: dict[str, AugmentOp] = {
    # strengths at magnitude 30: RandAugment as torchvision, TrivialAugmentWide's wide ranges
    "identity": AugmentOp(identity, 0.0, 0.0, False),
    "brightness": AugmentOp(brightness, 0.9, 0.99, True),
    "contrast": AugmentOp(contrast, 0.9, 0.99, True),
    "sharpness": AugmentOp(sharpness, 0.9, 0.99, True),
    "solarize": AugmentOp(solarize, 1.0, 1.0, False),
    "posterize": AugmentOp(posterize, 4.0, 6.0, False),
    "rotate": AugmentOp(rotate, 30.0, 135.0, True, rotate_grid),
    "shear_x": AugmentOp(shear_x, 0.3, 0.99, True, shear_x_grid),
    "shear_y": AugmentOp(shear_y, 0.3, 0.99, True, shear_y_grid),
    "translate_x": AugmentOp(translate_x, 150 / 331, 0.5, True, translate_x_grid),
    "translate_y": AugmentOp(translate_y, 150 / 331, 0.5, True, translate_y_grid),
    "cutout": AugmentOp(cutout, 0.5, 0.6, False),
}
"""Ops for ``(N, C, H, W)`` batches, by name."""

SIGNAL_OPS: dict[str, AugmentOp] = {
    "identity": AugmentOp(identity, 0.0, 0.0, False),
    "shift": AugmentOp(shift, 0.3, 0.5, True),
    "trend": AugmentOp(trend, 0.5, 0.9, True),
    "scale": AugmentOp(scale, 0.5, 0.9, True),
    "noise": AugmentOp(noise, 0.3, 0.5, False),
    "stretch": AugmentOp(stretch, 0.3, 0.5, True, stretch_grid),
    "warp": AugmentOp(warp, 0.5, 0.9, True, warp_grid),
    "cutout": AugmentOp(cutout, 0.3, 0.5, False),
}
"""Ops for ``(N, C, L)`` batches, by name (no flips)."""


def ops_for(x: torch.Tensor) -> dict[str, AugmentOp]:
    """The op table for ``x``'s layout; raises ValueError for anything but 3-D or 4-D."""
    if x.dim() == 4:
        return IMAGE_OPS
    if x.dim() == 3:
        return SIGNAL_OPS
    raise ValueError(
        f"train.augment: expected (N, C, H, W) images or (N, C, L) signals, got shape "
        f"{tuple(x.shape)}"
    )


def apply_op(
    name: str,
    x: torch.Tensor,
    magnitude: torch.Tensor | int,
    gen: torch.Generator,
    wide: bool = False,
    sign: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply op ``name`` to every sample of ``x`` at ``magnitude`` (0..30, per sample or one).

    ``sign`` (k,) of +-1 for signed ops (default +1); ``wide`` picks TrivialAugmentWide's
    ranges. Samples whose strength is 0 come back unchanged (bit for bit).
    """
    op = ops_for(x)[name]
    mag = torch.as_tensor(magnitude, dtype=x.dtype).expand(len(x))
    strength = mag / MAX_MAGNITUDE * (op.ta_max if wide else op.ra_max)
    if op.signed and sign is not None:
        strength = strength * sign.to(x.dtype)
    active = strength != 0
    if not bool(active.any()):
        return x
    out = x.clone()
    out[active] = op.fn(x[active], strength[active], gen)
    return out


def _apply_layer(
    x: torch.Tensor,
    ops: dict[str, AugmentOp],
    choice: torch.Tensor,
    magnitude: torch.Tensor,
    sign: torch.Tensor,
    gen: torch.Generator,
    wide: bool,
) -> torch.Tensor:
    """One layer: sample i gets op ``choice[i]`` at ``magnitude[i]`` with ``sign[i]``; the
    geometric samples are resampled together in one call."""
    table = list(ops.values())
    top = torch.tensor([op.ta_max if wide else op.ra_max for op in table], dtype=x.dtype)
    signed = torch.tensor([op.signed for op in table])
    strength = magnitude / MAX_MAGNITUDE * top[choice]
    strength = torch.where(signed[choice], strength * sign.to(x.dtype), strength)
    active = strength != 0
    out = x.clone()
    moved: list[torch.Tensor] = []
    grids: list[torch.Tensor] = []
    for index, op in enumerate(table):
        idx = torch.nonzero((choice == index) & active).squeeze(1)
        if idx.numel() == 0:
            continue
        if op.grid is not None:
            moved.append(idx)
            grids.append(op.grid(x[idx], strength[idx]))
        else:
            out[idx] = op.fn(x[idx], strength[idx], gen)
    if moved:
        idx = torch.cat(moved)
        out[idx] = _resample(x[idx], torch.cat(grids))
    return out


@torch.no_grad()
def rand_augment(x: torch.Tensor, gen: torch.Generator, n: int = 2, m: int = 9) -> torch.Tensor:
    """RandAugment (Cubuk et al. 2020): ``n`` ops in a row, each chosen uniformly per sample,
    all at magnitude ``m`` (0..30) with a random sign per sample."""
    ops = ops_for(x)
    for _ in range(n):
        choice = torch.randint(len(ops), (len(x),), generator=gen)
        sign = torch.randint(2, (len(x),), generator=gen) * 2 - 1
        magnitude = torch.full((len(x),), float(m), dtype=x.dtype)
        x = _apply_layer(x, ops, choice, magnitude, sign, gen, wide=False)
    return x


@torch.no_grad()
def trivial_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """TrivialAugmentWide (Mueller & Hutter 2021): one op per sample, chosen uniformly, at a
    magnitude drawn uniformly from 0..30 per sample, over the wide ranges."""
    ops = ops_for(x)
    choice = torch.randint(len(ops), (len(x),), generator=gen)
    sign = torch.randint(2, (len(x),), generator=gen) * 2 - 1
    magnitude = torch.randint(MAX_MAGNITUDE + 1, (len(x),), generator=gen).to(x.dtype)
    return _apply_layer(x, ops, choice, magnitude, sign, gen, wide=True)


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``augment: shift``: the whole batch rolled by one random -2..2 pixel offset per axis
    (the original augmentation; kept draw for draw so old runs repeat exactly)."""
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    dims = (-1,) if x.dim() == 3 else (-2, -1)
    shifts = (dx,) if x.dim() == 3 else (dy, dx)
    return torch.roll(x, shifts=shifts, dims=dims)


def augment_batch(
    x: torch.Tensor, kind: str, gen: torch.Generator, n: int = 2, m: int = 9
) -> torch.Tensor:
    """The training batch ``x`` augmented by ``kind`` (one of :data:`AUGMENTS`); draws only
    from ``gen`` (nothing for ``none``)."""
    if kind == "none":
        return x
    if kind == "shift":
        return random_shift(x, gen)
    if kind == "randaugment":
        return rand_augment(x, gen, n, m)
    if kind == "trivialaugment":
        return trivial_augment(x, gen)
    raise ValueError(f"train.augment: expected one of {', '.join(AUGMENTS)}, got {kind!r}")
