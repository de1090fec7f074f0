"""The channel graph's whitelist: ops that pass a channel layout through unchanged,
binary ops that couple their operands, concatenations, shape ops that move the channel
axis, and the weighted/normalising layers the walk knows natively, with the layout rule of
each (:class:`LayoutOps`). An op in none of these (and without a leaf or function rule) is
refused."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from nasforge.compression.errors import UnsupportedModelError
from nasforge.compression.pruning.groups import GroupBuilder, Segment

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
PASS_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Hardswish,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
PASS_FUNCTIONS: set[object] = {
    F.relu,
    F.relu6,
    F.hardswish,
    F.silu,
    F.gelu,
    F.sigmoid,
    F.hardsigmoid,
    F.hardtanh,
    F.leaky_relu,
    F.elu,
    F.dropout,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.max_pool1d,
    F.max_pool2d,
    F.adaptive_max_pool2d,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.clip,
    F.mish,
    F.softplus,
    F.selu,
    F.celu,
    F.dropout1d,
    F.dropout2d,
    torch.exp,
    torch.erf,
    torch.sqrt,
    torch.rsqrt,
    torch.abs,
    torch.neg,
    torch.clone,
    operator.neg,
}
"""Elementwise (or channel-wise in evaluation, like dropout) functions of their first argument."""
PASS_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "clamp",
    "clamp_",
    "clip",
    "contiguous",
    "hardswish",
    "float",
    "half",
    "to",
    "type_as",
    "clone",
    "detach",
    "exp",
    "erf",
    "sqrt",
    "rsqrt",
    "abs",
    "neg",
}
BINARY = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    operator.pow,
    torch.pow,
}
"""Elementwise ops of two operands (with broadcasting): they couple both operands' channels."""
BINARY_METHODS = {"add", "add_", "sub", "mul", "mul_", "div", "pow"}
CAT = {torch.cat, torch.concat}
POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
"""Pass-through modules that pool the dims after dim 1: the channels must be at dim 1."""
POOL_FUNCTIONS: set[object] = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.max_pool1d,
    F.max_pool2d,
    F.adaptive_max_pool2d,
}
SOFTMAX = {torch.softmax, F.softmax, torch.log_softmax, F.log_softmax, "softmax", "log_softmax"}
"""Normalise along one dim: pass-through unless that dim is the channel axis."""
PERMUTE = {torch.permute, "permute"}
TRANSPOSE = {torch.transpose, "transpose", torch.swapaxes, "swapaxes"}
RESHAPE = {"view", "reshape", torch.reshape, torch.squeeze, "squeeze", torch.unsqueeze, "unsqueeze"}
"""Shape-only ops: the channel axis survives when it is neither split nor merged."""


def shape_of(node: object) -> tuple[int, ...] | None:
    if isinstance(node, fx.Node):
        tm = node.meta.get("tensor_meta")
        if tm is not None and hasattr(tm, "shape"):
            return tuple(tm.shape)
    return None


def is_value(node: fx.Node) -> bool:
    """Whether ShapeProp saw ``node`` produce a tensor (or a tuple holding tensors)."""
    return node.meta.get("tensor_meta") is not None


def as_int(x: object) -> int:
    """An fx argument known to be an int (a dim, an index)."""
    return int(cast(Any, x))


def full_slice(i: slice, n: int) -> bool:
    stop_ok = i.stop is None or (isinstance(i.stop, int) and i.stop >= n)
    return i.step in (None, 1) and i.start in (None, 0) and stop_ok


def prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def flat_args(args: object) -> list[object]:
    if isinstance(args, (list, tuple)):
        out: list[object] = []
        for a in args:
            out.extend(flat_args(a))
        return out
    if isinstance(args, dict):
        return flat_args(list(args.values()))
    return [args]


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


def is_known(node: fx.Node) -> bool:
    """Whether the walk has a rule for ``node``'s op (on constants it yields a constant)."""
    target = node.target
    try:
        return any(target in known for known in _KNOWN_SETS)
    except TypeError:  # unhashable target
        return False


