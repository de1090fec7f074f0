# make_table.py: writes channel_bench.csv, a SYNTHETIC accuracy table (no network was trained)
"""One row per architecture of the channel_bench_macro space (2**7 = 128 rows).

The accuracies are made up by a fixed formula plus seeded noise, only to give the example a
table with the shape of a real one: wider layers help, with diminishing returns, and the
test accuracy scatters around the validation accuracy.
"""

import csv
import itertools
import math

import numpy as np

BASE = (8, 8, 16, 16, 32, 32, 64)
rng = np.random.default_rng(2024)

with open("channel_bench.csv", "w", newline="") as fh:
    out = csv.writer(fh, lineterminator="\n")
    out.writerow([f"c{i + 1}" for i in range(7)] + ["val_acc", "test_acc", "params"])
    for doubled in itertools.product((0, 1), repeat=7):
        widths = [b * (1 + d) for b, d in zip(BASE, doubled)]
        gain = sum(math.log2(1 + d) * (1.5 - 0.15 * i) for i, d in enumerate(doubled))
        val = 80.0 + 1.8 * gain + rng.normal(0.0, 0.4)
        test = val - 0.5 + rng.normal(0.0, 0.3)
        params = sum(9 * a * b for a, b in zip([3, *widths], widths)) + widths[-1] * 11
        out.writerow([*widths, f"{val:.2f}", f"{test:.2f}", params])
