"""Channel dependency graph: which channel dimensions must be pruned together.

Built on ``torch.fx``: the model is traced symbolically (conv, linear, BN, activations and
pooling stay leaf modules), then every tensor gets a channel *layout* -- a list of segments,
each a slice of one channel *space*. Ops that tie channels together unify their spaces:
a residual add or broadcast multiply unifies both operands, a depthwise convolution and a
batch norm pass the space through, a concatenation lays spaces side by side. After the walk
each union of spaces is a :class:`ChannelGroup`: the list of parameter slices (``members``)
that must lose the same channel indices.

The walk is a whitelist. An op it does not know raises :class:`UnsupportedModelError` naming
the layer, so a model is either pruned consistently or not at all -- never into a wrong model.
Ops it knows but cannot prune through (grouped convolutions, flattening a spatial map, the
model's input and output) *freeze* the spaces they touch; frozen groups are never pruned.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from nasforge.compression.errors import UnsupportedModelError
from nasforge.compression.pruning.cuts import (
    ChannelDimFn,
    CutFn,
    CutRule,
    cut_rule_for,
    keep_index,
    register_cut_rule,
)
from nasforge.compression.pruning.groups import ChannelGroup, GroupBuilder, Member, Segment
from nasforge.compression.pruning.ops import (
    BINARY,
    BINARY_METHODS,
    BN,
    CAT,
    CONV,
    PASS_FUNCTIONS,
    PASS_METHODS,
    PASS_MODULES,
)
from nasforge.nn.blocks import SqueezeExcite

__all__ = [
    "ChannelGroup",
    "CutRule",
    "DependencyGraph",
    "GroupBuilder",
    "Member",
    "Segment",
    "cut_rule_for",
    "keep_index",
    "register_cut_rule",
    "register_leaf_rule",
    "trace",
]

LeafRule = Callable[[GroupBuilder, str, nn.Module, list[Segment]], list[Segment]]
"""``rule(builder, name, module, in_layout) -> out_layout``: a leaf's channel coupling."""
_LEAF_RULES: dict[type[nn.Module], LeafRule] = {}


def register_leaf_rule(
    cls: type[nn.Module],
    rule: LeafRule,
    cut: CutFn | None = None,
    channel_dim: ChannelDimFn | None = None,
) -> None:
    """Treat modules of ``cls`` as leaves whose channel coupling ``rule`` describes.

    ``rule(builder, name, module, in_layout) -> out_layout`` is called once per call site
    while the graph is built and may call ``builder.add_member`` / ``builder.new_space``.
    Used for blocks that ``torch.fx`` cannot trace (see the squeeze-excite rule below) and
    for new layer types. When the rule adds members on the leaf itself (not only on its
    conv/linear/BN children), pass ``cut`` and/or ``channel_dim`` too: they are registered
    with :func:`register_cut_rule`, so one call makes the layer type prunable.
    """
    _LEAF_RULES[cls] = rule
    if cut is not None or channel_dim is not None:
        register_cut_rule(cls, cut, channel_dim)


class _Tracer(fx.Tracer):
    """Keeps known leaves as modules and records which module each node was traced in."""

    def __init__(self) -> None:
        super().__init__()
        self.nf_scope: list[str] = [""]

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, CONV + BN + (nn.Linear, nn.Flatten) + PASS_MODULES):
            return True
        if type(m) in _LEAF_RULES:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> object:
        self.nf_scope.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.nf_scope.pop()

    def create_node(self, *args: object, **kwargs: object) -> fx.Node:
        node = super().create_node(*args, **kwargs)  # type: ignore[arg-type]
        node.meta["scope"] = self.nf_scope[-1]
        return node


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; a failure names the module being traced."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many types; we re-raise one clear error
        where = tracer.nf_scope[-1] or type(model).__name__
        raise UnsupportedModelError(
            f"layer {where!r}: torch.fx cannot trace it ({type(exc).__name__}: {exc}); "
            "data-dependent control flow is not supported by the channel graph"
        ) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _se_rule(b: GroupBuilder, name: str, m: nn.Module, lay: list[Segment]) -> list[Segment]:
    """Squeeze-excite ``x * gate(expand(act(reduce(mean(x)))))``: reduce/expand couple to x."""
    reduce: Any = m.reduce
    b.add_member(lay, f"{name}.reduce", "in")
    b.add_member(lay, f"{name}.expand", "out")
    inner = [Segment(b.new_space(reduce.out_channels, f"{name}.reduce"), reduce.out_channels)]
    b.add_member(inner, f"{name}.reduce", "out")
    b.add_member(inner, f"{name}.expand", "in")
    return lay