class LayoutOps:
    """The layout rules of the ops above, for the graph's walker (which holds the state):
    how each op moves, keeps, couples or freezes the channel layout of its inputs.

    ``layout[node]`` is a node's layout, ``axis[node]`` the dim it describes (dim 1 for
    (N, C, ...) maps, the last dim for tokens), ``items[node]`` the layouts of a tuple
    output's items; a method sets ``out_axis`` when its result's axis is not its first
    input's.
    """

    b: GroupBuilder
    layout: dict[fx.Node, list[Segment] | None]
    axis: dict[fx.Node, int]
    items: dict[fx.Node, list[tuple[list[Segment] | None, int]]]
    consts: dict[tuple[fx.Node, int], list[Segment]]
    out_axis: int | None

    def has_cut_rule(self, module: str) -> bool:
        """Whether ``module`` (a qualified name in the model) can be cut."""
        raise NotImplementedError

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

    def in_axis(self, node: fx.Node) -> int:
        """The axis of the first argument with a layout (pass-through ops keep it)."""
        for a in flat_args((node.args, node.kwargs)):
            if self.lay(a) is not None:
                return self.ax(a)
        return 1

    def has_layout(self, node: fx.Node) -> bool:
        return any(
            isinstance(a, fx.Node) and (self.lay(a) is not None or a in self.items)
            for a in flat_args((node.args, node.kwargs))
        )

    def const_layout(self, arg: object, axis: int, where: str) -> list[Segment]:
        """A frozen layout for the channels (dim ``axis``) of a tensor without one: the
        model input or a constant. One per (tensor, axis)."""
        shape = shape_of(arg)
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
        shape = shape_of(node.args[0])
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
        lay, shape = self.lay(x), shape_of(x)
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
        if owner is not None and self.has_cut_rule(owner):
            self.b.add_member(lay, owner, "ln")
        else:
            self.b.freeze(lay, f"layer norm parameters without a cut rule at {where!r}")
        return lay

    def flatten(self, node: fx.Node, start: int, end: int) -> list[Segment] | None:
        lay = self.lay(node.args[0])
        shape = shape_of(node.args[0])
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
        others = prod(shape[start : end + 1]) // shape[axis]
        if others == 1:
            return lay
        where = self.where(node)
        self.b.freeze(lay, f"flattened spatial map at {where!r}")
        features = shape[axis] * others
        out = [Segment(self.b.new_space(features, where), features)]
        self.b.freeze(out, f"flattened spatial map at {where!r}")
        return out

    def getitem(self, node: fx.Node) -> list[Segment] | None:
        src, index = node.args[0], node.args[1]
        if isinstance(src, fx.Node) and src in self.items:
            if not isinstance(index, int):
                raise UnsupportedModelError(f"layer {self.where(node)!r}: slices a tuple output")
            item, axis = self.items[src][index]  # type: ignore[index]
            if item is not None:
                self.out_axis = axis
            return item
        lay, shape = self.lay(src), shape_of(src)
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
            if isinstance(i, fx.Node) and not is_value(i):
                i = 0  # a computed int index
            if i is None:
                out_dim += 1
                continue
            if in_dim == axis:
                full = isinstance(i, slice) and full_slice(i, shape[axis])
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
        out_shape = shape_of(node)
        if out_shape is None:
            return la if la is not None else lc
        nd = len(out_shape)

        def out_dim(arg: object) -> int:  # where arg's channel axis lands after broadcasting
            s = shape_of(arg)
            return self.ax(arg) + nd - len(s) if s is not None else -1

        if la is None or lc is None:
            known, other = (a, c) if la is not None else (c, a)
            lk = self.lay(known)
            so = shape_of(other)
            if so is not None and lk is not None:  # a constant tensor operand
                d = out_dim(known) - (nd - len(so))  # the constant's dim on the channel axis
                if 0 <= d < len(so) and so[d] > 1:
                    self.b.freeze(lk, f"per-channel constant at {self.where(node)!r}")
            self.out_axis = out_dim(known)
            return lk
        sa, sc = shape_of(a), shape_of(c)
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
        shape = shape_of(node)
        where = self.where(node)
        if shape is None or not isinstance(tensors, (list, tuple)):
            raise UnsupportedModelError(f"layer {where!r}: cannot read concat inputs")
        dim = as_int(dim) % len(shape)
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
                st = shape_of(t)
                if st is None:
                    raise UnsupportedModelError(f"layer {where!r}: concat of a non-tensor")
                n = int(st[axis])
                lt = [Segment(self.b.new_space(n, f"{where} constant"), n)]
                self.b.freeze(lt, f"constant channels concatenated at {where!r}")
            out.extend(lt)
        return out

    def reduce(self, node: fx.Node) -> list[Segment] | None:
        lay, shape = self.lay(node.args[0]), shape_of(node.args[0])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if shape is None:
            return lay
        if dims is None:
            self.b.freeze(lay, f"reduction over all dims at {self.where(node)!r}")
            return None
        dl = [
            as_int(d) % len(shape) for d in ([dims] if isinstance(dims, int) else cast(Any, dims))
        ]
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
        in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
        if in_shape is not None and out_shape is not None:
            axis = self.ax(node.args[0])
            before = prod(in_shape[:axis])
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
        shape = shape_of(node.args[0])
        if shape is None:
            return self.lay(node.args[0])
        nd, axis = len(shape), self.ax(node.args[0])
        rest = list(node.args[1:])
        target = node.target
        if target in PERMUTE:
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            if not dims:
                dims = cast(Any, node.kwargs.get("dims", []))
            order = [as_int(d) % nd for d in dims]
            self.out_axis = order.index(axis)
        else:
            d0 = as_int(rest[0] if rest else node.kwargs.get("dim0", 0)) % nd
            d1 = as_int(rest[1] if len(rest) > 1 else node.kwargs.get("dim1", 0)) % nd
            self.out_axis = d1 if axis == d0 else d0 if axis == d1 else axis
        if self.out_axis == 0:
            raise UnsupportedModelError(
                f"layer {self.where(node)!r}: moves the channels to the batch dim"
            )
        return self.lay(node.args[0])

    def softmax(self, node: fx.Node) -> list[Segment] | None:
        lay, shape = self.lay(node.args[0]), shape_of(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if shape is not None and (dim is None or as_int(dim) % len(shape) == self.ax(node.args[0])):
            self.b.freeze(lay, f"softmax over the channels at {self.where(node)!r}")
        return lay

    def expand(self, node: fx.Node) -> list[Segment] | None:
        in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
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
