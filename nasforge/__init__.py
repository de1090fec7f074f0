"""nasforge: search, scale and compress neural networks for a measured hardware target."""

from nasforge.errors import ConfigError, DataError, NasforgeError, SpaceError
from nasforge.space import Arch, SearchSpace

__version__ = "0.1.0"
__all__ = [
    "Arch",
    "ConfigError",
    "DataError",
    "NasforgeError",
    "SearchSpace",
    "SpaceError",
    "__version__",
]
