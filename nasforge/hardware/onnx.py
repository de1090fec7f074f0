"""The one ONNX export and the one onnxruntime session builder of nasforge.

Everything that writes an ``.onnx`` file or opens an onnxruntime session goes through here:
the ``onnxruntime`` backends, the deployable ``best/model.onnx`` of a run, and compression's
FP32 and INT8 (QDQ) artifacts. One place therefore decides the exporter (TorchScript,
``dynamo=False``: no onnxscript needed, fake-quantize ops become ``QuantizeLinear`` /
``DequantizeLinear`` pairs), the opset, the tensor names, and the session options that make
timings comparable: threads pinned, idle-thread spinning off (spinning threads steal cores
from whatever else runs on a shared machine), full graph optimisation.

onnxruntime and onnx are imported only when used.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasforge.hardware.backend_base import BackendError, BackendSpec, example_input

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: onnxruntime graph optimisation levels by name
GRAPH_OPTIMIZATION = ("disabled", "basic", "extended", "all")


def export_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str | Path | None = None,
    *,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    example: torch.Tensor | None = None,
    opset: int = OPSET,
) -> bytes:
    """Serialise ``model`` to ONNX in eval mode; return the bytes (and write them to ``path``).

    The graph has one input ``input`` and one output ``logits``; constants are folded, so
    batch norm after a conv is folded into it.

    Args:
        model: exported in eval mode; its training flag is restored afterwards and it is not
            otherwise changed.
        input_shape: per-sample shape, e.g. ``(3, 32, 32)``.
        path: if given, the bytes are also written there.
        batch_size: leading dimension of the traced input.
        dynamic_batch: make the batch dimension symbolic (deployable files) instead of fixed
            (timing, where onnxruntime may specialise on the shape).
        example: the traced input; default :func:`example_input` of ``(batch_size,
            *input_shape)``. Only its shape matters to the graph.
        opset: ONNX opset version.
    """
    x = example if example is not None else example_input(input_shape, batch_size)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                buf,  # type: ignore[arg-type]
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module.

    Raises:
        BackendError: onnxruntime is not installed.
    """
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "backend onnxruntime: the onnxruntime package is not installed"
        ) from None
    return onnxruntime


def ort_session_options(
    spec: BackendSpec | None = None,
    *,
    threads: int | None = None,
    graph_optimization: str = "all",
    optimized_model_path: str | Path | None = None,
) -> Any:
    """onnxruntime ``SessionOptions`` for ``spec``.

    Sequential mode pins ``threads`` intra-op threads (one inter-op); parallel mode pins
    ``threads`` inter-op threads with one intra-op thread each. Spinning is off unless
    ``spec.allow_spinning``. Warnings of onnxruntime are silenced.

    Args:
        spec: an onnxruntime spec (default: ``onnxruntime``, sequential, one thread).
        threads: overrides ``spec.threads``.
        graph_optimization: ``all`` (default), ``extended``, ``basic`` or ``disabled``.
        optimized_model_path: where onnxruntime saves the optimised graph (inspection).

    Raises:
        BackendError: onnxruntime is missing or ``graph_optimization`` is unknown.
    """
    ort = require_onnxruntime()
    spec = spec or BackendSpec("onnxruntime", threads=threads or 1)
    if threads is not None and threads != spec.threads:
        spec = replace(spec, threads=threads)
    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise BackendError(
            f"graph_optimization: {graph_optimization!r} is not one of "
            f"{', '.join(GRAPH_OPTIMIZATION)}"
        )
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    spin = "1" if spec.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    if spec.parallel:
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        so.inter_op_num_threads = spec.threads
        so.intra_op_num_threads = 1
    else:
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = spec.threads
        so.inter_op_num_threads = 1
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    so.log_severity_level = 3
    return so


def ort_session(
    model: bytes | str | Path,
    spec: BackendSpec | None = None,
    *,
    threads: int | None = None,
    graph_optimization: str = "all",
    optimized_model_path: str | Path | None = None,
) -> Any:
    """A CPU ``InferenceSession`` on ``model`` (ONNX bytes or a file) with
    :func:`ort_session_options`; every session nasforge opens is made here.

    Raises:
        BackendError: onnxruntime is not installed.
    """
    ort = require_onnxruntime()
    so = ort_session_options(
        spec,
        threads=threads,
        graph_optimization=graph_optimization,
        optimized_model_path=optimized_model_path,
    )
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
