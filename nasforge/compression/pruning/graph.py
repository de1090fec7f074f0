"""Channel dependency graph: which channel dimensions must be pruned together.

Built on ``torch.fx``: the model is traced symbolically (conv, linear, BN, LayerNorm,
activations, pooling and :class:`~nasforge.compression.attention.SelfAttention` stay leaf
modules), then every tensor gets a channel *layout* -- a list of segments, each a slice of
one channel *space* -- and the *axis* the layout describes: dim 1 for (N, C, ...) maps, the
last dim for tokens (N, L, D) (a Linear acts on the last dim; permute, transpose, reshape
and indexing move or keep the axis). Ops that tie channels together unify their spaces:
a residual add or broadcast multiply unifies both operands, a depthwise convolution and a
batch norm pass the space through, a concatenation along the channel axis lays spaces side
by side (along another axis it unifies them). After the walk each union of spaces is a
:class:`ChannelGroup`: the list of parameter slices (``members``) that must lose the same
channel indices.

Values that are not tensors (shape reads, ``h // p``, ``==``, ``torch._assert``) carry no
layout and are never refused; tensors computed from constants only are constants. A constant
tensor with more than one entry along the channel axis (a parameter read with ``get_attr``:
a class token, a position embedding) *freezes* the layout it is added to, multiplied with or
concatenated with: in a ViT the residual stream (embedding dim D) therefore stays unpruned,
and its prunable groups are each attention's head dims (``blocks`` = heads) and each MLP's
hidden dim. ``nn.MultiheadAttention`` is refused: decompose it first with
:func:`~nasforge.compression.attention.decompose_attention`.

Functions wrapped with ``torch.fx.wrap`` (recorded as one call) are known by a *function
rule* (:func:`register_function_rule`); torchvision's ``stochastic_depth`` is built in.

The walk is a whitelist. An op it does not know raises :class:`UnsupportedModelError` naming
the layer, so a model is either pruned consistently or not at all -- never into a wrong model.
Ops it knows but cannot prune through (grouped convolutions, flattening a spatial map, the
model's input and output) *freeze* the spaces they touch; frozen groups are never pruned.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from nasforge.compression.attention import SelfAttention
from nasforge.compression.errors import UnsupportedModelError
from nasforge.compression.pruning.cuts import (
    ChannelDimFn,
    CutFn,
    CutRule,
    cut_rule_for,
    find_cut_rule,
    keep_index,
    register_cut_rule,
)
from nasforge.compression.pruning.groups import (
    ChannelGroup,
    GroupBuilder,
    LayerCost,
    Member,
    RawCost,
    Segment,
)
from nasforge.compression.pruning.ops import (
    BINARY,
    BINARY_METHODS,
    BN,
    CAT,
    CONV,
    PASS_FUNCTIONS,
    PASS_METHODS,
    PASS_MODULES,
    PERMUTE,
    POOL_FUNCTIONS,
    POOL_MODULES,
    RESHAPE,
    SOFTMAX,
    TRANSPOSE,
    LayoutOps,
    as_int,
    flat_args,
    is_known,
    is_value,
    prod,
    shape_of,
)
from nasforge.nn.blocks import SqueezeExcite

__all__ = [
    "ChannelGroup",
    "CutRule",
    "DependencyGraph",
    "GroupBuilder",
    "Member",
    "FunctionRule",
    "Segment",
    "cut_rule_for",
    "keep_index",
    "pass_through",
    "register_cut_rule",
    "register_function_rule",
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


FunctionRule = Callable[[GroupBuilder, str, list["list[Segment] | None"]], "list[Segment] | None"]
"""``rule(builder, where, in_layouts) -> out_layout``: the channel coupling of a function call.
``in_layouts`` holds the layout of each positional argument (None where it has none); the
result describes the same axis as the first argument that has a layout."""
_FUNCTION_RULES: dict[object, FunctionRule] = {}


def pass_through(
    b: GroupBuilder, where: str, layouts: list[list[Segment] | None]
) -> list[Segment] | None:
    """The function rule of an op that keeps its first argument's channels (dropout-like)."""
    return layouts[0] if layouts else None


def register_function_rule(fn: Callable[..., object] | str, rule: FunctionRule) -> None:
    """Tell the channel graph how function ``fn`` couples channels.

    For functions that ``torch.fx`` records as one call (wrapped with ``torch.fx.wrap``, as
    torchvision does for ``stochastic_depth``). ``fn`` is the function itself or its name:
    a name matches any called function of that ``__name__`` (and methods of that name), so a
    rule for ``"stochastic_depth"`` covers torchvision's and a copy of it. ``rule`` is e.g.
    :func:`pass_through`; see :data:`FunctionRule`.
    """
    _FUNCTION_RULES[fn] = rule


register_function_rule("stochastic_depth", pass_through)


