"""The ``automl:`` section: training-recipe and compression dimensions searched jointly with
the architecture (issue 15). CONTRACT SKELETON -- fleshed out by the joint-space work.

``recipe``: ``train:`` field -> a list of choices (``optimizer: [sgd, adamw]``) or a range
(``lr: {low: 0.01, high: 0.3, log: true}``); ``compress``: ``prune_ratio`` / ``bits`` -> a
list of choices.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AutomlSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: dict[str, Any] = Field(default_factory=dict)
    compress: dict[str, Any] = Field(default_factory=dict)
