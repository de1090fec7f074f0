"""What a candidate costs, measured: timing harness, backends, device fingerprint, latency
tables and predictors, memory, energy.

Measure: :func:`measure_latency` / :func:`measure_models` on any registered backend (torch,
torch:parallel, onnxruntime, onnxruntime:parallel, cuda; add one with :class:`Backend` and
:func:`register_backend`). Deploy: :func:`export_onnx`, :func:`ort_session` (the one ONNX
export and the one onnxruntime session builder). Describe the host: :func:`host_info`.
Predict: :class:`TableBuilder` builds a :class:`LatencyTable`, :class:`LatencyPredictor` reads it.
Check: :func:`validate_table`, :func:`check_table`, :func:`table_verdict` (trust or not).
For experiments: :class:`LatencyModel`.
onnxruntime, matplotlib and scipy are imported only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

# backends first: importing it registers the built-in backends
from nasforge.hardware.backends import (
    Backend,
    BackendError,
    BackendSpec,
    Runner,
    get_backend,
    list_backends,
    register_backend,
)
from nasforge.hardware.fingerprint import (
    DeviceFingerprint,
    device_fingerprint,
    fingerprint_mismatches,
    host_info,
)
from nasforge.hardware.noise import NoisePolicy, Speedup, Stability
from nasforge.hardware.onnx import export_onnx, ort_session
from nasforge.hardware.profile import count_flops, count_params, model_size_bytes
from nasforge.hardware.timing import (
    LatencyMeasurement,
    TimingConfig,
    compare_runners,
    measure_latency,
    measure_models,
)

_LAZY = {
    "LatencyTable": "nasforge.hardware.table",
    "TableError": "nasforge.hardware.table",
    "TableMismatchWarning": "nasforge.hardware.table",
    "check_table": "nasforge.hardware.table",
    "Calibration": "nasforge.hardware.calibration",
    "LatencyPredictor": "nasforge.hardware.predictor",
    "load_predictor": "nasforge.hardware.predictor",
    "LatencyModel": "nasforge.hardware.model",
    "LayerSpec": "nasforge.hardware.layers",
    "Cell": "nasforge.hardware.layers",
    "NotDecomposable": "nasforge.hardware.layers",
    "layers_of": "nasforge.hardware.layers",
    "enumerate_layers": "nasforge.hardware.layers",
    "TableBuilder": "nasforge.hardware.builder",
    "predict_memory": "nasforge.hardware.memory",
    "measure_peak_activation_bytes": "nasforge.hardware.memory",
    "check_memory": "nasforge.hardware.memory",
    "measure_energy": "nasforge.hardware.energy",
    "validate_table": "nasforge.hardware.validate",
    "plot_validation": "nasforge.hardware.validate",
    "latency_findings": "nasforge.hardware.doctor",
    "TableVerdict": "nasforge.hardware.trust",
    "table_verdict": "nasforge.hardware.trust",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nasforge.hardware' has no attribute {name!r}")


__all__ = [
    "Backend",
    "BackendError",
    "BackendSpec",
    "Calibration",
    "Cell",
    "DeviceFingerprint",
    "LatencyMeasurement",
    "LatencyModel",
    "LatencyPredictor",
    "LatencyTable",
    "LayerSpec",
    "NoisePolicy",
    "NotDecomposable",
    "Runner",
    "Speedup",
    "Stability",
    "TableBuilder",
    "TableError",
    "TableMismatchWarning",
    "TableVerdict",
    "TimingConfig",
    "check_memory",
    "check_table",
    "compare_runners",
    "count_flops",
    "count_params",
    "device_fingerprint",
    "enumerate_layers",
    "export_onnx",
    "fingerprint_mismatches",
    "get_backend",
    "host_info",
    "latency_findings",
    "layers_of",
    "list_backends",
    "load_predictor",
    "measure_energy",
    "measure_latency",
    "measure_models",
    "measure_peak_activation_bytes",
    "model_size_bytes",
    "ort_session",
    "plot_validation",
    "predict_memory",
    "register_backend",
    "table_verdict",
    "validate_table",
]
