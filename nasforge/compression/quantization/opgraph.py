"""What each ``torch.fx`` node is, for quantization, and the graph rewrites done before placing
quantizers (split out of :mod:`~nasforge.compression.quantization.qsim`, which holds the placement
policy, :class:`~nasforge.compression.quantization.qsim.QuantSpec` and the simulation).

* Op kinds: :func:`op_kind` classifies a node (``conv``, ``linear``, ``avgpool``, ``cat`` or one of
  :data:`OP_KINDS`); :data:`KIND_DEFAULTS` says whether each kind runs quantized by default and
  why (the per-kind measurements are in qsim's module docstring). :func:`is_movement` (data
  movement: its quantizer is shared with its input) and :func:`is_fused_act` (ReLU/ReLU6 fused
  into the requantization).
* Values: :func:`float_values_static` / :func:`float_values_shapeprop` say which nodes hold a
  floating tensor (quantizers go only there); :func:`feeds_float_norm`.
* Rewrites (in place): :func:`trace_model`, :func:`fold_bn_graph`, :func:`decompose_silu`
  (``x * sigmoid(x)``), :func:`fold_scalar_mul` (``linear(x) * c`` into the Linear),
  :func:`decompose_attention_of`.
"""

from __future__ import annotations

import operator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from nasforge.compression.errors import UnsupportedModelError
from nasforge.nn.fuse import fold_conv_bn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FUSED_ACT_MODULES = (nn.ReLU, nn.ReLU6)
_FUSED_ACT_FUNCTIONS = {F.relu, F.relu6, torch.relu}
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_MOVEMENT_MODULES = (nn.Flatten, nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d)
_MOVEMENT_FUNCTIONS = {
    torch.flatten,
    F.max_pool2d,
    F.dropout,
    torch.reshape,
    torch.transpose,
    torch.permute,
    torch.squeeze,
    torch.unsqueeze,
    operator.getitem,
}
_MOVEMENT_METHODS = {
    "flatten",
    "view",
    "reshape",
    "contiguous",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "expand",
}

#: op kinds ``QuantSpec.float_ops`` names (see :data:`KIND_DEFAULTS` for the defaults)
OP_KINDS = (
    "silu",
    "sigmoid",
    "hardswish",
    "hardsigmoid",
    "gelu",
    "softmax",
    "layernorm",
    "matmul",
    "mul",
    "add",
)
#: what each op kind does by default, and why (the ``reason`` of :meth:`QuantSim.layer_decisions`)
KIND_DEFAULTS: dict[str, tuple[bool, str]] = {
    "conv": (True, "int8: QLinearConv (ReLU/Clip fused)"),
    "linear": (True, "int8: QGemm / MatMulIntegerToFloat / QLinearMatMul"),
    "avgpool": (True, "int8: QLinear(Global)AveragePool"),
    "cat": (True, "int8: QLinearConcat"),
    # SiLU = x * sigmoid(x): decomposed so that both halves run on integer kernels.
    "silu": (True, "int8: decomposed into QLinearSigmoid + QLinearMul"),
    "sigmoid": (True, "int8: QLinearSigmoid"),
    "mul": (True, "int8: QLinearMul"),
    "add": (True, "int8: QLinearAdd"),
    "matmul": (True, "int8: QLinearMatMul (both inputs quantized)"),
    "softmax": (True, "int8: QLinearSoftmax"),
    # No integer kernel in ONNX Runtime 1.32 (CPU EP): run float, with no Q/DQ pair
    # placed for them; a neighbour that is quantized still quantizes its own inputs.
    "hardswish": (False, "float: no integer kernel in ONNX Runtime"),
    "hardsigmoid": (False, "float: no integer kernel in ONNX Runtime"),
    "gelu": (False, "float: no integer kernel in ONNX Runtime"),
    "layernorm": (False, "float: no integer kernel in ONNX Runtime"),
}
_KIND_MODULES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.SiLU, "silu"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Hardswish, "hardswish"),
    (nn.Hardsigmoid, "hardsigmoid"),
    (nn.GELU, "gelu"),
    (nn.Softmax, "softmax"),
    (nn.LayerNorm, "layernorm"),
)
_KIND_FUNCTIONS: dict[Any, str] = {
    F.silu: "silu",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    F.gelu: "gelu",
    torch.softmax: "softmax",
    F.softmax: "softmax",
    F.layer_norm: "layernorm",
    torch.matmul: "matmul",
    operator.matmul: "matmul",
    torch.bmm: "matmul",
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    operator.mul: "mul",
    operator.imul: "mul",
    torch.mul: "mul",
    torch.cat: "cat",
    torch.concat: "cat",
}
_KIND_METHODS = {
    "sigmoid": "sigmoid",
    "softmax": "softmax",
    "matmul": "matmul",
    "add": "add",
    "mul": "mul",
}
#: kinds that need two tensor operands to run on an integer kernel
BINARY_KINDS = {"add", "mul", "matmul"}


