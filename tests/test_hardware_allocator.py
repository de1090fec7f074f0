"""The measurement layer holds glibc's allocator steady (no page faults inside timed calls),
says so in the fingerprint, and leaves it alone when told to."""

from __future__ import annotations

import os
import subprocess
import sys

from nasforge.hardware.allocator import allocator_state, steady_allocator
from nasforge.hardware.fingerprint import device_fingerprint


def test_steady_allocator_is_idempotent_and_recorded() -> None:
    first = steady_allocator()
    assert steady_allocator() == first
    assert allocator_state() == ("steady" if first else "")
    fp = device_fingerprint(1)
    assert fp.allocator.endswith(" steady") == first


def test_system_allocator_is_left_alone_when_asked() -> None:
    code = (
        "from nasforge.hardware.allocator import steady_allocator;"
        "from nasforge.hardware.fingerprint import device_fingerprint;"
        "print(steady_allocator(), device_fingerprint(1).allocator)"
    )
    env = {**os.environ, "NASFORGE_ALLOCATOR": "system"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "False" and "steady" not in out
