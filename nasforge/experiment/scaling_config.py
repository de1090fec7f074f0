"""The ``scaling:`` section: compound scaling of a base mobile arch (issue 15).
CONTRACT SKELETON -- fleshed out by the compound-scaling work."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ScalingSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base: dict[str, Any] | str | None = None
    phis: int = Field(3, ge=1)
    target: float = Field(2.0, gt=1.0)
