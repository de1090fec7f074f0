"""Single-path supernets: one network holding the weights of every arch of a space.

``Supernet(space)(x, arch)`` runs ``arch`` with shared weights: only the ops ``arch`` chooses are
computed (one op per NB201 edge, one choice block per mobile block), so one training step costs
what one stand-alone net costs. :meth:`Supernet.extract` returns the stand-alone network
``space.build(arch)`` with the supernet's weights copied in, which computes the same function
as ``supernet(x, arch)`` in eval mode (the tests check it).

Bodies are registered per space name with :func:`register_supernet`; ``nb201`` is defined
here, ``mobile`` in :mod:`nasforge.oneshot.supernet_mobile` (registered here by import path,
loaded when first used). A body is an ``nn.Module`` with ``forward(x, arch)`` and
``inherited_key(key, arch) -> str``: the supernet key of a parameter or buffer of the
stand-alone net (its tensor is sliced to the stand-alone shape when it is larger: shared
widths).

``nb201`` weights: every edge of every cell owns one module per op (SPOS: choices do not share
weights); the stem, the residual reductions and the head are shared by all archs. Edges the
space prunes (``prune_dead_edges``) are not run, exactly as :meth:`NB201Space.build` leaves them
out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from nasforge.errors import ConfigError
from nasforge.nn.cells import Edge, ResNetBasicBlock, make_op, run_dag
from nasforge.registry import resolve_factory
from nasforge.space import SearchSpace
from nasforge.spaces.nb201 import EDGES, NUM_NODES, NB201Space, edge_label, live_edges


class SupernetBody(Protocol):
    """What a registered builder returns (an ``nn.Module`` keeping this contract)."""

    def __call__(self, x: torch.Tensor, arch: Mapping[str, Any]) -> torch.Tensor: ...

    def inherited_key(self, key: str, arch: Mapping[str, Any]) -> str: ...


SupernetBuilder = Callable[..., nn.Module]
"""``builder(space, **options) -> body``: an ``nn.Module`` with ``forward(x, arch)`` and
``inherited_key(key, arch)``."""

_BUILDERS: dict[str, str | SupernetBuilder] = {}


def register_supernet(space_name: str, builder: str | SupernetBuilder) -> None:
    """Register the single-path supernet of the space called ``space_name``.

    Args:
        space_name: the space's registry name (``space.name``); a later call replaces it.
        builder: ``builder(space, **options)`` returning the body (see :class:`SupernetBody`),
            or an import path ``"module:attr"`` to one (imported when first used).
    """
    _BUILDERS[space_name] = builder


def supernet_spaces() -> list[str]:
    """The space names that have a single-path supernet, sorted."""
    return sorted(_BUILDERS)


class Supernet(nn.Module):
    """The single-path supernet of ``space``: every arch of the space runs with shared weights.

    Args:
        space: the search space (its ``name`` selects the registered body).
        **options: passed to the body's builder (none for the built-in ones).

    Raises:
        ConfigError: no supernet is registered for the space (names the ones that are).
    """

    def __init__(self, space: SearchSpace, **options: Any) -> None:
        super().__init__()
        if space.name not in _BUILDERS:
            raise ConfigError(
                f"space: no single-path supernet for space {space.name!r}; available: "
                f"{', '.join(supernet_spaces())} (register one with register_supernet)"
            )
        self.space = space
        builder = resolve_factory(_BUILDERS[space.name], lambda f: None)
        self.body: nn.Module = builder(space, **options)

    def forward(self, x: torch.Tensor, arch: Mapping[str, Any]) -> torch.Tensor:
        """Logits of ``arch`` on ``x``, computing only the ops ``arch`` chooses.

        Raises:
            SpaceError: ``arch`` is not in the space.
        """
        self.space.validate(arch)
        out: torch.Tensor = self.body(x, arch)
        return out

    @torch.no_grad()
    def extract(self, arch: Mapping[str, Any]) -> nn.Module:
        """``space.build(arch)`` with the weights (and BN statistics) this supernet holds for
        ``arch``; a new module, in eval mode, sharing no storage with the supernet."""
        net: nn.Module = self.space.build(arch)  # type: ignore[arg-type]
        own = self.body.state_dict()
        state = {}
        for key, tensor in net.state_dict().items():
            src_key = self.body.inherited_key(key, arch)  # type: ignore[operator]
            if src_key not in own:
                raise KeyError(f"supernet has no tensor {src_key!r} for stand-alone {key!r}")
            state[key] = slice_to(own[src_key], tensor.shape).clone()
        net.load_state_dict(state)
        return net.eval()


def slice_to(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The leading block of ``tensor`` with ``shape`` (shared widths keep the first channels).

    Raises:
        ValueError: ``shape`` is larger than ``tensor`` in some dimension or of another rank.
    """
    if tensor.dim() != len(shape) or any(s > t for s, t in zip(shape, tensor.shape)):
        raise ValueError(f"cannot slice a tensor of shape {tuple(tensor.shape)} to {tuple(shape)}")
    if tuple(tensor.shape) == tuple(shape):
        return tensor
    return tensor[tuple(slice(0, s) for s in shape)]


