"""Framework-agnostic search-space primitives."""

from nasforge.space.arch import Arch, Value
from nasforge.space.base import SearchSpace
from nasforge.space.dims import Categorical, Condition, Dimension, Float, Int

__all__ = ["Arch", "Categorical", "Condition", "Dimension", "Float", "Int", "SearchSpace", "Value"]
