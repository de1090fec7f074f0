"""The timing settings tests use with a scripted clock (shared by the compression tests):
one pass, no warm-up visit (it would consume a scripted factor), no reference kernel, no
re-measurement, so a scripted runner's figures decide the outcome on any host."""

from __future__ import annotations

from nasforge.hardware.noise import NoisePolicy
from nasforge.hardware.timing import TimingConfig

SCRIPTED = TimingConfig(
    warmup=0,
    repeats=48,
    rounds=8,
    reference=False,
    max_remeasure=0,
    clock="wall",
    policy=NoisePolicy(retries=0),
)
JUMPY = [1.0, 2.5, 0.6, 1.8, 0.7, 2.2, 1.0, 0.5]  # every round a different host