class _Tracer(fx.Tracer):
    """Keeps known leaves as modules and records which module each node was traced in."""

    def __init__(self) -> None:
        super().__init__()
        self.nf_scope: list[str] = [""]

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, CONV + BN + (nn.Linear, nn.Flatten) + PASS_MODULES):
            return True
        if type(m) is nn.LayerNorm:
            return True
        if isinstance(m, SelfAttention):
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
        layer_costs: list[LayerCost],
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
        # flags set directly: an exported program's module refuses train()/eval()
        modes = [(m, m.training) for m in [*model.modules(), *gm.modules()]]
        for m, _ in modes:
            m.training = False
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
        except Exception as exc:  # noqa: BLE001 - re-raised as a user-facing error
            raise UnsupportedModelError(
                f"model does not run on input shape {tuple(input_shape)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        finally:
            for m, mode in modes:
                m.training = mode
        return _Walker(gm, model).run(tuple(int(s) for s in input_shape))


class _Walker(LayoutOps):
    def __init__(self, gm: fx.GraphModule, model: nn.Module | None = None) -> None:
        self.gm = gm
        self.model = model if model is not None else gm
        self.b = GroupBuilder()
        self.layout: dict[fx.Node, list[Segment] | None] = {}
        self.axis: dict[fx.Node, int] = {}  # which dim each layout describes
        self.items: dict[fx.Node, list[tuple[list[Segment] | None, int]]] = {}  # tuple outputs
        self.module_io: dict[str, tuple[list[Segment], list[Segment]]] = {}
        self.raw_costs: list[RawCost] = []
        self.out_axis: int | None = None
        self.consts: dict[tuple[fx.Node, int], list[Segment]] = {}

    def has_cut_rule(self, module: str) -> bool:
        return find_cut_rule(self.model.get_submodule(module)) is not None

    def run(self, input_shape: tuple[int, ...]) -> DependencyGraph:
        for node in self.gm.graph.nodes:
            self.out_axis = None
            lay = self.visit(node)
            self.layout[node] = lay
            if lay is not None:
                self.axis[node] = self.out_axis if self.out_axis is not None else self.in_axis(node)
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
            blocks = self.b.blocks.get(r, 1)
            groups.append(
                ChannelGroup(gid[r], self.b.size[r], members, bool(reason), reason, blocks)
            )

        def ids(segs: list[Segment]) -> list[tuple[str, int]]:
            return [(gid[self.b.find(s.space)], s.length) for s in segs]

        costs = [
            LayerCost(c.module, c.macs, ids(c.ins), ids(c.outs), c.depthwise)
            for c in self.raw_costs
        ]
        return DependencyGraph(groups, costs, input_shape)

    def visit(self, node: fx.Node) -> list[Segment] | None:
        b = self.b
        if node.op == "placeholder":
            return None  # the input is a constant to the graph: layers it feeds get frozen
        if node.op == "output":
            for arg in flat_args(node.args):
                b.freeze(self.lay(arg), "model output")
                if isinstance(arg, fx.Node):
                    for item, _ in self.items.get(arg, []):
                        b.freeze(item, "model output")
            return None
        if node.op == "get_attr":
            return None  # a parameter or buffer read directly: a constant (see binary, cat)
        if node.op == "call_module":
            return self.visit_module(node)
        return self.visit_function(node)

    def visit_module(self, node: fx.Node) -> list[Segment] | None:
        b, name = self.b, str(node.target)
        m = self.gm.get_submodule(name)
        arg0 = node.args[0] if node.args else None
        lay = self.lay(arg0)
        if isinstance(m, SelfAttention):
            return self.attention(node, name, m)
        if isinstance(m, nn.MultiheadAttention):
            raise UnsupportedModelError(
                f"layer {name!r} (MultiheadAttention): decompose it first with "
                "nasforge.compression.attention.decompose_attention (the channel graph prunes "
                "SelfAttention's heads)"
            )
        if type(m) in _LEAF_RULES:
            if lay is None:
                lay = self.const_layout(arg0, 1, name)
            return _LEAF_RULES[type(m)](b, name, m, lay)
        if isinstance(m, POOL_MODULES) and lay is not None and self.ax(arg0) != 1:
            raise UnsupportedModelError(
                f"layer {name!r} ({type(m).__name__}): pools a tensor whose channels are at dim "
                f"{self.ax(arg0)}; the channel graph needs them at dim 1 there"
            )
        if isinstance(m, PASS_MODULES):
            return lay
        if isinstance(m, BN):
            if lay is not None and self.ax(arg0) != 1:
                raise UnsupportedModelError(
                    f"layer {name!r} (batch norm): its input's channels are at dim {self.ax(arg0)}"
                )
            b.add_member(lay or [], name, "bn")
            return lay
        if type(m) is nn.LayerNorm:  # exactly: a subclass (LayerNorm2d) may permute first
            return self.layer_norm(node, name, m, lay)
        if isinstance(m, CONV + (nn.Linear,)):
            return self.visit_weighted(node, name, m, lay)
        if isinstance(m, nn.Flatten):
            return self.flatten(node, m.start_dim, m.end_dim)
        if not self.has_layout(node):
            return None  # e.g. nn.Embedding of token ids: computed from constants, nothing cut
        raise UnsupportedModelError(
            f"layer {name!r} ({type(m).__name__}): not supported by the channel dependency graph; "
            "register a rule with nasforge.compression.pruning.register_leaf_rule"
        )

    def attention(self, node: fx.Node, name: str, m: SelfAttention) -> list[Segment] | None:
        """One group of ``num_heads * head_dim`` dims (blocks = heads): q/k/v ``out`` and
        out_proj ``in``; the output (out_proj ``out``) is a new space. The node's value is the
        tuple ``(out, weights)``: its items carry the layouts."""
        b = self.b
        kw = node.kwargs
        args = list(node.args) + [None] * 3
        query = args[0] if args[0] is not None else kw.get("query")
        key = args[1] if args[1] is not None else kw.get("key", query)
        value = args[2] if args[2] is not None else kw.get("value", key)
        key = query if key is None else key
        value = key if value is None else value
        ins = []
        for arg in (query, key, value):
            la, shape = self.lay(arg), shape_of(arg)
            if la is None and shape is not None:
                la = self.const_layout(arg, len(shape) - 1, name)
            elif la is not None and shape is not None and self.ax(arg) != len(shape) - 1:
                la = None
            if la is None or shape is None:
                raise UnsupportedModelError(
                    f"layer {name!r} (SelfAttention): its inputs must be token tensors with the "
                    "features in the last dim"
                )
            ins.append(la)
        for arg in list(node.args[3:]) + [
            v for k, v in kw.items() if k not in ("query", "key", "value")
        ]:
            if self.lay(arg) is not None:
                raise UnsupportedModelError(
                    f"layer {name!r} (SelfAttention): a mask with a channel layout"
                )
        lq, lk = shape_of(query), shape_of(key)
        assert lq is not None and lk is not None
        if name in self.module_io:  # shared module: its channels are the same everywhere
            prev_in, prev_out = self.module_io[name]
            self.unify(prev_in, ins[0], name)
            out = prev_out
        else:
            inner_n = m.q.out_features
            inner = [Segment(b.new_space(inner_n, name), inner_n)]
            b.add_member(inner, name, "heads")
            for proj, la in (("q", ins[0]), ("k", ins[1]), ("v", ins[2])):
                b.add_member(la, f"{name}.{proj}", "in")
                b.add_member(inner, f"{name}.{proj}", "out")
            b.add_member(inner, f"{name}.out_proj", "in")
            b.set_blocks(inner, m.num_heads, name)
            d = m.out_proj.out_features
            out = [Segment(b.new_space(d, f"{name}.out_proj"), d)]
            b.add_member(out, f"{name}.out_proj", "out")
            tq = prod(lq[:-1])  # batch * tokens
            tk = prod(lk[:-1])
            for proj, la, t in (("q", ins[0], tq), ("k", ins[1], tk), ("v", ins[2], tk)):
                lin = getattr(m, proj)
                macs = t * lin.in_features * lin.out_features
                self.raw_costs.append(RawCost(f"{name}.{proj}", macs, list(la), list(inner)))
            macs = tq * inner_n * d
            self.raw_costs.append(RawCost(f"{name}.out_proj", macs, list(inner), list(out)))
            # scores q @ k^T and weights @ v: (tokens_q * tokens_k / batch) MACs per inner dim
            n = lq[0] if m.batch_first else lq[1]
            macs = 2 * tq * (tk // max(1, int(n))) * inner_n
            self.raw_costs.append(RawCost(f"{name}.matmul", macs, list(inner), []))
            self.module_io[name] = (ins[0], out)
        self.items[node] = [(out, len(lq) - 1), (None, 1)]
        return None

    def visit_weighted(
        self, node: fx.Node, name: str, module: nn.Module, lay: list[Segment] | None
    ) -> list[Segment]:
        b, m = self.b, cast(Any, module)  # conv/linear attributes are untyped on nn.Module
        in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
        if in_shape is None or out_shape is None:
            raise UnsupportedModelError(f"layer {name!r}: input is not a tensor")
        linear = isinstance(m, nn.Linear)
        if lay is None:
            axis = len(in_shape) - 1 if linear else 1
            lay = self.const_layout(node.args[0], axis, name)
        else:
            axis = self.ax(node.args[0])
        if linear:
            macs = prod(out_shape[:-1]) * m.in_features * m.out_features
            if axis != len(in_shape) - 1:
                # the Linear mixes another dim (e.g. tokens): channels pass, its own sizes stay
                self.raw_costs.append(RawCost(name, macs, [], []))
                return lay
            self.out_axis = len(out_shape) - 1
        elif axis != 1:
            raise UnsupportedModelError(
                f"layer {name!r} ({type(m).__name__}): its input's channels are at dim {axis}, "
                "not dim 1"
            )
        if name in self.module_io:  # a module called twice shares its channels
            prev_in, prev_out = self.module_io[name]
            for a, c in zip(prev_in, lay):
                b.union(a.space, c.space, name)
            return prev_out
        groups = getattr(m, "groups", 1)
        cin = m.in_features if linear else m.in_channels
        cout = m.out_features if linear else m.out_channels
        if not linear:
            ksize = prod(m.kernel_size)
            macs = prod(out_shape[2:]) * cout * (cin // groups) * ksize
        if isinstance(m, CONV) and groups == cin == cout and groups > 1:
            b.add_member(lay, name, "dw")
            self.raw_costs.append(RawCost(name, macs, list(lay), list(lay), depthwise=True))
            self.module_io[name] = (lay, lay)
            return lay
        out = [Segment(b.new_space(cout, name), cout)]
        if groups != 1:
            b.freeze(lay, f"grouped convolution {name!r} (groups={groups})")
            b.freeze(out, f"grouped convolution {name!r} (groups={groups})")
        else:
            b.add_member(lay, name, "in")
            b.add_member(out, name, "out")
        self.raw_costs.append(RawCost(name, macs, list(lay), list(out)))
        self.module_io[name] = (lay, out)
        return out

    def visit_function(self, node: fx.Node) -> list[Segment] | None:
        target, args = node.target, node.args
        if not is_value(node):
            return None  # shapes, ints, bools, asserts: no channels, never refused
        if node.op == "call_method" and target in ("size", "dim") or target in (getattr, len):
            return None
        rule = self.function_rule(node)
        if rule is not None:
            return rule(self.b, self.where(node), [self.lay(a) for a in args])
        if node.op == "call_function" and target is operator.getitem:
            return self.getitem(node)
        if not self.has_layout(node):
            param = self.parameter_arg(node)
            if param is not None and not is_known(node):
                raise UnsupportedModelError(
                    f"layer {self.where(node)!r}: op {getattr(target, '__name__', target)!r} "
                    f"uses parameter {param!r} outside a module; the channel graph prunes "
                    "parameters of conv/linear/norm modules (for an exported program or "
                    "functional layers, prune the nn.Module they came from)"
                )
            return None  # computed from constants only: a constant
        name = target if node.op == "call_method" else None
        fn = target if node.op == "call_function" else None
        if fn in POOL_FUNCTIONS and self.ax(args[0]) != 1:
            raise UnsupportedModelError(
                f"layer {self.where(node)!r}: pools a tensor whose channels are at dim "
                f"{self.ax(args[0])}; the channel graph needs them at dim 1 there"
            )
        if fn in PASS_FUNCTIONS or name in PASS_METHODS:
            return self.lay(args[0])
        if fn in (F.layer_norm, torch.layer_norm):
            return self.functional_layer_norm(node)
        if fn in BINARY or name in BINARY_METHODS:
            return self.binary(node)
        if fn in CAT:
            return self.cat(node)
        if target in (torch.flatten, "flatten"):
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, as_int(start), as_int(end))
        if target in (torch.mean, "mean", torch.sum, "sum", "amax", torch.amax):
            return self.reduce(node)
        if target in RESHAPE:
            return self.reshape(node)
        if target in PERMUTE or target in TRANSPOSE:
            return self.permute(node)
        if target in SOFTMAX:
            return self.softmax(node)
        if target in ("expand", "expand_as"):
            return self.expand(node)
        raise UnsupportedModelError(
            f"layer {self.where(node)!r}: op {getattr(target, '__name__', target)!r} is not "
            "supported by the channel dependency graph"
        )

    def parameter_arg(self, node: fx.Node) -> str | None:
        """The name of an ``nn.Parameter`` read with ``get_attr`` among the node's arguments."""
        for a in flat_args((node.args, node.kwargs)):
            if isinstance(a, fx.Node) and a.op == "get_attr":
                try:
                    value = self.gm.get_parameter(str(a.target))
                except AttributeError:
                    continue
                if isinstance(value, nn.Parameter):
                    return str(a.target)
        return None

    def function_rule(self, node: fx.Node) -> FunctionRule | None:
        target = node.target
        if node.op == "call_function":
            try:
                rule = _FUNCTION_RULES.get(target)
            except TypeError:  # unhashable target
                rule = None
            if rule is None:
                rule = _FUNCTION_RULES.get(getattr(target, "__name__", None))
            return rule
        if node.op == "call_method":
            return _FUNCTION_RULES.get(target)
        return None
