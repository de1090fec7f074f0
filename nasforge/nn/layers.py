"""Layer factories: op name -> a callable that builds one ``nn.Module`` from its arguments.

A space's layer plan (:mod:`nasforge.space.plan`) names each layer by ``op``; latency tables
build each layer alone through the factory registered under that name and time it. Spaces
register their own factories when their module is imported::

    register_layer("mine.block", lambda args, in_shape: MyBlock(*args))

Contract of a factory: ``factory(args, in_shape) -> nn.Module`` where ``args`` is the
layer's tuple of JSON scalars and ``in_shape`` its per-sample input shape (no batch
dimension); the module takes one ``(batch, *in_shape)`` tensor. Generic cell plumbing is
registered here: ``sum`` (``k`` inputs added), ``concat`` (``k`` inputs joined on channels),
``zero``, ``conv3x3_bn`` (a 3x3 conv + BN stem) and ``pool_linear`` (pool + classifier).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from nasforge.errors import NasforgeError

LayerFactory = Callable[[tuple[Any, ...], tuple[int, ...]], nn.Module]


class LayerFactoryError(NasforgeError):
    """A layer op is not registered, or a registration is malformed."""


class LayerLike(Protocol):
    """What :func:`build_layer` reads (a :class:`~nasforge.space.plan.LayerSpec` fits)."""

    @property
    def op(self) -> str: ...

    @property
    def args(self) -> tuple[Any, ...]: ...

    @property
    def in_shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class _Entry:
    factory: LayerFactory
    forked: bool


_FACTORIES: dict[str, _Entry] = {}


def register_layer(op: str, factory: LayerFactory, *, forked: bool = False) -> None:
    """Register ``factory`` under ``op`` (see the module docstring for its contract).

    Args:
        op: the name plans use in :attr:`LayerSpec.op`, e.g. ``"mine.block"``.
        factory: ``factory(args, in_shape) -> nn.Module``.
        forked: the op runs as a cell edge that the ``torch:parallel`` backend forks onto
            the inter-op pool (its table entries are then timed forked too).

    Raises:
        LayerFactoryError: ``op`` is empty, ``factory`` is not callable, or ``op`` is
            already registered to another factory.
    """
    if not isinstance(op, str) or not op:
        raise LayerFactoryError(f"register_layer: op must be a non-empty str, got {op!r}")
    if not callable(factory):
        raise LayerFactoryError(f"register_layer({op!r}): factory {factory!r} is not callable")
    entry = _Entry(factory, bool(forked))
    old = _FACTORIES.get(op)
    if old is not None and old != entry:
        raise LayerFactoryError(
            f"register_layer({op!r}): already registered to {old.factory!r}; pick another op name"
        )
    _FACTORIES[op] = entry


def registered_layers() -> list[str]:
    """Every registered op name, sorted."""
    return sorted(_FACTORIES)


def is_forked(op: str) -> bool:
    """Whether ``op`` was registered with ``forked=True`` (a cell edge on ``torch:parallel``)."""
    entry = _FACTORIES.get(op)
    return entry is not None and entry.forked


def build_layer(spec: LayerLike) -> nn.Module:
    """A fresh module for ``spec`` in eval mode (takes one ``(batch, *spec.in_shape)`` tensor).

    Raises:
        LayerFactoryError: no factory is registered for ``spec.op`` (names the op, the known
            ones, and that the space's module registers them when imported).
    """
    entry = _FACTORIES.get(spec.op)
    if entry is None:
        raise LayerFactoryError(
            f"layer op {spec.op!r} has no registered factory (import the module of the space "
            f"that registers it); registered: {', '.join(registered_layers())}"
        )
    return entry.factory(tuple(spec.args), tuple(spec.in_shape)).eval()


# -- generic plan ops ---------------------------------------------------------------------------
class SumOf(nn.Module):
    """``k`` inputs summed (timed on one input added to itself ``k - 1`` times)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(self.k - 1):
            y = y + x
        return y


class ConcatOf(nn.Module):
    """``k`` inputs concatenated on channels (timed on one input repeated)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] * self.k, dim=1)


class ZeroOf(nn.Module):
    """A cell without live edges: outputs zeros shaped like its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def _conv3x3_bn(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    cin, cout = args
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))


def _pool_linear(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    c, num_classes = args
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, num_classes))


def _sum(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    return SumOf(*args)


def _concat(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    return ConcatOf(*args)


def _zero(args: tuple[Any, ...], in_shape: tuple[int, ...]) -> nn.Module:
    return ZeroOf()


register_layer("sum", _sum)
register_layer("concat", _concat)
register_layer("zero", _zero)
register_layer("conv3x3_bn", _conv3x3_bn)
register_layer("pool_linear", _pool_linear)

__all__ = [
    "ConcatOf",
    "LayerFactory",
    "LayerFactoryError",
    "LayerLike",
    "SumOf",
    "ZeroOf",
    "build_layer",
    "is_forked",
    "register_layer",
    "registered_layers",
]
