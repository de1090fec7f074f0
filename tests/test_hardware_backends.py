"""Backends: spec parsing, the registry used from outside (a toy backend), onnxruntime equals
torch, one ONNX export and one session builder, clear errors for what is not here."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nasforge.errors import RegistrationError
from nasforge.hardware import measure_latency
from nasforge.hardware.backends import (
    Backend,
    BackendError,
    BackendSpec,
    Runner,
    example_input,
    export_onnx_bytes,
    get_backend,
    list_backends,
    make_runner,
    ort_session_options,
    prepare_model,
    register_backend,
)
from nasforge.hardware.timing import TimingConfig
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
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            assert m.running_var is not None
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
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
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


# -- the registry, used from outside the package ---------------------------------------------
class CountingBackend(Backend):
    """A user's backend: torch eager on the CPU, counting every call it times."""

    def __init__(self) -> None:
        self.calls = 0
        self.runners = 0

    def make_runner(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        batch_size: int,
        spec: BackendSpec,
        name: str = "",
    ) -> Runner:
        prepared = self.prepare(model, spec)
        x = example_input(input_shape, batch_size)
        self.runners += 1

        def call() -> object:
            self.calls += 1
            with torch.inference_mode():
                return prepared(x)

        return Runner(call, name)

    def single_threaded(self, spec: BackendSpec) -> bool:
        return spec.threads == 1


class WallOnlyBackend(CountingBackend):
    """A second toy mode whose work leaves the calling thread (so the wall clock is used)."""

    overlaps_branches = True

    def single_threaded(self, spec: BackendSpec) -> bool:
        return False


@pytest.fixture()
def counting() -> CountingBackend:
    backend = register_backend("counting", CountingBackend, aliases=("tally",), replace=True)
    register_backend("counting:wide", WallOnlyBackend, replace=True)
    assert isinstance(backend, CountingBackend)
    return backend


def test_builtin_backends_are_registered() -> None:
    assert {"torch", "torch:parallel", "onnxruntime", "onnxruntime:parallel", "cuda"} <= set(
        list_backends()
    )
    assert get_backend("cuda").is_gpu and BackendSpec("cuda").is_gpu
    assert not BackendSpec("torch").is_gpu and not BackendSpec("onnxruntime").is_gpu
    assert get_backend("torch:parallel").overlaps_branches
    assert not get_backend("onnxruntime:parallel").overlaps_branches
    assert get_backend("ort:parallel") is get_backend("onnxruntime:parallel")


def test_a_registered_backend_is_selected_by_name_and_used(counting: CountingBackend) -> None:
    spec = BackendSpec.parse("Counting", threads=1)
    assert spec.label == "counting" and spec.backend is counting
    assert BackendSpec.parse("tally").backend is counting  # alias
    assert "counting" in list_backends() and "counting:wide" in list_backends()
    m = measure_latency(nn.Linear(8, 4), (8,), warmup=2, repeats=6, threads=1, backend="counting")
    assert m.backend == "counting" and m.clock == "cpu"
    # warm-up and timed calls; stray rounds may be re-measured on a busy host, so at least
    assert counting.runners == 1 and counting.calls >= 2 + 6
    assert BackendSpec.from_dict(spec.to_dict()) == spec


def test_a_registered_mode_decides_the_clock_and_entry_forking(counting: CountingBackend) -> None:
    wide = BackendSpec.parse("counting:wide", threads=1)
    assert wide.execution_mode == "wide" and not wide.single_threaded
    assert TimingConfig().resolve_clock(wide) == "wall"
    with pytest.raises(BackendError, match="timing.clock"):
        TimingConfig(clock="cpu").resolve_clock(wide)
    m = measure_latency(nn.Linear(8, 4), (8,), warmup=1, repeats=3, threads=1, backend=wide)
    assert m.backend == "counting:wide" and m.clock == "wall"
    with pytest.raises(BackendError, match="execution_mode"):
        BackendSpec.parse("counting:parallel")


def test_unknown_backends_are_named_with_what_is_registered() -> None:
    with pytest.raises(BackendError, match=r"'torhc'.*did you mean 'torch'.*onnxruntime"):
        get_backend("torhc")
    with pytest.raises(BackendError, match="backend: unknown backend 'torhc'"):
        BackendSpec.parse("torhc")


def test_bad_registrations_are_refused() -> None:
    with pytest.raises(RegistrationError, match="not a nasforge.hardware.Backend"):
        register_backend("thing", object())  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="already registered"):
        register_backend("torch", CountingBackend)
    with pytest.raises(RegistrationError, match="'base' or 'base:mode'"):
        register_backend("a:b:c", CountingBackend)
    assert get_backend("torch").__class__.__name__ == "TorchBackend"


# -- one export, one session builder ----------------------------------------------------------
def _package_calls(monkeypatch: pytest.MonkeyPatch, owner: object, attr: str) -> list[str]:
    """Record which nasforge file calls ``owner.attr`` (the nearest nasforge frame)."""
    real = getattr(owner, attr)
    callers: list[str] = []

    def spy(*args: object, **kwargs: object) -> object:
        for frame in inspect.stack()[1:]:
            path = Path(frame.filename).as_posix()
            if "/nasforge/" in path:
                callers.append(path.split("/nasforge/", 1)[1])
                break
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, spy)
    return callers


def test_every_onnx_export_and_session_goes_through_hardware(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import onnxruntime as ort

    from nasforge.compression.quantization import export_onnx as compression_export
    from nasforge.compression.quantization.runtime import optimized_op_counts, ort_session
    from nasforge.experiment.export import export_onnx as experiment_export
    from nasforge.experiment.export import onnx_max_abs_diff

    exports = _package_calls(monkeypatch, torch.onnx, "export")
    sessions = _package_calls(monkeypatch, ort, "InferenceSession")
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    data = experiment_export(model, (2, 6, 6), tmp_path / "a.onnx")
    path = compression_export(model, tmp_path / "b.onnx", (2, 6, 6))
    assert onnx_max_abs_diff(model, data, torch.randn(3, 2, 6, 6)) < 1e-4
    ort_session(path, threads=1)
    assert optimized_op_counts(path)
    runner = make_runner(model, (2, 6, 6), 1, BackendSpec("onnxruntime"))
    runner.close()
    assert exports == ["hardware/onnx.py"] * 3
    assert sessions and set(sessions) == {"hardware/onnx.py"}
    assert len(sessions) == 4


def test_only_hardware_calls_the_exporter_or_opens_sessions() -> None:
    package = Path(__file__).resolve().parents[1] / "nasforge"
    found = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if "onnx.export(" in p.read_text() or "InferenceSession(" in p.read_text()
    }
    assert found == {"hardware/onnx.py"}
