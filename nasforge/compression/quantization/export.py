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


def export_qdq(
    sim: nn.Module, path: str | Path, input_shape: Sequence[int], pixel_matmul: bool = False
) -> Path:
    """Export a calibrated :class:`QuantSim` as a QDQ ONNX model with INT8 weights.

    At the export's static spatial size, kernel taps that only ever read padding are cropped
    (:func:`crop_conv_kernels`) and pools over a 1x1 map dropped (:func:`drop_identity_pools`):
    both exact. Measured (AMD EPYC avx512_vnni, 2 CPUs shared, load 3.8-5.3, onnxruntime 1.32,
    1 thread, compare_speedups, EfficientNet-B0 width 1 at 32x32 trained 2 epochs on mnist5k):
    INT8 with vs without them at b32 1.03-1.20x and 1.04-1.20x (two passes), b1 1.07x
    [1.04, 1.09] (crop alone) -- all passes *unstable* (busy host). The same rewrites on the
    FP32 export measured 0.91-1.12x and 0.95-1.00x at b32: not faster, so :func:`export_onnx`
    leaves the float graph as it is.

    ``pixel_matmul`` also runs 1x1 convs on 1x1 maps as one integer MatMul over the batch
    (:func:`pixel_convs_as_matmul`): faster at large batch, slower at batch 1 -- a candidate
    for measured selection, off by default."""
    import onnx

    sim.freeze_weight_scales(True)  # type: ignore[operator]
    try:
        path = export_onnx(sim, path, input_shape, compact_graph=False)
    finally:
        sim.freeze_weight_scales(False)  # type: ignore[operator]
    model = onnx.load(str(path))
    fold_weight_quantizers(model)
    transpose_matmul_weights(model)
    crop_conv_kernels(model)
    drop_identity_pools(model)
    if pixel_matmul:
        pixel_convs_as_matmul(model)
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


def _useful_taps(size: int, k: int, stride: int, pad: int, out: int) -> tuple[int, int]:
    """First and last kernel tap (of ``k``) that reads a real input element (not padding)
    for some output position, along one axis of static ``size``."""
    useful = [t for t in range(k) if any(0 <= o * stride + t - pad < size for o in range(out))]
    return (useful[0], useful[-1]) if useful else (0, k - 1)


def crop_conv_kernels(model: object) -> int:
    """Crop each Conv's kernel to the taps that can touch real input (in place; exact).

    At a static spatial size smaller than the kernel's reach (EfficientNet's 5x5 depthwise
    convs on 1x1 and 2x2 maps at 32x32 input) the outer taps only ever multiply the zero
    padding: a 5x5 depthwise conv on a 1x1 map is a per-channel scale. Cropping them (and the
    padding with them) leaves every output unchanged -- in float, and in INT8 too, where the
    padding is the zero point and the weight scales are per output channel -- but the runtime
    no longer walks 25 taps. ONNX Runtime's INT8 depthwise kernel pays for every tap (profiled,
    EfficientNet-B0 32x32 b32, onnxruntime 1.32, 1 thread, AMD EPYC, busy host: the four
    1x1-map depthwise QLinearConvs took 1.6 ms of a 19.9 ms run; all 16 INT8 depthwise convs
    2.9 ms against 1.4 ms for the FP32 ones).
    The weight is an initializer (float) or ``DequantizeLinear(int8 initializer)``; a weight
    shared with another node, dilation, ``auto_pad`` or a non-static input size is left alone.
    Returns the number of cropped convs."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    shapes = _static_shapes(model)
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    done = 0
    for conv in graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2:
            continue
        attrs = {a.name: a for a in conv.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        if "dilations" in attrs and any(d != 1 for d in attrs["dilations"].ints):
            continue
        wname = conv.input[1]
        dq = producers.get(wname)
        if dq is not None:
            if dq.op_type != "DequantizeLinear" or uses.get(wname) != 1:
                continue
            wname = dq.input[0]
        if wname not in inits or uses.get(wname) != 1:
            continue
        w = numpy_helper.to_array(inits[wname])
        x = shapes.get(conv.input[0], [])
        nsp = w.ndim - 2
        if nsp < 1 or len(x) != w.ndim or any(s <= 0 for s in x[2:]):
            continue
        ks = list(w.shape[2:])
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * nsp
        pads = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * nsp)
        lo, hi, new_pads, crop = [], [], list(pads), False
        for d in range(nsp):
            size, k, st, pb, pe = x[2 + d], ks[d], strides[d], pads[d], pads[d + nsp]
            out = (size + pb + pe - k) // st + 1
            a, b = _useful_taps(size, k, st, pb, out)
            k2 = b - a + 1
            pb2 = pb - a
            pe2 = (out - 1) * st + k2 - size - pb2
            if pb2 < 0 or pe2 < 0 or (size + pb2 + pe2 - k2) // st + 1 != out:
                a, b, pb2, pe2 = 0, k - 1, pb, pe
            crop = crop or (a, b) != (0, k - 1)
            lo.append(a)
            hi.append(b + 1)
            new_pads[d], new_pads[d + nsp] = pb2, pe2
        if not crop:
            continue
        index = (slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(lo, hi))
        cropped = np.ascontiguousarray(w[index])
        inits[wname].CopyFrom(numpy_helper.from_array(cropped, wname))
        for key, vals in (("kernel_shape", list(cropped.shape[2:])), ("pads", new_pads)):
            if key in attrs:
                conv.attribute.remove(attrs[key])
            conv.attribute.append(onnx.helper.make_attribute(key, vals))
        done += 1
    return done


def _static_shapes(model: object) -> dict[str, list[int]]:
    """Tensor name -> shape (``-1`` for a dynamic dimension) from ONNX shape inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - shape inference is best effort here
        return {}
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    return shapes


