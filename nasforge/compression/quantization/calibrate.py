"""Activation range calibration: min-max, percentile, MSE and entropy (KL) from histograms.

An :class:`RangeObserver` sees a tensor over calibration batches in two passes: the first
records min/max, the second a fixed-bin histogram over that span. ``compute_range`` then
picks ``(lo, hi)`` by the chosen method; the quantization grid is asymmetric uint8 or
symmetric int8 (see :func:`qparams`).
"""

from __future__ import annotations

import math
from typing import cast

import torch

CALIBRATIONS = ("minmax", "percentile", "mse", "entropy")
N_BINS = 2048


def qparams(lo: float, hi: float, signed: bool) -> tuple[float, int]:
    """(scale, zero_point) of a range; the range always contains 0 so that 0 is exact.

    Unsigned: asymmetric over [0, 255]. Signed: symmetric over [-127, 127] (zero point 0).
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if signed:
        scale = max(abs(lo), abs(hi)) / 127.0
        return (scale if scale > 0 else 1e-8), 0
    scale = (hi - lo) / 255.0
    if scale <= 0:
        return 1e-8, 0
    zp = round(-lo / scale)
    return scale, max(0, min(255, zp))


def _quant_error(
    centers: torch.Tensor, counts: torch.Tensor, lo: float, hi: float, signed: bool
) -> float:
    scale, zp = qparams(lo, hi, signed)
    qmin, qmax = (-127, 127) if signed else (0, 255)
    q = torch.clamp(torch.round(centers / scale) + zp, qmin, qmax)
    return float((counts * (centers - (q - zp) * scale) ** 2).sum())


def _kl_range(hist: torch.Tensor, lo: float, hi: float) -> tuple[float, float]:
    """TensorRT-style entropy calibration on the span [lo, hi]: choose the clipping that
    minimises KL(P || Q) between the clipped histogram and its 256-level quantisation.
    Both ends shrink together (ranges keep their shape), which also serves signed data."""
    n = hist.numel()
    levels = 256
    best, best_i = math.inf, n
    total = float(hist.sum())
    if total == 0:
        return lo, hi
    # Bins are centred on the zero point so that shrinking keeps 0 inside the range.
    zero_bin = round(-lo / (hi - lo) * n) if hi > lo else 0
    for i in range(levels, n + 1, 16):
        left = max(0, zero_bin - round(zero_bin * i / n))
        right = min(n, left + i)
        p = hist[left:right].clone().double()
        p[0] += float(hist[:left].sum())
        p[-1] += float(hist[right:].sum())
        chunks = torch.tensor_split(hist[left:right].double(), levels)
        q = torch.cat(
            [
                torch.where(c > 0, c.sum() / max(int((c > 0).sum()), 1), torch.zeros_like(c))
                for c in chunks
            ]
        )
        pm, qm = p / p.sum(), q / max(float(q.sum()), 1e-12)
        mask = pm > 0
        kl = float((pm[mask] * torch.log(pm[mask] / torch.clamp(qm[mask], min=1e-12))).sum())
        if kl < best:
            best, best_i = kl, i
            best_lr = (left, right)
    if best_i == n:
        return lo, hi
    width = (hi - lo) / n
    left, right = best_lr
    return lo + left * width, lo + right * width


class RangeObserver:
    """Collects statistics of one tensor and returns its calibrated range."""

    def __init__(self, method: str = "minmax", percentile: float = 99.99) -> None:
        if method not in CALIBRATIONS:
            raise ValueError(
                f"quantize.calibration: expected one of {CALIBRATIONS}, got {method!r}"
            )
        self.method = method
        self.percentile = percentile
        self.lo, self.hi = math.inf, -math.inf
        self.hist: torch.Tensor | None = None
        self.span: tuple[float, float] | None = None

    @property
    def needs_histogram(self) -> bool:
        return self.method != "minmax"

    def observe_minmax(self, x: torch.Tensor) -> None:
        x = x.detach()
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def observe_hist(self, x: torch.Tensor) -> None:
        if self.span is None:
            self.span = (min(self.lo, 0.0), max(self.hi, 0.0))
            self.hist = torch.zeros(N_BINS)
        lo, hi = self.span
        if hi <= lo:
            return
        counts = torch.histc(x.detach().float().clamp(lo, hi), N_BINS, lo, hi)
        self.hist = cast(torch.Tensor, self.hist) + counts

    def compute_range(self, signed: bool = False) -> tuple[float, float]:
        if not math.isfinite(self.lo):
            return 0.0, 1.0
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if self.method == "minmax" or self.hist is None or self.span is None:
            return lo, hi
        lo, hi = self.span
        hist = self.hist
        width = (hi - lo) / N_BINS
        if self.method == "percentile":
            cdf = torch.cumsum(hist, 0) / max(float(hist.sum()), 1.0)
            tail = (100.0 - self.percentile) / 100.0
            i_lo = int(torch.searchsorted(cdf, torch.tensor(tail / 2)))
            i_hi = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail / 2)))
            return min(lo + i_lo * width, 0.0), max(lo + (i_hi + 1) * width, 0.0)
        if self.method == "mse":
            centers = lo + (torch.arange(N_BINS, dtype=torch.float64) + 0.5) * width
            counts = hist.double()
            best, best_r = math.inf, (lo, hi)
            for a in torch.linspace(0.2, 1.0, 41).tolist():
                err = _quant_error(centers, counts, lo * a, hi * a, signed)
                if err < best:
                    best, best_r = err, (lo * a, hi * a)
            return best_r
        return _kl_range(hist, lo, hi)