register_leaf_rule(SqueezeExcite, _se_rule)


class DependencyGraph:
    """Coupled channel groups of a model, plus per-layer shapes for a FLOPs estimate.

    Build with :meth:`build`; the model is not modified. ``groups`` lists every group,
    frozen or not, in a stable order (by first appearance in the forward pass).
    """

    def __init__(
        self,
        groups: list[ChannelGroup],
        layer_costs: list[_LayerCost],
        input_shape: tuple[int, ...],
    ) -> None:
        self.groups = groups
        self.by_id = {g.id: g for g in groups}
        self.layer_costs = layer_costs
        self.input_shape = input_shape

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if not g.frozen]

    def estimate_macs(self, keep: Mapping[str, int] | None = None) -> int:
        """Multiply-accumulates of conv/linear layers at batch 1 when group ``g`` keeps
        ``keep[g]`` channels (groups not named keep all). An estimate for choosing ratios;
        reports use measured FLOPs and latency."""
        keep = keep or {}

        def frac(layout: list[tuple[str, int]]) -> float:
            total = sum(n for _, n in layout)
            kept = sum(keep.get(g, n) for g, n in layout)
            return kept / total if total else 1.0

        macs = 0.0
        for c in self.layer_costs:
            f = frac(c.out_layout) if c.depthwise else frac(c.in_layout) * frac(c.out_layout)
            macs += c.macs * f
        return int(macs)

    @classmethod
    def build(cls, model: nn.Module, input_shape: Sequence[int]) -> DependencyGraph:
        """Trace ``model`` on a zero input of shape ``(1, *input_shape)`` and group its channels.

        Raises:
            UnsupportedModelError: an op the graph does not know; the message names the layer.
        """
        gm = trace(model)
        was_training = model.training
        gm.eval()
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
        except Exception as exc:  # noqa: BLE001 - re-raised as a user-facing error
            raise UnsupportedModelError(
                f"model does not run on input shape {tuple(input_shape)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        finally:
            model.train(was_training)
        return _Walker(gm).run(tuple(int(s) for s in input_shape))


@dataclass(frozen=True)
class _LayerCost:
    """MACs of one conv/linear; layouts are ``(group id, length)`` segments."""

    module: str
    macs: int
    in_layout: list[tuple[str, int]]
    out_layout: list[tuple[str, int]]
    depthwise: bool = False


@dataclass(frozen=True)
class _RawCost:
    module: str
    macs: int
    ins: list[Segment]
    outs: list[Segment]
    depthwise: bool = False


def _shape(node: object) -> tuple[int, ...] | None:
    if isinstance(node, fx.Node):
        tm = node.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "shape"):
            return tuple(tm.shape)
    return None


