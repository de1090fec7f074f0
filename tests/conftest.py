"""Shared fixtures. Tests needing ../shared/data skip with a clear reason where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NASFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))
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
