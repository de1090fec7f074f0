"""ONNX export and the onnxruntime check (max abs difference against PyTorch)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch


def export_onnx(
    model: torch.nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path | None = None,
    dynamic_batch: bool = True,
) -> bytes:
    """Export with the TorchScript-based exporter (no onnxscript needed); returns the bytes."""
    model.eval()
    x = torch.randn(1, *input_shape)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
            opset_version=17,
        )
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def onnx_max_abs_diff(model: torch.nn.Module, onnx_bytes: bytes, x: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch and onnxruntime logits on ``x``."""
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    from nasforge.compression.quantization.runtime import ort_session

    sess = ort_session(onnx_bytes)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(out - ref).max())
