"""The setting of ``benchmarks/ofa.py``: data, space, latency table and latency targets.

The data and the space are those of the single-path ranking benchmark (issue 12, part 4;
imported from ``oneshot_ranking``), so its cached stand-alone accuracies rank this
benchmark's supernet too. The latency table is measured once per host with the hardware
package's builder (onnxruntime, 1 thread, batch 1 or ``--batch-size``) and kept under
``benchmarks/results/``
(gitignored: it is this host's), keyed by the host's fingerprint, and measured again only with
``--rebuild-table`` (its build's noise verdict is printed, and flags the latency goals).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from oneshot_latency import host_key, table_verdict
from oneshot_ranking import HEAD_FEATURES, STAGES, STEM_CHANNELS, ranking_space

from nasforge.data import Dataset, load_dataset
from nasforge.hardware.backends import BackendSpec
from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.noise import Stability
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import LatencyTable, TableError
from nasforge.spaces.mobile import MobileSpace

RESULTS = Path(__file__).resolve().parent / "results"
#: the options that rebuild :func:`ranking_space` through the space registry (configs, tables)
SPACE_OPTIONS: dict[str, Any] = {
    "stages": [list(s) for s in STAGES],
    "stem_channels": STEM_CHANNELS,
    "head_features": HEAD_FEATURES,
}


@dataclass(frozen=True)
class Setting:
    """What every process of the benchmark builds alike from (picklable)."""

    samples: int
    val_fraction: float

    def dataset(self) -> Dataset:
        """mnist1d with ``samples`` examples, the train pool split ``val_fraction``."""
        return load_dataset("mnist1d", val_fraction=self.val_fraction, samples=self.samples)

    def data_section(self) -> dict[str, Any]:
        """The experiment config's ``data:`` section for the same data."""
        return {"name": "mnist1d", "samples": self.samples, "val_fraction": self.val_fraction}


def space_of(ds: Dataset) -> MobileSpace:
    """The pinned CPU-sized ``mobile`` space of part 4 (see ``oneshot_ranking``)."""
    return ranking_space(ds)


def table_path(
    tables: Path, space: MobileSpace, spec: BackendSpec, cfg: BuildConfig, batch: int = 1
) -> Path:
    """``latency_mobile_<shape>_<space>_<backend>_<threads>t_b<batch>_c<n>h<n>_<host>.json``."""
    dims = "x".join(map(str, space.input_shape))
    opts = hashlib.sha256(json.dumps(SPACE_OPTIONS, sort_keys=True).encode()).hexdigest()[:8]
    backend = spec.label.replace(":", "_")
    return tables / (
        f"latency_mobile_{dims}_{opts}_{backend}_{spec.threads}t_b{batch}_"
        f"c{cfg.calibration_archs}h{cfg.held_out_archs}_{host_key()}.json"
    )


def get_table(
    space: MobileSpace,
    spec: BackendSpec,
    cfg: BuildConfig,
    tables: Path,
    rebuild: bool,
    batch: int = 1,
) -> tuple[LatencyTable, float, str]:
    """The table at its keyed path: loaded (completed if it lacks layers), or measured when
    there is none, when it is unreadable, or with ``rebuild``. Returns it, the CPU seconds
    taken (this process) and what was done."""
    path = table_path(tables, space, spec, cfg, batch)
    how = "loaded"
    if path.is_file():
        try:
            LatencyTable.load(path, warn=False)
        except TableError:
            how = "measured again (stored table unreadable)"
        if rebuild:
            how = "measured again (--rebuild-table)"
    else:
        how = "measured now"
    t0 = time.process_time()
    builder = TableBuilder(
        space, spec, batch, cfg, space_options=SPACE_OPTIONS, progress=sys.stderr.isatty()
    )
    if how == "loaded":
        table = builder.build(path)
    else:  # a fresh file beside it replaces the old one only once complete
        tmp = path.with_suffix(".building.json")
        tmp.unlink(missing_ok=True)
        table = builder.build(tmp)
        os.replace(tmp, path)
        table.path = path
    return table, time.process_time() - t0, how


def build_verdict(table: LatencyTable) -> Stability:
    """The table build's noise verdict (unstable with a reason when none was recorded)."""
    return table_verdict(table)


def held_out_text(table: LatencyTable, pred: LatencyPredictor) -> tuple[str, dict[str, Any]]:
    """The table's own held-out accuracy (as the predictor predicts), in words and as a dict."""
    acc = table.accuracy.get(f"{pred.statistic}/{pred.mode}", {})
    if not acc:
        return "not recorded", {}
    return (
        f"{100 * acc['within_10pct']:.0f}% within +-10%, MAPE {acc['mape']:.1f}%, "
        f"tau {acc['kendall_tau']:.2f} on {acc['n']:.0f} held-out models",
        dict(acc),
    )


def latency_targets(
    space: MobileSpace, pred: LatencyPredictor, quantiles: list[float], n: int, seed: int
) -> tuple[list[float], np.ndarray]:
    """Targets at ``quantiles`` of the predicted latency of ``n`` seeded random archs;
    returns (targets in ms, all predictions)."""
    rng = np.random.default_rng(seed + 4242)
    archs = [space.sample(rng) for _ in range(n)]
    ms = pred.predict_many(archs)
    return [float(np.quantile(ms, q)) for q in quantiles], ms