def drop_identity_pools(model: object) -> int:
    """Remove each GlobalAveragePool/GlobalMaxPool whose input is statically 1x1 (in place).

    Over a single position the pool is the identity. ONNX Runtime's INT8 kernel is not free
    there: the head's QLinearGlobalAveragePool on EfficientNet-B0's (32, 1280, 1, 1) map
    (32x32 input) took 0.47 ms (median) of an 18 ms run, left in NCHW and walked one "image"
    per channel. In a QDQ graph the pool's ``DQ -> pool -> Q -> DQ`` becomes the first DQ:
    the value keeps the quantization of the pool's input (one rounding fewer). Returns the
    number of removed pools."""
    graph = model.graph  # type: ignore[attr-defined]
    shapes = _static_shapes(model)
    outputs = {o.name for o in graph.output}
    done = 0
    for pool in list(graph.node):
        if pool.op_type not in ("GlobalAveragePool", "GlobalMaxPool"):
            continue
        x = shapes.get(pool.input[0], [])
        if len(x) < 3 or any(s != 1 for s in x[2:]) or pool.output[0] in outputs:
            continue
        src, out = pool.input[0], pool.output[0]
        users = [n for n in graph.node if out in n.input]
        # QDQ: DQ(a) -> pool -> Q(b) -> DQ(b) -> ...: the consumers read DQ(a) directly
        if len(users) == 1 and users[0].op_type == "QuantizeLinear":
            q = users[0]
            dqs = [n for n in graph.node if q.output[0] in n.input]
            if (
                dqs
                and q.output[0] not in outputs
                and all(d.op_type == "DequantizeLinear" and d.output[0] not in outputs for d in dqs)
            ):
                for d in dqs:
                    for n in graph.node:
                        for i, name in enumerate(n.input):
                            if name == d.output[0]:
                                n.input[i] = src
                    graph.node.remove(d)
                graph.node.remove(q)
                graph.node.remove(pool)
                done += 1
                continue
        for n in users:
            for i, name in enumerate(n.input):
                if name == out:
                    n.input[i] = src
        graph.node.remove(pool)
        done += 1
    return done


