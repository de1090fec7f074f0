"""Every built-in backend, and a toy one registered from outside the package, passes the
shipped backend conformance suite (:mod:`nasforge.testing.backends`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasforge.hardware import Backend, BackendSpec, Runner, register_backend
from nasforge.hardware.backends import example_input
from nasforge.testing.backends import BackendConformance


def _pool_threads() -> int:
    """torch fixes its inter-op pool at first use; torch:parallel must use its size."""
    return torch.get_num_interop_threads()


class EagerToyBackend(Backend):
    """A user's backend, as small as the interface allows."""

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
        return Runner(lambda: prepared(x), name)

    def single_threaded(self, spec: BackendSpec) -> bool:
        return spec.threads == 1


register_backend("eager-toy", EagerToyBackend, replace=True)


class TestTorch(BackendConformance):
    backend_name = "torch"


class TestTorchTwoThreads(BackendConformance):
    backend_name = "torch"
    threads = 2


class TestTorchParallel(BackendConformance):
    backend_name = "torch:parallel"

    def spec(self) -> BackendSpec:
        return BackendSpec.parse(self.backend_name, threads=_pool_threads())


class TestOnnxRuntime(BackendConformance):
    backend_name = "onnxruntime"


class TestOnnxRuntimeParallel(BackendConformance):
    backend_name = "onnxruntime:parallel"
    threads = 2


class TestCuda(BackendConformance):
    backend_name = "cuda"

    def available(self) -> str | None:
        return None if torch.cuda.is_available() else "no CUDA device"


class TestEagerToy(BackendConformance):
    backend_name = "eager-toy"
