"""Zero-cost proxy measures and the learned combiner (see :mod:`nasforge.evaluators.proxy`)."""

from nasforge.evaluators.proxies.measures import DATA_FREE, PROXIES

__all__ = ["DATA_FREE", "PROXIES"]
