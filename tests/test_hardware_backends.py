"""Backends: spec parsing, onnxruntime equals torch, clear errors for what is not here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nasforge.hardware.backends import (
    BackendError,
    BackendSpec,
    example_input,
    export_onnx_bytes,
    make_runner,
    ort_session_options,
    prepare_model,
)
from nasforge.nn.blocks import InvertedResidual


@pytest.mark.parametrize(
    "text, label, mode",
    [
        ("torch", "torch", "sequential"),
        ("onnxruntime", "onnxruntime", "sequential"),
        ("ort:parallel", "onnxruntime:parallel", "parallel"),
        ("ONNX", "onnxruntime", "sequential"),
        ("cuda", "cuda", "sequential"),
        ("torch:parallel", "torch:parallel", "parallel"),
    ],
)
def test_parse(text: str, label: str, mode: str) -> None:
    spec = BackendSpec.parse(text, threads=2)
    assert spec.label == label and spec.execution_mode == mode and spec.threads == 2
    assert BackendSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": "tpu"}, "backend"),
        ({"execution_mode": "eager"}, "execution_mode"),
        ({"name": "cuda", "execution_mode": "parallel"}, "execution_mode"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_specs_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(BackendError, match=field):
        BackendSpec(**kwargs)


def test_onnxruntime_computes_what_torch_computes() -> None:
    torch.manual_seed(0)
    block = InvertedResidual(8, 8, kernel=5, stride=1, expand=3, act="hswish", se=True)
    for m in block.modules():  # non-trivial BN statistics so that folding is exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    spec = BackendSpec("onnxruntime", threads=1)
    import onnxruntime as ort

    sess = ort.InferenceSession(
        export_onnx_bytes(prepare_model(block, spec), (8, 6, 6), 2),
        ort_session_options(spec),
        providers=["CPUExecutionProvider"],
    )
    x = example_input((8, 6, 6), 2)
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = block.eval()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_spinning_is_off_by_default() -> None:
    so = ort_session_options(BackendSpec("onnxruntime"))
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_runner_returns_wall_and_cpu_samples() -> None:
    r = make_runner(nn.Linear(4, 4), (4,), 1, BackendSpec("torch", threads=1))
    walls, cpus = r.run(3)
    r.close()
    assert len(walls) == len(cpus) == 3 and all(w > 0 for w in walls)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="no CUDA device"):
        make_runner(nn.Linear(4, 4), (4,), 1, BackendSpec("cuda"))