def fold_bn_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every BN whose input is a conv used only by it (in place, eval semantics)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BN):
            continue
        src = node.args[0]
        if not (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and len(src.users) == 1
            and isinstance(gm.get_submodule(str(src.target)), _CONV)
        ):
            continue
        bn = gm.get_submodule(node.target)
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        conv = gm.get_submodule(str(src.target))
        set_submodule(gm, str(src.target), fold_conv_bn(conv, bn))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def set_submodule(gm: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def is_fused_act(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        if isinstance(m, _FUSED_ACT_MODULES):
            return True
        return isinstance(m, nn.Hardtanh) and m.min_val == 0.0
    return n.op == "call_function" and n.target in _FUSED_ACT_FUNCTIONS


def is_movement(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(gm.get_submodule(str(n.target)), _MOVEMENT_MODULES)
    if n.op == "call_function":
        return n.target in _MOVEMENT_FUNCTIONS
    return n.op == "call_method" and n.target in _MOVEMENT_METHODS


def trace_model(model: nn.Module) -> fx.GraphModule:
    """The channel graph's tracer (same leaves, scopes and one-line error), except that
    attention modules are traced through so their matmuls/softmax are visible."""
    from nasforge.compression.pruning import graph as _graph

    base = cast(Any, _graph)._Tracer
    try:
        from nasforge.compression.attention import SelfAttention

        through: tuple[type, ...] = (SelfAttention,)
    except ImportError:  # pragma: no cover - before attention.py exists
        through = ()

    class _QTracer(base):  # type: ignore[misc, valid-type]
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            if isinstance(m, through):
                return False
            return bool(super().is_leaf_module(m, qualname))

    tracer = _QTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many types; we re-raise one clear error
        where = tracer.nf_scope[-1] or type(model).__name__
        raise UnsupportedModelError(
            f"layer {where!r}: torch.fx cannot trace it ({type(exc).__name__}: {exc}); "
            "data-dependent control flow cannot be quantized"
        ) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def decompose_attention_of(model: nn.Module) -> nn.Module:
    try:
        from nasforge.compression.attention import decompose_attention
    except ImportError:  # pragma: no cover - before attention.py exists
        return model
    return decompose_attention(model)


def op_kind(gm: fx.GraphModule, n: fx.Node) -> str | None:
    """The op kind of a node (``conv``, ``linear``, ``avgpool`` or one of :data:`OP_KINDS`)."""
    if n.op == "call_module":
        m = gm.get_submodule(str(n.target))
        if isinstance(m, _CONV):
            return "conv"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, _POOL_MODULES):
            return "avgpool"
        return next((k for cls, k in _KIND_MODULES if isinstance(m, cls)), None)
    if n.op == "call_function":
        return _KIND_FUNCTIONS.get(n.target)
    if n.op == "call_method":
        return _KIND_METHODS.get(str(n.target))
    return None


def decompose_silu(gm: fx.GraphModule) -> None:
    """``silu(x)`` -> ``x * sigmoid(x)`` (in place), so both run on integer kernels."""
    for n in list(gm.graph.nodes):
        if op_kind(gm, n) != "silu" or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        x = n.args[0]
        with gm.graph.inserting_after(n):
            sig = gm.graph.call_function(torch.sigmoid, (x,))
        with gm.graph.inserting_after(sig):
            mul = gm.graph.call_function(operator.mul, (x, sig))
        for new in (sig, mul):
            new.meta["scope"] = n.meta.get("scope", "")
            new.meta["silu"] = str(n.target) if n.op == "call_module" else n.name
        n.replace_all_uses_with(mul)
        gm.graph.erase_node(n)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


@torch.no_grad()
def fold_scalar_mul(gm: fx.GraphModule) -> None:
    """``linear(x) (-> reshape/transpose...) * c`` -> the Linear's weight and bias times ``c``
    (in place; exact in float). Attention scales ``q`` this way; a multiplication by a Python
    number has no integer kernel and would cost a Q/DQ pair."""
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    for n in list(gm.graph.nodes):
        if op_kind(gm, n) != "mul" or n.kwargs or len(n.args) != 2:
            continue
        a, c = n.args
        if isinstance(a, (int, float)):
            a, c = c, a
        if not isinstance(a, fx.Node) or isinstance(c, bool) or not isinstance(c, (int, float)):
            continue
        src = a
        while is_movement(gm, src) and len(src.users) == 1 and src.all_input_nodes:
            src = src.args[0] if isinstance(src.args[0], fx.Node) else src
            if src is a:
                break
        if not (
            src.op == "call_module"
            and len(src.users) == 1
            and calls.get(str(src.target)) == 1
            and isinstance(gm.get_submodule(str(src.target)), nn.Linear)
        ):
            continue
        lin = cast(nn.Linear, gm.get_submodule(str(src.target)))
        lin.weight.mul_(float(c))
        if lin.bias is not None:
            lin.bias.mul_(float(c))
        n.replace_all_uses_with(a)
        gm.graph.erase_node(n)
    gm.graph.lint()
    gm.recompile()


_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad"}
_SHAPE_METHODS = {"size", "dim", "numel", "item", "tolist", "__len__", "nelement"}
_INT_FUNCTIONS = {
    torch._assert,
    len,
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    operator.floordiv,
    operator.mod,
    operator.not_,
    operator.and_,
    operator.or_,
}


def float_values_static(gm: fx.GraphModule) -> dict[fx.Node, bool]:
    """Best guess, without running the model, of which nodes hold a floating tensor: shape
    reads, integer arithmetic on them, comparisons and asserts do not. :meth:`QuantSim.calibrate`
    confirms it on real data (ShapeProp) and removes any quantizer placed on a non-float."""
    res: dict[fx.Node, bool] = {}
    for n in gm.graph.nodes:
        ins = n.all_input_nodes
        if n.op == "placeholder":
            res[n] = True
        elif n.op == "get_attr":
            res[n] = isinstance(getattr_path(gm, str(n.target)), torch.Tensor) and bool(
                getattr_path(gm, str(n.target)).is_floating_point()
            )
        elif n.op == "output":
            res[n] = False
        elif n.op == "call_function" and n.target is getattr:
            res[n] = len(n.args) > 1 and n.args[1] not in _SHAPE_ATTRS and res.get(ins[0], False)
        elif n.op == "call_method" and n.target in _SHAPE_METHODS:
            res[n] = False
        elif n.op == "call_function" and n.target in _INT_FUNCTIONS:
            res[n] = False
        elif n.op == "call_module" and isinstance(
            gm.get_submodule(str(n.target)), nn.MultiheadAttention
        ):
            res[n] = False  # a tuple
        else:
            res[n] = any(res.get(a, False) for a in ins)
    return res


def getattr_path(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def float_values_shapeprop(gm: fx.GraphModule, example: torch.Tensor) -> dict[fx.Node, bool]:
    """Which nodes hold a floating tensor, from running ``example`` through the graph."""
    from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    res: dict[fx.Node, bool] = {}
    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        res[n] = isinstance(meta, TensorMetadata) and meta.dtype.is_floating_point
    return res


def feeds_float_norm(gm: fx.GraphModule, n: fx.Node, norm_is_float: bool) -> bool:
    """Whether ``n``'s value reaches a LayerNorm (through data movement) that runs float
    (``norm_is_float``: the spec keeps ``layernorm`` float)."""
    todo, seen = list(n.users), set()
    while todo:
        u = todo.pop()
        if u in seen:
            continue
        seen.add(u)
        if norm_is_float and op_kind(gm, u) == "layernorm":
            return True
        if is_movement(gm, u):
            todo.extend(u.users)
    return False


def node_name(n: fx.Node) -> str:
    if n.op == "call_module":
        return str(n.target)
    scope = str(n.meta.get("scope", ""))
    return f"{scope}.{n.name}" if scope else n.name
