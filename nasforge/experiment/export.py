"""The deployable ``model.onnx`` of a run and its check against PyTorch.

Both go through hardware's one ONNX export and one onnxruntime session builder
(:mod:`nasforge.hardware.onnx`); this module only fixes what a deployable file is: a dynamic
batch dimension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nasforge.hardware.onnx import export_onnx as _export
from nasforge.hardware.onnx import ort_session


def export_onnx(
    model: torch.nn.Module,
    input_shape: tuple[int, ...],
    path: str | Path | None = None,
    dynamic_batch: bool = True,
) -> bytes:
    """``model`` as a deployable ONNX graph (batch dimension dynamic by default); returns the
    bytes and writes them to ``path`` if given. See :func:`nasforge.hardware.export_onnx`."""
    return _export(model, input_shape, path, dynamic_batch=dynamic_batch)


def onnx_max_abs_diff(model: torch.nn.Module, onnx_bytes: bytes, x: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch and onnxruntime logits on ``x``."""
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort_session(onnx_bytes)
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(out - ref).max())