class _Walker:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.b = GroupBuilder()
        self.layout: dict[fx.Node, list[Segment] | None] = {}
        self.module_io: dict[str, tuple[list[Segment], list[Segment]]] = {}
        self.raw_costs: list[_RawCost] = []

    def where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        scope = node.meta.get("scope") or "<model>"
        fn = getattr(node.target, "__name__", str(node.target))
        return f"{scope} ({fn})"

    def lay(self, arg: object) -> list[Segment] | None:
        return self.layout.get(arg) if isinstance(arg, fx.Node) else None

    def run(self, input_shape: tuple[int, ...]) -> DependencyGraph:
        for node in self.gm.graph.nodes:
            self.layout[node] = self.visit(node)
        groups: list[ChannelGroup] = []
        roots = sorted({self.b.find(s) for s in range(len(self.b.parent))})
        gid: dict[int, str] = {}
        for r in roots:
            name = self.b.names[r]
            gid[r] = name if name not in gid.values() else f"{name}#{r}"
            members = tuple(dict.fromkeys(self.b.members[r]))
            if not members:
                continue
            reason = self.b.frozen.get(r, "")
            groups.append(ChannelGroup(gid[r], self.b.size[r], members, bool(reason), reason))

        def ids(segs: list[Segment]) -> list[tuple[str, int]]:
            return [(gid[self.b.find(s.space)], s.length) for s in segs]

        costs = [
            _LayerCost(c.module, c.macs, ids(c.ins), ids(c.outs), c.depthwise)
            for c in self.raw_costs
        ]
        return DependencyGraph(groups, costs, input_shape)

    def visit(self, node: fx.Node) -> list[Segment] | None:
        b = self.b
        if node.op == "placeholder":
            shape = _shape(node)
            if shape is None or len(shape) < 2:
                return None
            lay = [Segment(b.new_space(shape[1], "<input>"), shape[1])]
            b.freeze(lay, "model input")
            return lay
        if node.op == "output":
            for arg in _flat(node.args):
                b.freeze(self.lay(arg), "model output")
            return None
        if node.op == "get_attr":
            raise UnsupportedModelError(
                f"layer {self.where(node)!r}: uses parameter {node.target!r} outside a module; "
                "the channel graph only prunes parameters owned by conv/linear/BN modules"
            )
        if node.op == "call_module":
            return self.visit_module(node)
        return self.visit_function(node)

    def visit_module(self, node: fx.Node) -> list[Segment] | None:
        b, name = self.b, str(node.target)
        m = self.gm.get_submodule(name)
        lay = self.lay(node.args[0]) if node.args else None
        if type(m) in _LEAF_RULES:
            if lay is None:
                raise UnsupportedModelError(f"layer {name!r}: input has no channel dimension")
            return _LEAF_RULES[type(m)](b, name, m, lay)
        if isinstance(m, PASS_MODULES):
            return lay
        if isinstance(m, BN):
            b.add_member(lay or [], name, "bn")
            return lay
        if isinstance(m, CONV + (nn.Linear,)):
            return self.visit_weighted(node, name, m, lay)
        if isinstance(m, nn.Flatten):
            return self.flatten(node, m.start_dim, m.end_dim)
        raise UnsupportedModelError(
            f"layer {name!r} ({type(m).__name__}): not supported by the channel dependency graph; "
            "register a rule with nasforge.compression.pruning.register_leaf_rule"
        )

    def visit_weighted(
        self, node: fx.Node, name: str, module: nn.Module, lay: list[Segment] | None
    ) -> list[Segment]:
        b, m = self.b, cast(Any, module)  # conv/linear attributes are untyped on nn.Module
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        if lay is None or in_shape is None or out_shape is None:
            raise UnsupportedModelError(f"layer {name!r}: input has no channel layout")
        if isinstance(m, nn.Linear) and len(in_shape) != 2:
            raise UnsupportedModelError(
                f"layer {name!r} (Linear): applied to a {len(in_shape)}-D tensor; the channel "
                "graph prunes Linear layers only on (batch, features) inputs"
            )
        if name in self.module_io:  # a module called twice shares its channels
            prev_in, prev_out = self.module_io[name]
            for a, c in zip(prev_in, lay):
                b.union(a.space, c.space, name)
            return prev_out
        spatial = 1
        for s in out_shape[2:]:
            spatial *= int(s)
        groups = getattr(m, "groups", 1)
        cin = m.in_channels if isinstance(m, CONV) else m.in_features
        cout = m.out_channels if isinstance(m, CONV) else m.out_features
        ksize = 1
        if isinstance(m, CONV):
            for k in m.kernel_size:
                ksize *= int(k)
        macs = spatial * cout * (cin // groups) * ksize
        if isinstance(m, CONV) and groups == cin == cout and groups > 1:
            b.add_member(lay, name, "dw")
            self.raw_costs.append(_RawCost(name, macs, list(lay), list(lay), depthwise=True))
            self.module_io[name] = (lay, lay)
            return lay
        out = [Segment(b.new_space(cout, name), cout)]
        if groups != 1:
            b.freeze(lay, f"grouped convolution {name!r} (groups={groups})")
            b.freeze(out, f"grouped convolution {name!r} (groups={groups})")
        else:
            b.add_member(lay, name, "in")
            b.add_member(out, name, "out")
        self.raw_costs.append(_RawCost(name, macs, list(lay), list(out)))
        self.module_io[name] = (lay, out)
        return out

    def flatten(self, node: fx.Node, start: int, end: int) -> list[Segment] | None:
        lay = self.lay(node.args[0])
        shape = _shape(node.args[0])
        if shape is None or lay is None:
            return None
        if start != 1 or end not in (-1, len(shape) - 1):
            raise UnsupportedModelError(
                f"layer {self.where(node)!r}: flatten(start_dim={start}) mixes the batch or "
                "channel dimension; only flatten from dim 1 is supported"
            )
        spatial = 1
        for s in shape[2:]:
            spatial *= int(s)
        if spatial == 1:
            return lay
        self.b.freeze(lay, f"flattened spatial map at {self.where(node)!r}")
        features = shape[1] * spatial
        out = [Segment(self.b.new_space(features, self.where(node)), features)]
        self.b.freeze(out, f"flattened spatial map at {self.where(node)!r}")
        return out

    def visit_function(self, node: fx.Node) -> list[Segment] | None:
        target, args = node.target, node.args
        if node.op == "call_method" and target in ("size", "dim") or target in (getattr, len):
            return None
        if node.op == "call_function" and target is operator.getitem:
            if self.lay(args[0]) is not None:
                raise UnsupportedModelError(
                    f"layer {self.where(node)!r}: indexes a tensor; slicing channels is not "
                    "supported by the channel graph"
                )
            return None
        if (node.op == "call_function" and target in PASS_FUNCTIONS) or (
            node.op == "call_method" and target in PASS_METHODS
        ):
            return self.lay(args[0])
        if (node.op == "call_function" and target in BINARY) or (
            node.op == "call_method" and target in BINARY_METHODS
        ):
            return self.binary(node)
        if node.op == "call_function" and target in CAT:
            return self.cat(node)
        if target in (torch.flatten, "flatten"):
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, int(start), int(end))  # type: ignore[arg-type]
        if target in (torch.mean, "mean", torch.sum, "sum", "amax", torch.amax):
            return self.reduce(node)
        if target in ("view", "reshape", torch.reshape):
            return self.reshape(node)
        raise UnsupportedModelError(
            f"layer {self.where(node)!r}: op {getattr(target, '__name__', target)!r} is not "
            "supported by the channel dependency graph"
        )

    def binary(self, node: fx.Node) -> list[Segment] | None:
        a, c = node.args[0], node.args[1]
        la, lc = self.lay(a), self.lay(c)
        if la is None or lc is None:
            return la if la is not None else lc
        sa, sc = _shape(a), _shape(c)
        if sa is None or sc is None or len(sa) < 2 or len(sc) < 2:
            return la
        if sa[1] == sc[1]:
            self.unify(la, lc, self.where(node))
            return la
        small, big = (lc, la) if sc[1] == 1 else (la, lc)
        self.b.freeze(small, f"broadcast over channels at {self.where(node)!r}")
        return big

    def unify(self, la: list[Segment], lc: list[Segment], where: str) -> None:
        if [s.length for s in la] == [s.length for s in lc]:
            for x, y in zip(la, lc):
                self.b.union(x.space, y.space, where)
            return
        # Segments that do not line up (e.g. add of two different concatenations): keep all.
        self.b.freeze(la, f"misaligned concatenations at {where!r}")
        self.b.freeze(lc, f"misaligned concatenations at {where!r}")

    def cat(self, node: fx.Node) -> list[Segment] | None:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        shape = _shape(node)
        if shape is None or not isinstance(tensors, (list, tuple)):
            raise UnsupportedModelError(f"layer {self.where(node)!r}: cannot read concat inputs")
        if int(dim) % len(shape) != 1:  # type: ignore[arg-type]
            for t in tensors:
                self.b.freeze(self.lay(t), f"concatenation along dim {dim} at {self.where(node)!r}")
            raise UnsupportedModelError(
                f"layer {self.where(node)!r}: concatenation along dim {dim}; only channel "
                "concatenation (dim 1) is supported"
            )
        out: list[Segment] = []
        for t in tensors:
            lt = self.lay(t)
            if lt is None:
                raise UnsupportedModelError(f"layer {self.where(node)!r}: concat of a non-tensor")
            out.extend(lt)
        return out

    def reduce(self, node: fx.Node) -> list[Segment] | None:
        lay, shape = self.lay(node.args[0]), _shape(node.args[0])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if shape is None:
            return lay
        if dims is None:
            self.b.freeze(lay, f"reduction over all dims at {self.where(node)!r}")
            return None
        dl = [dims] if isinstance(dims, int) else list(dims)  # type: ignore[arg-type]
        if any(int(d) % len(shape) == 1 for d in dl):
            self.b.freeze(lay, f"reduction over channels at {self.where(node)!r}")
            return None
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if not keep and any(int(d) % len(shape) == 0 for d in dl):
            raise UnsupportedModelError(f"layer {self.where(node)!r}: reduces the batch dimension")
        return lay

    def reshape(self, node: fx.Node) -> list[Segment] | None:
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        if in_shape is not None and out_shape is not None and len(out_shape) == 2:
            spatial = 1
            for s in in_shape[2:]:
                spatial *= int(s)
            if spatial == 1 and out_shape[1] == in_shape[1]:
                return self.lay(node.args[0])
        raise UnsupportedModelError(
            f"layer {self.where(node)!r}: reshape/view to {out_shape} is not supported by the "
            "channel graph (use flatten after global pooling)"
        )


def _flat(args: object) -> list[object]:
    if isinstance(args, (list, tuple)):
        out: list[object] = []
        for a in args:
            out.extend(_flat(a))
        return out
    if isinstance(args, dict):
        return _flat(list(args.values()))
    return [args]
