"""Shared fixtures. Tests needing ../shared/data skip with a clear reason where it is absent."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from nasforge.evaluators.table import shared_data_dir

# One intra-op thread per test process: the suite runs in parallel (pytest-xdist, one worker
# per core) and must pass on a loaded host, where two OpenMP threads wait at every barrier for
# whichever of them another process preempted (measured 2.3-7.8x slower training with one core
# busy). Tests that need more threads pin them themselves.
torch.set_num_threads(1)

# The timing harness keeps this host's quiet reference-kernel time in a small cache; tests
# must not write to the user's home, nor read a baseline another run left there.
os.environ["NASFORGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="nasforge-test-cache-")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()  # $NASFORGE_SHARED_DATA, else ../shared/data
NB201_CSV = SHARED_DATA / "nas-bench-201" / "nb201_cifar10.csv.gz"


@pytest.fixture(scope="session")
def nb201_csv() -> Path:
    if not NB201_CSV.is_file():
        pytest.skip(f"NAS-Bench-201 table not found at {NB201_CSV} (set NASFORGE_SHARED_DATA)")
    return NB201_CSV


@pytest.fixture(scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """One intra-op thread: on a shared 2-core machine OpenMP spin-waiting against other
    processes makes two threads several times slower, and test models are tiny."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
