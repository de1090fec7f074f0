"""Errors raised by compression for bad user input or models it cannot handle.

All are :class:`nasforge.errors.NasforgeError` subclasses, so the CLI prints them on one
line and exits with code 2. Each message names the layer, field or file at fault.
"""

from __future__ import annotations

from nasforge.errors import NasforgeError


class CompressionError(NasforgeError):
    """Base class for compression errors."""


class UnsupportedModelError(CompressionError):
    """The channel dependency graph cannot handle a layer; the message names the layer."""


class PlanMismatchError(CompressionError):
    """A :class:`PruningPlan` does not fit the model it is applied to (names the group)."""


class QuantizationError(CompressionError):
    """A quantization setting or model cannot be quantized as asked (names the field/layer)."""
