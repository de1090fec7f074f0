"""Hold glibc's allocator in its steady state while nasforge measures latency.

By default glibc serves a block over its mmap threshold (128 KiB at start, raised
dynamically as mmapped blocks are freed) with a fresh ``mmap`` and returns it with
``munmap``; freed heap above the trim threshold goes back to the kernel too. A tensor that
comes back from the kernel is page-faulted in and zero-filled again on its next use. How
often that happens depends on everything the process allocated before, so the *same* model
timed at different moments of one process differs by a large factor. Measured on an AMD
EPYC (2 vCPU), one thread, same process, models interleaved:

* a 48-channel 3x3 convolution (0.42 ms): 0.42-0.49 ms round to round with the default
  allocator, 0.424-0.428 ms with the heap kept;
* five mobile-space models at batch 32: 10.9-36.3 ms by default, 7.6-15.4 ms with the heap
  kept; at batch 1 the same models moved by up to 1.2x between a fresh process and one that
  had built 120 models (the "machine now 1.09x / 2.0x as slow as at build time" that the
  latency benchmark printed on a quiet host);
* the compression benchmark's MobileNetV2 at batch 32: 85 or 125 ms depending on which
  models ran in between.

:func:`steady_allocator` sets ``M_MMAP_THRESHOLD`` to 256 MiB and ``M_TRIM_THRESHOLD`` to
1 GiB with ``mallopt``, so freed tensors are reused from the heap and no call pays page
faults: the latency of a warmed-up, long-running inference process, which is what a table
predicts and a deployment sees after its first requests. The cost is memory: the heap is
not returned to the kernel while the process lives. The measurement layer applies it the
first time it describes the host (:func:`~nasforge.hardware.fingerprint.device_fingerprint`)
or times anything; ``NASFORGE_ALLOCATOR=system`` leaves glibc's defaults alone (then
figures move with the process's history, as above). Other allocators (tcmalloc, jemalloc,
mimalloc preloaded) and non-glibc systems are left as they are. Device fingerprints record
the state (``glibc-2.36 steady``), so a table is never compared with measurements taken
under the other regime.

Written by hand because this is one ``mallopt`` call that no library wraps; ``ctypes`` is
the standard way to reach it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

#: glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30
#: ``NASFORGE_ALLOCATOR=system`` keeps glibc's defaults
ENV = "NASFORGE_ALLOCATOR"

_applied = False


def _glibc() -> bool:
    return platform.libc_ver()[0] == "glibc"


def _preloaded() -> bool:
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in ("tcmalloc", "jemalloc", "mimalloc"))


@functools.cache
def steady_allocator() -> bool:
    """Keep freed memory in glibc's heap for the rest of the process (see module doc).

    Idempotent; returns whether the steady state is in effect (``False`` off glibc, with
    another allocator preloaded, or with ``NASFORGE_ALLOCATOR=system``).
    """
    global _applied
    if os.environ.get(ENV, "").strip().lower() == "system" or not _glibc() or _preloaded():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    _applied = bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _applied


def allocator_state() -> str:
    """``steady`` once :func:`steady_allocator` took effect in this process, else ``""``;
    a fingerprint appends it to the allocator's name."""
    return "steady" if _applied else ""


__all__ = ["ENV", "allocator_state", "steady_allocator"]
