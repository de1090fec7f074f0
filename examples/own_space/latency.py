# latency.py: time each distinct layer of the space once, then predict every arch from its plan
"""Writes latency_table.json (the measured layers) and latency.csv (one predicted latency
per architecture of the space, keyed by its widths), which the search config joins to the
accuracy table. Predictions are for this machine, with one thread and batch size 1."""

import csv
import itertools

from channel_bench import BASE, ChannelBenchSpace

from nasforge.hardware import LatencyPredictor
from nasforge.hardware.builder import BuildConfig, TableBuilder

space = ChannelBenchSpace()
builder = TableBuilder(space, "torch", config=BuildConfig(calibration_archs=4), progress=False)
table = builder.build("latency_table.json")  # measures only what the file lacks
predictor = LatencyPredictor(table, space)

with open("latency.csv", "w", newline="") as fh:
    out = csv.writer(fh, lineterminator="\n")
    out.writerow([f"c{i + 1}" for i in range(7)] + ["lat_ms_cpu"])
    for doubled in itertools.product((0, 1), repeat=7):
        widths = [b * (1 + d) for b, d in zip(BASE, doubled)]
        arch = space.make({f"c{i + 1}": w for i, w in enumerate(widths)})
        out.writerow([*widths, f"{predictor.predict(arch):.4f}"])
print(f"{len(table.entries)} layers timed; latency.csv written")
