"""The ``scaling:`` section: compound scaling of a base mobile arch (``nasforge scale``).

EfficientNet's recipe (Tan & Le 2019) with its naming: depth ``alpha``, width ``beta``,
resolution ``gamma``. Step 1 trains the base arch scaled by every grid point
``(alpha, beta, gamma)`` with ``alpha * beta**2 * gamma**2`` within ``tol`` of ``target``
(about 2: each step of ``phi`` doubles the FLOPs) and keeps the most accurate on the
validation split; step 2 scales the base by ``alpha**phi, beta**phi, gamma**phi`` for
``phi = 0..phis`` (the family B0..Bk); step 3 scales one dimension at a time to the family's
measured latencies (the baselines). See :mod:`nasforge.experiment.scaling`.

Example::

    scaling:
      base: runs/search1/best/arch.json   # or an arch mapping; default: a small B0
      grid: {alpha: [1.1, 1.2, 1.3], beta: [1.0, 1.1], gamma: [1.1, 1.15, 1.2]}
      target: 2.0
      tol: 0.15
      max_points: 4      # grid points trained, the closest to the target first
      phis: 3            # B0..B3
      epochs: 5          # default: train.epochs
      seeds: 2           # accuracy is the mean over seeds
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Baseline = Literal["width", "depth", "resolution"]
#: the single-dimension baselines (scaled alone to the family's latencies)
BASELINES: tuple[Baseline, ...] = ("width", "depth", "resolution")


def _steps(low: float, high: float, step: float) -> list[float]:
    n = round((high - low) / step)
    return [round(low + i * step, 4) for i in range(n + 1)]


class ScalingGrid(BaseModel):
    """Candidate multipliers per dimension (default as EfficientNet's search: depth alpha
    1.0..1.4, width beta 1.0..1.2, resolution gamma 1.0..1.3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: list[float] = Field(default_factory=lambda: _steps(1.0, 1.4, 0.1))
    beta: list[float] = Field(default_factory=lambda: _steps(1.0, 1.2, 0.05))
    gamma: list[float] = Field(default_factory=lambda: _steps(1.0, 1.3, 0.05))

    @field_validator("alpha", "beta", "gamma")
    @classmethod
    def _at_least_one(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("must list at least one multiplier")
        for x in v:
            if not 1.0 <= x <= 4.0:
                raise ValueError(f"{x} is not a multiplier in [1, 4] (scaling grows the base)")
        return v


class ScalingSection(BaseModel):
    """What ``nasforge scale`` runs (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: dict[str, Any] | str | None = Field(
        None,
        description="the base arch: a mapping of labels, a path to an arch.json (a run's "
        "best/arch.json) or a run / best directory; default a small B0",
    )
    grid: ScalingGrid = ScalingGrid()
    target: float = Field(2.0, gt=1.0, description="alpha * beta^2 * gamma^2 aimed at")
    tol: float = Field(0.1, gt=0.0, description="how far a grid point's product may be off")
    max_points: int = Field(6, ge=1, description="grid points trained (closest first)")
    phis: int = Field(3, ge=1, description="the family is B0..B<phis>")
    epochs: int | None = Field(None, ge=1, description="training epochs (default train.epochs)")
    seeds: int = Field(1, ge=1, le=20, description="seeds per point; accuracy is their mean")
    baselines: list[Baseline] = Field(default_factory=lambda: list(BASELINES))
    ladder: int = Field(
        12, ge=2, le=64, description="candidate multipliers measured per baseline dimension"
    )

    @field_validator("base")
    @classmethod
    def _base_not_empty(cls, v: dict[str, Any] | str | None) -> dict[str, Any] | str | None:
        if isinstance(v, str) and not v.strip():
            raise ValueError("must be an arch mapping or a path, not an empty string")
        if isinstance(v, dict) and not v:
            raise ValueError("an empty mapping is no arch (omit base: for the default B0)")
        return v

    @model_validator(mode="after")
    def _grid_has_a_point(self) -> ScalingSection:
        if not self.grid_points():
            best = min(self._all_points(), key=lambda p: abs(_product(p) - self.target))
            raise ValueError(
                f"scaling.grid: no (alpha, beta, gamma) has alpha*beta^2*gamma^2 within "
                f"tol {self.tol} of target {self.target}; the closest is {best} with "
                f"{_product(best):.3f} (widen the grid or raise scaling.tol)"
            )
        return self

    def _all_points(self) -> list[tuple[float, float, float]]:
        g = self.grid
        return [tuple(p) for p in itertools.product(g.alpha, g.beta, g.gamma)]  # type: ignore[misc]

    def grid_points(self) -> list[tuple[float, float, float]]:
        """The grid points within ``tol`` of ``target``, closest first (ties in grid
        order), at most ``max_points``."""
        near = [p for p in self._all_points() if abs(_product(p) - self.target) <= self.tol]
        near.sort(key=lambda p: abs(_product(p) - self.target))
        return near[: self.max_points]


def _product(p: tuple[float, float, float]) -> float:
    a, b, g = p
    return a * b * b * g * g