# -- nb201 ------------------------------------------------------------------------------------
class NB201SuperCell(nn.Module):
    """An NB201 cell with one module per op on every edge: ``edges[edge_<d>_<s>][op]``."""

    def __init__(self, ops: Sequence[str], channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleDict(
            {
                edge_label(d, s): nn.ModuleDict({op: make_op(op, channels, channels) for op in ops})
                for d, s in EDGES
            }
        )

    def forward(self, x: torch.Tensor, edges: Sequence[Edge]) -> torch.Tensor:
        """Run the cell with ``edges`` ``(src, dst, op)`` (sorted by source, as NB201Cell)."""
        table: Any = self.edges
        chosen = [(s, d, table[edge_label(d, s)][op]) for s, d, op in edges]
        nodes = run_dag([x] + [None] * (NUM_NODES - 1), chosen, False, x)
        out = nodes[-1]
        return x.mul(0.0) if out is None else out


class NB201Supernet(nn.Module):
    """The NB201 network skeleton (:class:`~nasforge.nn.cells.NB201Network`, same module names)
    with :class:`NB201SuperCell` cells; stem, reductions and head are shared by every arch."""

    _EDGE_KEY = re.compile(r"^cells\.(\d+)\.edges\.(edge_\d_\d)\.(.+)$")

    def __init__(self, space: NB201Space) -> None:
        super().__init__()
        c, n = space.C, space.N
        self.prune = space.prune_dead_edges
        self.stem = nn.Sequential(
            nn.Conv2d(space.input_shape[0], c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        )
        cells: list[nn.Module] = []
        c_prev = c
        for stage, width in enumerate((c, 2 * c, 4 * c)):
            if stage > 0:
                cells.append(ResNetBasicBlock(c_prev, width, 2))
            cells.extend(NB201SuperCell(space.ops, width) for _ in range(n))
            c_prev = width
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, space.num_classes)

    def edges(self, arch: Mapping[str, Any]) -> list[Edge]:
        """The ``(src, dst, op)`` edges the stand-alone net of ``arch`` has, sorted by source."""
        if self.prune:
            chosen = live_edges(arch)
        else:
            chosen = [(s, d, str(arch[edge_label(d, s)])) for d, s in EDGES]
        return sorted(chosen)

    def forward(self, x: torch.Tensor, arch: Mapping[str, Any]) -> torch.Tensor:
        edges = self.edges(arch)
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x, edges) if isinstance(cell, NB201SuperCell) else cell(x)
        x = self.global_pooling(self.lastact(x)).flatten(1)
        out: torch.Tensor = self.classifier(x)
        return out

    def inherited_key(self, key: str, arch: Mapping[str, Any]) -> str:
        """``cells.<i>.edges.<edge>.<rest>`` of the stand-alone net reads the chosen op's module;
        every other key is the same in both nets."""
        m = self._EDGE_KEY.match(key)
        if m is None:
            return key
        i, edge, rest = m.groups()
        return f"cells.{i}.edges.{edge}.{arch[edge]}.{rest}"


def _nb201(space: SearchSpace, **options: Any) -> nn.Module:
    if options:
        raise ConfigError(f"supernet options: nb201 takes none, got {sorted(options)}")
    if not isinstance(space, NB201Space):
        raise ConfigError(f"space: the nb201 supernet needs an NB201Space, got {type(space)}")
    return NB201Supernet(space)


register_supernet("nb201", _nb201)
register_supernet("mobile", "nasforge.oneshot.supernet_mobile:mobile_supernet")
