"""Framework-agnostic search-space primitives."""

from nasforge.space.arch import Arch, Value
from nasforge.space.base import SearchSpace
from nasforge.space.dims import Categorical, Condition, Dimension, Float, Int
from nasforge.space.plan import Cell, LayerSpec, NotDecomposable, Plan, Segment, plan_layers

__all__ = [
    "Arch",
    "Categorical",
    "Cell",
    "Condition",
    "Dimension",
    "Float",
    "Int",
    "LayerSpec",
    "NotDecomposable",
    "Plan",
    "SearchSpace",
    "Segment",
    "Value",
    "plan_layers",
]
