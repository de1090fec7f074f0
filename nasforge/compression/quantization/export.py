"""ONNX export of compressed models: float models, and QuantSim models as QDQ graphs with INT8
weight storage. The export itself is hardware's one ONNX export
(:func:`nasforge.hardware.onnx.export_onnx`); what is here is the graph surgery specific to
compressed models.

The TorchScript exporter turns each fake-quantize op into a ``QuantizeLinear ->
DequantizeLinear`` pair. Weight pairs are then folded: the float weight initializer and its
``QuantizeLinear`` are replaced by an INT8 initializer feeding the ``DequantizeLinear`` -- the
file shrinks about 4x and the runtime sees the standard ``DQ(int8 weight) -> Conv`` pattern it
fuses into integer kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasforge.hardware.onnx import OPSET
from nasforge.hardware.onnx import export_onnx as _export

__all__ = [
    "OPSET",
    "compact",
    "export_onnx",
    "export_qdq",
    "fold_weight_quantizers",
    "transpose_matmul_weights",
]


def export_onnx(
    model: nn.Module, path: str | Path, input_shape: Sequence[int], compact_graph: bool = True
) -> Path:
    """Export ``model`` (eval mode, batch dimension dynamic, BN folded by the exporter) to
    ``path``; with ``compact_graph`` the file is shrunk by :func:`compact`. Returns the path."""
    import onnx

    path = Path(path)
    data = _export(
        model,
        input_shape,
        None if compact_graph else path,
        dynamic_batch=True,
        example=torch.zeros(1, *input_shape),
    )
    if compact_graph:
        m = onnx.load_from_string(data)
        compact(m)
        onnx.save(m, str(path))
    return path


def export_qdq(sim: nn.Module, path: str | Path, input_shape: Sequence[int]) -> Path:
    """Export a calibrated :class:`QuantSim` as a QDQ ONNX model with INT8 weights."""
    import onnx

    sim.freeze_weight_scales(True)  # type: ignore[operator]
    try:
        path = export_onnx(sim, path, input_shape, compact_graph=False)
    finally:
        sim.freeze_weight_scales(False)  # type: ignore[operator]
    model = onnx.load(str(path))
    fold_weight_quantizers(model)
    transpose_matmul_weights(model)
    compact(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def compact(model: object) -> None:
    """Shrink a graph without changing what it computes (in place): constants become
    initializers, all-zero weight zero points are dropped (0 is the ONNX default), and
    long exporter-generated tensor names become short ones; node names are kept."""
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    for n in list(graph.node):
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = numpy_helper.to_array(n.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(t, n.output[0]))
            graph.node.remove(n)
    inits = {i.name: i for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and len(n.input) == 3 and n.input[0] in inits:
            zp = inits.get(n.input[2])
            if zp is not None and zp.data_type == 3 and not numpy_helper.to_array(zp).any():  # int8
                del n.input[2]
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    rename: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return rename.setdefault(name, f"t{len(rename)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for n in graph.node:
        for i, name in enumerate(n.input):
            n.input[i] = short(name)
        for i, name in enumerate(n.output):
            n.output[i] = short(name)
    for vi in list(graph.value_info):
        graph.value_info.remove(vi)


def fold_weight_quantizers(model: object) -> int:
    """Replace ``QuantizeLinear(constant float)`` by a quantized initializer (in place).

    Returns the number of folded weights. Rounding is half-to-even, as in ONNX.
    """
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    inits = {i.name: i for i in graph.initializer}
    consts = {}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute:
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return consts.get(name)

    folded, remove = 0, []
    for n in graph.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 3:
            continue
        w, scale, zp = value(n.input[0]), value(n.input[1]), value(n.input[2])
        if w is None or scale is None or zp is None or w.dtype != np.float32:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale_b, zp_b = scale.reshape(shape), zp.reshape(shape).astype(np.int32)
        else:
            scale_b, zp_b = scale, zp.astype(np.int32)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w / scale_b) + zp_b, info.min, info.max).astype(zp.dtype)
        qname = n.output[0] + "_int8"
        graph.initializer.append(numpy_helper.from_array(q, qname))
        for other in graph.node:
            for i, inp in enumerate(other.input):
                if inp == n.output[0]:
                    other.input[i] = qname
        remove.append(n)
        folded += 1
    for n in remove:
        graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used and init.name not in {o.name for o in graph.output}:
            graph.initializer.remove(init)
    for n in list(graph.node):
        if n.op_type == "Constant" and n.output[0] not in used:
            graph.node.remove(n)
    return folded


def transpose_matmul_weights(model: object) -> int:
    """``DQ(int8 W, axis 0) -> Transpose -> MatMul`` becomes ``DQ(int8 W^T, axis 1) -> MatMul``
    (in place). The exporter writes a Linear on a 3-D input as ``MatMul(x, W^T) + b``; the
    Transpose between the DequantizeLinear and the MatMul hides the pattern ONNX Runtime fuses
    into an integer MatMul (and is not constant-folded, DQ being kept for fusion). Returns the
    number of rewritten weights."""
    from onnx import helper, numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, list[object]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    done, remove = 0, []
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        outs = users.get(dq.output[0], [])
        if len(outs) != 1 or getattr(outs[0], "op_type", "") != "Transpose":
            continue
        tr: Any = outs[0]
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), None)
        w = numpy_helper.to_array(inits[dq.input[0]])
        if w.ndim != 2 or perm not in (None, [1, 0]):
            continue
        mm = users.get(tr.output[0], [])
        if not mm or any(getattr(u, "op_type", "") != "MatMul" for u in mm):
            continue
        if any(list(getattr(u, "input", []))[1] != tr.output[0] for u in mm):
            continue
        if users.get(dq.input[0], []) != [dq]:
            continue  # the int8 weight is shared with another node
        new = numpy_helper.from_array(np.ascontiguousarray(w.T), dq.input[0] + "_t")
        graph.initializer.append(new)
        dq.input[0] = new.name
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        scale = inits.get(dq.input[1])
        per_channel = scale is not None and numpy_helper.to_array(scale).size > 1
        for a in list(dq.attribute):
            if a.name == "axis":
                dq.attribute.remove(a)
        if per_channel:
            dq.attribute.append(helper.make_attribute("axis", 1 - axis))
        for u in mm:
            u.input[1] = dq.output[0]  # type: ignore[attr-defined]
        remove.append(tr)
        done += 1
    for n in remove:
        graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    return done