def pixel_convs_as_matmul(model: object) -> int:
    """Rewrite ``DQ(x) -> Conv 1x1 -> Q`` on a static 1x1 map as ``Reshape(x_q to (N, 1, C)) ->
    DQ -> MatMul(DQ(W^T)) -> Add(bias) -> Q -> Reshape(N, O, 1, 1)`` (in place).

    ONNX Runtime runs a conv one image at a time: on a 1x1 map that is a matrix-vector
    product per image (EfficientNet-B0's SE convs and its last stages at 32x32 input); the
    MatMul (3-D, so it is not turned into a float Gemm) becomes one MatMulIntegerToFloat over
    the batch. Same values up to the bias (added in float instead of int32). Measured (AMD
    EPYC, 2 CPUs, load 4.3-4.5, onnxruntime 1.32, 1 thread, compare_speedups, EfficientNet-B0
    32x32 trained, 34 convs rewritten; two passes): b32 1.09-1.18x and 1.14-1.22x faster
    (INT8 vs FP32 1.55-1.73x and 1.62-1.77x with it, against 1.39-1.51x and 1.37-1.51x
    without), b1 0.59-0.91x and 0.64-0.84x (slower); all *unstable* (busy host). Top-1 on
    mnist5k unchanged (0.891; FP32 0.883).
    Returns the number of rewritten convs."""
    from onnx import helper, numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    shapes = _static_shapes(model)
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    users: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    done = 0
    for conv in list(graph.node):
        if conv.op_type != "Conv" or shapes.get(conv.input[0], [])[2:] != [1, 1]:
            continue
        attrs = {a.name: a for a in conv.attribute}
        if "group" in attrs and attrs["group"].i != 1:
            continue
        if any(
            k in attrs and any(v != d for v in attrs[k].ints)
            for k, d in (("kernel_shape", 1), ("pads", 0), ("dilations", 1))
        ):
            continue
        dqx, dqw = producers.get(conv.input[0]), producers.get(conv.input[1])
        q = users.get(conv.output[0], [])
        if (
            dqx is None
            or dqw is None
            or dqx.op_type != "DequantizeLinear"
            or dqw.op_type != "DequantizeLinear"
            or dqw.input[0] not in inits
            or len(users.get(dqx.output[0], [])) != 1
            or len(users.get(dqw.output[0], [])) != 1
            or len(users.get(dqw.input[0], [])) != 1
            or len(q) != 1
            or q[0].op_type != "QuantizeLinear"
            or q[0].output[0] in outputs
            or conv.output[0] in outputs
        ):
            continue
        w = numpy_helper.to_array(inits[dqw.input[0]])
        if w.ndim != 4:
            continue
        out_c, in_c = int(w.shape[0]), int(w.shape[1])
        inits[dqw.input[0]].CopyFrom(
            numpy_helper.from_array(np.ascontiguousarray(w.reshape(out_c, in_c).T), dqw.input[0])
        )
        scale = inits.get(dqw.input[1])
        for a in list(dqw.attribute):
            if a.name == "axis":
                dqw.attribute.remove(a)
        if scale is None or numpy_helper.to_array(scale).size > 1:
            dqw.attribute.append(helper.make_attribute("axis", 1))
        name = conv.output[0]
        to3 = numpy_helper.from_array(np.array([-1, 1, in_c], np.int64), name + "_to3d")
        to4 = numpy_helper.from_array(np.array([-1, out_c, 1, 1], np.int64), name + "_to4d")
        graph.initializer.extend([to3, to4])
        flat = helper.make_node("Reshape", [dqx.input[0], to3.name], [name + "_xq3d"])
        dqx.input[0] = flat.output[0]
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        mm = helper.make_node(
            "MatMul", [dqx.output[0], dqw.output[0]], [name + "_mm" if has_bias else name]
        )
        new = [mm]
        if has_bias:
            new.append(helper.make_node("Add", [mm.output[0], conv.input[2]], [name]))
        back = helper.make_node("Reshape", [name + "_q3d", to4.name], [q[0].output[0]])
        q[0].output[0] = name + "_q3d"
        at = list(graph.node).index(conv)
        graph.node.remove(conv)
        for k, n in enumerate(new):
            graph.node.insert(at + k, n)
        graph.node.insert(list(graph.node).index(dqx), flat)
        graph.node.insert(list(graph.node).index(q[0]) + 1, back)
        done += 1
    return done
