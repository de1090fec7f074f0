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
from dataclasses import dataclass
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
    PERMUTE,
    POOL_FUNCTIONS,
    POOL_MODULES,
    RESHAPE,
    SOFTMAX,
    TRANSPOSE,
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


def _is_value(node: fx.Node) -> bool:
    """Whether ShapeProp saw ``node`` produce a tensor (or a tuple holding tensors)."""
    return node.meta.get("tensor_meta") is not None


def _int(x: object) -> int:
    """An fx argument known to be an int (a dim, an index)."""
    return int(cast(Any, x))


def _full_slice(i: slice, n: int) -> bool:
    stop_ok = i.stop is None or (isinstance(i.stop, int) and i.stop >= n)
    return i.step in (None, 1) and i.start in (None, 0) and stop_ok


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


class _Walker:
    def __init__(self, gm: fx.GraphModule, model: nn.Module | None = None) -> None:
        self.gm = gm
        self.model = model if model is not None else gm
        self.b = GroupBuilder()
        self.layout: dict[fx.Node, list[Segment] | None] = {}
        self.axis: dict[fx.Node, int] = {}  # which dim each layout describes
        self.items: dict[fx.Node, list[tuple[list[Segment] | None, int]]] = {}  # tuple outputs
        self.module_io: dict[str, tuple[list[Segment], list[Segment]]] = {}
        self.raw_costs: list[_RawCost] = []
        self.out_axis: int | None = None
        self.consts: dict[tuple[fx.Node, int], list[Segment]] = {}

    def where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        scope = node.meta.get("scope") or "<model>"
        fn = getattr(node.target, "__name__", str(node.target))
        return f"{scope} ({fn})"

    def lay(self, arg: object) -> list[Segment] | None:
        return self.layout.get(arg) if isinstance(arg, fx.Node) else None

    def ax(self, arg: object) -> int:
        return self.axis.get(arg, 1) if isinstance(arg, fx.Node) else 1

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
            _LayerCost(c.module, c.macs, ids(c.ins), ids(c.outs), c.depthwise)
            for c in self.raw_costs
        ]
        return DependencyGraph(groups, costs, input_shape)

    def in_axis(self, node: fx.Node) -> int:
        """The axis of the first argument with a layout (pass-through ops keep it)."""
        for a in _flat((node.args, node.kwargs)):
            if self.lay(a) is not None:
                return self.ax(a)
        return 1

    def has_layout(self, node: fx.Node) -> bool:
        return any(
            isinstance(a, fx.Node) and (self.lay(a) is not None or a in self.items)
            for a in _flat((node.args, node.kwargs))
        )

    def visit(self, node: fx.Node) -> list[Segment] | None:
        b = self.b
        if node.op == "placeholder":
            return None  # the input is a constant to the graph: layers it feeds get frozen
        if node.op == "output":
            for arg in _flat(node.args):
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

    def const_layout(self, arg: object, axis: int, where: str) -> list[Segment]:
        """A frozen layout for the channels (dim ``axis``) of a tensor without one: the
        model input or a constant. One per (tensor, axis)."""
        shape = _shape(arg)
        assert isinstance(arg, fx.Node) and shape is not None
        key = (arg, axis)
        if key not in self.consts:
            n = int(shape[axis])
            source = "<input>" if arg.op == "placeholder" else f"<constant {arg.name}>"
            lay = [Segment(self.b.new_space(n, source), n)]
            reason = "model input" if arg.op == "placeholder" else f"constant input to {where!r}"
            self.b.freeze(lay, reason)
            self.consts[key] = lay
        return self.consts[key]

    def layer_norm(
        self, node: fx.Node, name: str, m: nn.LayerNorm, lay: list[Segment] | None
    ) -> list[Segment] | None:
        shape = _shape(node.args[0])
        if lay is None or shape is None:
            return lay
        axis, k = self.ax(node.args[0]), len(m.normalized_shape)
        if axis < len(shape) - k:  # normalises other dims only: channels pass
            return lay
        if k == 1 and m.elementwise_affine:
            self.b.add_member(lay, name, "ln")
        elif k != 1:
            self.b.freeze(lay, f"layer norm {name!r} over the channels and other dims")
        return lay

    def functional_layer_norm(self, node: fx.Node) -> list[Segment] | None:
        """``F.layer_norm(x, shape, weight, bias)`` (torchvision's LayerNorm2d after a permute):
        the weight/bias owner becomes an ``ln`` member when it has a cut rule."""
        args, kw = list(node.args) + [None] * 4, node.kwargs
        x = args[0]
        lay, shape = self.lay(x), _shape(x)
        if lay is None or shape is None:
            return lay
        normalized = args[1] if args[1] is not None else kw.get("normalized_shape")
        k = 1 if isinstance(normalized, int) else len(cast(Any, normalized))
        if self.ax(x) < len(shape) - k:
            return lay
        where = self.where(node)
        if k != 1:
            self.b.freeze(lay, f"layer norm over the channels and other dims at {where!r}")
            return lay
        params = [args[2] if args[2] is not None else kw.get("weight")]
        params.append(args[3] if args[3] is not None else kw.get("bias"))
        owners = set()
        for p, attr in zip(params, ("weight", "bias"), strict=True):
            if p is None:
                continue
            target = str(p.target) if isinstance(p, fx.Node) and p.op == "get_attr" else ""
            mod, _, field = target.rpartition(".")
            owners.add(mod if field == attr and mod else None)
        if not owners:
            return lay  # no affine parameters
        owner = owners.pop() if len(owners) == 1 else None
        if owner is not None and find_cut_rule(self.model.get_submodule(owner)) is not None:
            self.b.add_member(lay, owner, "ln")
        else:
            self.b.freeze(lay, f"layer norm parameters without a cut rule at {where!r}")
        return lay

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
            la, shape = self.lay(arg), _shape(arg)
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
        lq, lk = _shape(query), _shape(key)
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
            tq = _prod(lq[:-1])  # batch * tokens
            tk = _prod(lk[:-1])
            for proj, la, t in (("q", ins[0], tq), ("k", ins[1], tk), ("v", ins[2], tk)):
                lin = getattr(m, proj)
                macs = t * lin.in_features * lin.out_features
                self.raw_costs.append(_RawCost(f"{name}.{proj}", macs, list(la), list(inner)))
            macs = tq * inner_n * d
            self.raw_costs.append(_RawCost(f"{name}.out_proj", macs, list(inner), list(out)))
            # scores q @ k^T and weights @ v: (tokens_q * tokens_k / batch) MACs per inner dim
            n = lq[0] if m.batch_first else lq[1]
            macs = 2 * tq * (tk // max(1, int(n))) * inner_n
            self.raw_costs.append(_RawCost(f"{name}.matmul", macs, list(inner), []))
            self.module_io[name] = (ins[0], out)
        self.items[node] = [(out, len(lq) - 1), (None, 1)]
        return None

    def visit_weighted(
        self, node: fx.Node, name: str, module: nn.Module, lay: list[Segment] | None
    ) -> list[Segment]:
        b, m = self.b, cast(Any, module)  # conv/linear attributes are untyped on nn.Module
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        if in_shape is None or out_shape is None:
            raise UnsupportedModelError(f"layer {name!r}: input is not a tensor")
        linear = isinstance(m, nn.Linear)
        if lay is None:
            axis = len(in_shape) - 1 if linear else 1
            lay = self.const_layout(node.args[0], axis, name)
        else:
            axis = self.ax(node.args[0])
        if linear:
            macs = _prod(out_shape[:-1]) * m.in_features * m.out_features
            if axis != len(in_shape) - 1:
                # the Linear mixes another dim (e.g. tokens): channels pass, its own sizes stay
                self.raw_costs.append(_RawCost(name, macs, [], []))
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
            ksize = _prod(m.kernel_size)
            macs = _prod(out_shape[2:]) * cout * (cin // groups) * ksize
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
        nd = len(shape)
        start, end = start % nd, end % nd
        axis = self.ax(node.args[0])
        if axis < start:
            return lay
        if axis > end:
            self.out_axis = axis - (end - start)
            return lay
        if start == 0:
            raise UnsupportedModelError(
                f"layer {self.where(node)!r}: flatten(start_dim=0) merges the batch and channel "
                "dimensions; flatten from dim 1"
            )
        self.out_axis = start
        others = _prod(shape[start : end + 1]) // shape[axis]
        if others == 1:
            return lay
        where = self.where(node)
        self.b.freeze(lay, f"flattened spatial map at {where!r}")
        features = shape[axis] * others
        out = [Segment(self.b.new_space(features, where), features)]
        self.b.freeze(out, f"flattened spatial map at {where!r}")
        return out

    def visit_function(self, node: fx.Node) -> list[Segment] | None:
        target, args = node.target, node.args
        if not _is_value(node):
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
            if param is not None and not _known(node):
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
            return self.flatten(node, _int(start), _int(end))
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
        for a in _flat((node.args, node.kwargs)):
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

    def getitem(self, node: fx.Node) -> list[Segment] | None:
        src, index = node.args[0], node.args[1]
        if isinstance(src, fx.Node) and src in self.items:
            if not isinstance(index, int):
                raise UnsupportedModelError(f"layer {self.where(node)!r}: slices a tuple output")
            item, axis = self.items[src][index]  # type: ignore[index]
            if item is not None:
                self.out_axis = axis
            return item
        lay, shape = self.lay(src), _shape(src)
        if lay is None or shape is None:
            return None
        axis = self.ax(src)
        idx = index if isinstance(index, tuple) else (index,)
        explicit = sum(1 for i in idx if i is not None and i is not Ellipsis)
        expanded: list[object] = []
        for i in idx:
            if i is Ellipsis:
                expanded.extend([slice(None)] * (len(shape) - explicit))
            else:
                expanded.append(i)
        expanded.extend([slice(None)] * (len(shape) - sum(1 for i in expanded if i is not None)))
        in_dim = out_dim = 0
        new_axis: int | None = None
        for i in expanded:
            if isinstance(i, fx.Node) and not _is_value(i):
                i = 0  # a computed int index
            if i is None:
                out_dim += 1
                continue
            if in_dim == axis:
                full = isinstance(i, slice) and _full_slice(i, shape[axis])
                if not full:
                    raise UnsupportedModelError(
                        f"layer {self.where(node)!r}: indexes the channel dim of a tensor; "
                        "slicing channels is not supported by the channel graph"
                    )
                new_axis = out_dim
            elif not isinstance(i, (int, slice)):
                raise UnsupportedModelError(
                    f"layer {self.where(node)!r}: advanced indexing of a tensor with channels "
                    "is not supported by the channel graph"
                )
            in_dim += 1
            if isinstance(i, slice):
                out_dim += 1
        self.out_axis = new_axis
        return lay

    def binary(self, node: fx.Node) -> list[Segment] | None:
        a, c = node.args[0], node.args[1]
        la, lc = self.lay(a), self.lay(c)
        out_shape = _shape(node)
        if out_shape is None:
            return la if la is not None else lc
        nd = len(out_shape)

        def out_dim(arg: object) -> int:  # where arg's channel axis lands after broadcasting
            s = _shape(arg)
            return self.ax(arg) + nd - len(s) if s is not None else -1

        if la is None or lc is None:
            known, other = (a, c) if la is not None else (c, a)
            lk = self.lay(known)
            so = _shape(other)
            if so is not None and lk is not None:  # a constant tensor operand
                d = out_dim(known) - (nd - len(so))  # the constant's dim on the channel axis
                if 0 <= d < len(so) and so[d] > 1:
                    self.b.freeze(lk, f"per-channel constant at {self.where(node)!r}")
            self.out_axis = out_dim(known)
            return lk
        sa, sc = _shape(a), _shape(c)
        if sa is None or sc is None:
            return la
        if out_dim(a) != out_dim(c):
            where = self.where(node)
            self.b.freeze(la, f"channels of different dims combined at {where!r}")
            self.b.freeze(lc, f"channels of different dims combined at {where!r}")
            self.out_axis = out_dim(a)
            return la
        na, nc = sa[self.ax(a)], sc[self.ax(c)]
        self.out_axis = out_dim(a)
        if na == nc:
            self.unify(la, lc, self.where(node))
            return la
        small, big = (lc, la) if nc == 1 else (la, lc)
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
        where = self.where(node)
        if shape is None or not isinstance(tensors, (list, tuple)):
            raise UnsupportedModelError(f"layer {where!r}: cannot read concat inputs")
        dim = _int(dim) % len(shape)
        laid = [t for t in tensors if self.lay(t) is not None]
        axes = {self.ax(t) for t in laid}
        if len(axes) != 1:
            raise UnsupportedModelError(
                f"layer {where!r}: concatenates tensors whose channels lie in different dims"
            )
        axis = axes.pop()
        self.out_axis = axis
        if dim != axis:  # along tokens/space: the channels of every input line up
            first = self.lay(laid[0])
            assert first is not None
            for t in tensors:
                lt = self.lay(t)
                if lt is None:
                    self.b.freeze(first, f"concatenation with a constant at {where!r}")
                else:
                    self.unify(first, lt, where)
            return first
        out: list[Segment] = []
        for t in tensors:
            lt = self.lay(t)
            if lt is None:
                st = _shape(t)
                if st is None:
                    raise UnsupportedModelError(f"layer {where!r}: concat of a non-tensor")
                n = int(st[axis])
                lt = [Segment(self.b.new_space(n, f"{where} constant"), n)]
                self.b.freeze(lt, f"constant channels concatenated at {where!r}")
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
        dl = [_int(d) % len(shape) for d in ([dims] if isinstance(dims, int) else cast(Any, dims))]
        axis = self.ax(node.args[0])
        if axis in dl:
            self.b.freeze(lay, f"reduction over channels at {self.where(node)!r}")
            return None
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if not keep:
            if 0 in dl:
                raise UnsupportedModelError(
                    f"layer {self.where(node)!r}: reduces the batch dimension"
                )
            self.out_axis = axis - sum(1 for d in dl if d < axis)
        return lay

    def reshape(self, node: fx.Node) -> list[Segment] | None:
        """Keeps the channel axis when the dims before it multiply to the same number in
        the input and the output and the channel dim itself is one output dim."""
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        if in_shape is not None and out_shape is not None:
            axis = self.ax(node.args[0])
            before = _prod(in_shape[:axis])
            acc = 1
            for j, n in enumerate(out_shape):
                if acc == before and n == in_shape[axis] and j > 0:
                    self.out_axis = j
                    return self.lay(node.args[0])
                acc *= int(n)
                if acc > before:
                    break
        raise UnsupportedModelError(
            f"layer {self.where(node)!r}: reshape/view from {in_shape} to {out_shape} splits or "
            "merges the channel dimension; not supported by the channel graph (use flatten "
            "after global pooling)"
        )

    def permute(self, node: fx.Node) -> list[Segment] | None:
        shape = _shape(node.args[0])
        if shape is None:
            return self.lay(node.args[0])
        nd, axis = len(shape), self.ax(node.args[0])
        rest = list(node.args[1:])
        target = node.target
        if target in PERMUTE:
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            if not dims:
                dims = cast(Any, node.kwargs.get("dims", []))
            order = [_int(d) % nd for d in dims]
            self.out_axis = order.index(axis)
        else:
            d0 = _int(rest[0] if rest else node.kwargs.get("dim0", 0)) % nd
            d1 = _int(rest[1] if len(rest) > 1 else node.kwargs.get("dim1", 0)) % nd
            self.out_axis = d1 if axis == d0 else d0 if axis == d1 else axis
        if self.out_axis == 0:
            raise UnsupportedModelError(
                f"layer {self.where(node)!r}: moves the channels to the batch dim"
            )
        return self.lay(node.args[0])

    def softmax(self, node: fx.Node) -> list[Segment] | None:
        lay, shape = self.lay(node.args[0]), _shape(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if shape is not None and (dim is None or _int(dim) % len(shape) == self.ax(node.args[0])):
            self.b.freeze(lay, f"softmax over the channels at {self.where(node)!r}")
        return lay

    def expand(self, node: fx.Node) -> list[Segment] | None:
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        axis = self.ax(node.args[0])
        if (
            in_shape is None
            or out_shape is None
            or len(in_shape) != len(out_shape)
            or in_shape[axis] != out_shape[axis]
        ):
            raise UnsupportedModelError(
                f"layer {self.where(node)!r}: expands the channel dim of a tensor"
            )
        return self.lay(node.args[0])


_KNOWN_SETS: tuple[Any, ...] = (
    PASS_FUNCTIONS,
    PASS_METHODS,
    BINARY,
    BINARY_METHODS,
    CAT,
    RESHAPE,
    PERMUTE,
    TRANSPOSE,
    SOFTMAX,
    {torch.flatten, "flatten", torch.mean, "mean", torch.sum, "sum", "amax", torch.amax},
    {"expand", "expand_as", F.layer_norm, torch.layer_norm},
)


def _known(node: fx.Node) -> bool:
    """Whether the walk has a rule for ``node``'s op (on constants it yields a constant)."""
    target = node.target
    try:
        return any(target in known for known in _KNOWN_SETS)
    except TypeError:  # unhashable target
        return False


def _flat(args: object) -> list[object]:
    if isinstance(args, (list, tuple)):
        out: list[object] = []
        for a in args:
            out.extend(_flat(a))
        return out
    if isinstance(args, dict):
        return _flat(list(args.values()))
    return [args]
