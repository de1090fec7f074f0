"""benchmarks/nb201.py takes any table in the NB201 layout, and says how to find missing data."""

from __future__ import annotations

import csv
import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "nb201.py"
GOAL = re.compile(r"^GOAL [\w@ ]+: (met|NOT MET) \(.+ vs .+\) \[host: .+\]$", re.M)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def test_missing_data_is_a_clear_message_not_a_traceback(tmp_path: Path) -> None:
    res = _run("--quick", env={"NASFORGE_SHARED_DATA": str(tmp_path)})
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert str(tmp_path / "nas-bench-201" / "nb201_cifar10.csv.gz") in res.stderr
    assert "NASFORGE_SHARED_DATA" in res.stderr and "--table PATH" in res.stderr
    res = _run("--signal", "c10_valid", "--no-hw")  # a typo in a column: listed, no traceback
    if res.returncode == 2 and "does not exist" not in res.stderr:
        assert "did you mean 'c10_valid_acc_200'" in res.stderr and "Traceback" not in res.stderr


def test_own_table_and_joined_latency_file(tmp_path: Path, nb201_csv: Path) -> None:
    """A user's table: own column names, and a device measured separately, joined on arch_str."""
    with gzip.open(nb201_csv, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ops = [c for c in rows[0] if c.startswith("op_")]
    mine = tmp_path / "mine.csv"
    with mine.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arch_str", *ops, "valid", "test"])
        for r in rows:
            w.writerow(
                [r["arch_str"], *(r[c] for c in ops), r["c10_valid_acc_200"], r["c10_test_acc_200"]]
            )
    lat = tmp_path / "lat.csv"
    with lat.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arch", "lat_ms_mybox"])
        for r in reversed(rows):  # another order: the join is on the key, not the row
            w.writerow([r["arch_str"], 1.0 + 0.01 * float(r["c10_flops_M"])])
    res = _run(
        *("--table", str(mine), "--signal", "valid", "--report", "test"),
        *("--latency-table", str(lat), "--latency-key", "arch", "--latency-column", "lat_ms_mybox"),
        *("--seeds", "1", "--hw-seeds", "1", "--strategies", "random", "--workers", "1"),
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "signal = valid;" in out and "of test of the best" in out
    assert "Published NB201 results" not in out  # those are about the shared CIFAR-10 table
    assert len(re.findall(r"^lat_ms_mybox\s+(25|50|75)\s", out, re.M)) == 3
    goals = GOAL.findall(out)
    assert len(goals) == 2, out
    assert "GOAL table accuracy@100" in out and "GOAL table hw regret" in out
