"""Device fingerprint: allocator detection, mismatch reasons, JSON round trip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nasforge.hardware.fingerprint import (
    DeviceFingerprint,
    detect_allocator,
    device_fingerprint,
    fingerprint_mismatches,
)


def test_allocator_from_ld_preload_and_from_mapped_libraries(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert (
        detect_allocator(str(maps), {"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"})
        == "tcmalloc"
    )
    assert detect_allocator(str(maps), {}).startswith(("glibc", "system"))
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert detect_allocator(str(maps), {}) == "jemalloc"
    assert (
        detect_allocator(str(tmp_path / "missing"), {"LD_PRELOAD": "libmimalloc.so"}) == "mimalloc"
    )


def test_fingerprint_records_what_changes_latency() -> None:
    fp = device_fingerprint(threads=3)
    assert fp.threads == 3
    assert fp.cpu_model and fp.logical_cpus >= 1 and fp.allocator and fp.torch
    assert DeviceFingerprint.from_dict(fp.to_dict()) == fp
    assert fingerprint_mismatches(fp, fp) == []


def test_mismatches_name_the_field() -> None:
    fp = device_fingerprint(threads=1)
    other = replace(
        fp,
        cpu_model="Imaginary CPU 9000",
        allocator="jemalloc",
        torch="1.0.0",
        # a flag no CPU has, so that the test holds on any host (with or without AMX)
        cpu_flags=fp.cpu_flags + ("imaginary_flag",),
    )
    msgs = fingerprint_mismatches(other, fp)
    fields = {m.split(":")[0] for m in msgs}
    assert fields == {"cpu_model", "allocator", "torch", "cpu_flags"}
    assert any("Imaginary CPU 9000" in m for m in msgs)


def test_patch_versions_and_hostnames_do_not_count() -> None:
    fp = replace(device_fingerprint(threads=1), torch="2.13.0", hostname="a")
    assert fingerprint_mismatches(replace(fp, torch="2.13.1+cpu", hostname="b"), fp) == []
    assert fingerprint_mismatches(replace(fp, gpu_name="H100"), fp) == []
    assert fingerprint_mismatches(replace(fp, gpu_name="H100"), fp, check_gpu=True)
