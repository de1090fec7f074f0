"""What an OFA run's specialisations share, made once and kept in ``runs/<name>/ofa/``.

* ``samples.json``: the accuracy predictor's data, the inherited validation accuracy (BN
  recalibrated) of ``ofa.specialize.samples`` subnets of the trained supernet, as JSON (arch
  dicts and accuracies; never a pickle), with the SHA-256 of the ``supernet/final.pt`` they
  were measured on, the count and the seed. Every later specialisation reuses it; a retrained
  supernet, another count or seed makes it again (a damaged file too, saying so).
* ``predictor.npz``: the accuracy predictor fitted on those samples (:func:`load_or_fit_predictor`),
  so a second target skips the fit (4-8 s with the MLP ensemble's cross-validation): its
  ``AccuracyPredictor.state()`` (the GP's hyperparameters or the MLP ensemble's weights) as
  plain arrays beside a JSON header, in an ``.npz`` read with ``allow_pickle=False`` (loading
  runs no code), keyed by what the fit saw and how: the file format and the fit's
  ``STATE_VERSION``, the SHA-256 of the encoded samples and their accuracies, the predictor
  kind, the seed and the folds. Anything else (another sample, kind or seed, a file of another
  version, a damaged file) is fitted again, saying so.
* ``tables/<backend>_t<threads>_b<batch>.json``: the latency table of a target the run's
  config has no table for, built once on the target with
  :class:`~nasforge.hardware.builder.TableBuilder` and reused by every later target on the
  same backend, threads and batch size on this machine.

:func:`resolve_table` picks the table: ``--table`` when given (checked against the run's space,
input, backend and batch size; a mismatch is an error naming the file), else the config's
``latency.table`` when it fits, else the cached one, else a new build.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nasforge.errors import NasforgeError
from nasforge.experiment.final import training_threads
from nasforge.hardware.backends import BackendSpec, as_backend
from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.table import LatencyTable, TableError
from nasforge.oneshot.ofa.accuracy import STATE_VERSION, encode_samples
from nasforge.oneshot.ofa.specialize import AccuracyPredictor, SpecializeConfig, sample_subnets
from nasforge.space import Arch, SearchSpace

#: the run's specialisation caches (samples, tables)
OFA_DIR = "ofa"
SAMPLES_FILE = "samples.json"
SAMPLES_FORMAT = "nasforge-ofa-samples/1"
PREDICTOR_FILE = "predictor.npz"
PREDICTOR_FORMAT = "nasforge-ofa-predictor/2"
#: the accuracy predictor's cross-validation folds (``AccuracyPredictor.fit``'s default)
PREDICTOR_FOLDS = 5
TABLES_DIR = "tables"
#: how a table is built on the target when the run has none (the builder's defaults)
AUTO_TABLE = BuildConfig()


# -- the accuracy predictor's samples ------------------------------------------------------------
def load_or_make_samples(
    run_dir: Path,
    space: SearchSpace,
    accuracy: Callable[[Arch], float],
    supernet_sha256: str,
    config: SpecializeConfig,
    threads: int,
    console: Console,
) -> tuple[list[tuple[Arch, float]], dict[str, Any]]:
    """The ``(arch, inherited val acc)`` samples of the run's supernet, from
    ``ofa/samples.json`` when it holds them for this supernet, count and seed; else measured
    with ``accuracy`` (a progress bar; ``threads`` torch threads) and saved there.

    Returns:
        The samples and ``{"file", "reused", "count", "seconds"}`` (``seconds``: what making
        them cost, also when reused).
    """
    path = Path(run_dir) / OFA_DIR / SAMPLES_FILE
    want = {"supernet_sha256": supernet_sha256, "n": config.samples, "seed": config.seed}
    cached = _read_samples(path, space, want, console)
    if cached is not None:
        samples, seconds = cached
        info = {"file": str(path), "reused": True, "count": len(samples), "seconds": seconds}
        return samples, info
    t0 = time.perf_counter()
    progress = Progress(
        TextColumn("[bold]inherited accuracy of sampled subnets"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    with progress, torch.no_grad(), training_threads(threads):
        task = progress.add_task("samples", total=config.samples)
        samples = sample_subnets(
            space,
            accuracy,
            config.samples,
            config.seed,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    seconds = time.perf_counter() - t0
    record = {
        "format": SAMPLES_FORMAT,
        **want,
        "seconds": seconds,
        "samples": [{"arch": a.to_dict(), "val_acc": acc} for a, acc in samples],
    }
    write_json(path, record)
    console.print(
        f"ofa: measured the inherited accuracy of {len(samples)} subnets in {seconds:.1f}s "
        f"(kept in {escape(str(path))} for later targets)",
        highlight=False,
    )
    return samples, {"file": str(path), "reused": False, "count": len(samples), "seconds": seconds}


def _read_samples(
    path: Path, space: SearchSpace, want: Mapping[str, Any], console: Console
) -> tuple[list[tuple[Arch, float]], float] | None:
    """The cached samples, or ``None`` (missing, or made for another supernet, count or seed,
    or damaged: then they are made again, and a damaged file is said)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("format") != SAMPLES_FORMAT or any(
            record.get(k) != v for k, v in want.items()
        ):
            return None
        samples = [(space.make(s["arch"]), float(s["val_acc"])) for s in record["samples"]]
        return samples, float(record.get("seconds") or 0.0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NasforgeError) as exc:
        console.print(
            f"[yellow]warning:[/] {escape(str(path))} is damaged ({escape(type(exc).__name__)}); "
            "measuring the samples again",
            highlight=False,
        )
        return None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a temporary file renamed over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


# -- the fitted accuracy predictor --------------------------------------------------------------
def load_or_fit_predictor(
    run_dir: Path,
    space: SearchSpace,
    samples: Sequence[tuple[Arch, float]],
    kind: str,
    seed: int,
    console: Console,
) -> tuple[AccuracyPredictor, dict[str, Any]]:
    """The accuracy predictor fitted on ``samples`` (``kind``, ``seed``): from
    ``ofa/predictor.npz`` when it was fitted on exactly these samples, this way, by a fit of
    this version (``AccuracyPredictor.from_state``); else fitted (``AccuracyPredictor.fit``)
    and its ``state()`` kept there.

    Returns:
        The predictor and ``{"file", "reused", "fit_seconds"}`` (``fit_seconds``: what the fit
        cost, also when reused).

    Raises:
        ConfigError, NasforgeError: as ``AccuracyPredictor.fit`` (too few samples, bad kind).
    """
    path = Path(run_dir) / OFA_DIR / PREDICTOR_FILE
    x, y = encode_samples(space, samples)
    digest = hashlib.sha256(x.tobytes() + y.tobytes() + repr(x.shape).encode()).hexdigest()
    want = {
        "format": PREDICTOR_FORMAT,
        "state_version": STATE_VERSION,
        "data_sha256": digest,
        "kind": kind,
        "seed": seed,
        "folds": PREDICTOR_FOLDS,
    }
    cached = _read_predictor(path, space, samples, want, console)
    if cached is not None:
        predictor, fit_s = cached
        return predictor, {"file": str(path), "reused": True, "fit_seconds": fit_s}
    t0 = time.perf_counter()
    predictor = AccuracyPredictor.fit(space, samples, kind, seed, PREDICTOR_FOLDS)
    fit_s = time.perf_counter() - t0
    state = predictor.state()
    if state is None:  # fit() always gives a state; kept for a predictor of another make
        return predictor, {"file": None, "reused": False, "fit_seconds": fit_s}
    header = {**want, "seconds": fit_s, "summary": predictor.summary()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    arrays: dict[str, Any] = {"header": np.array(json.dumps(header)), **state}
    np.savez(tmp, allow_pickle=False, **arrays)  # plain arrays only: nothing to unpickle
    tmp.replace(path)
    console.print(
        f"ofa: fitted the accuracy predictor ({kind}, {len(y)} samples) in {fit_s:.1f}s (kept "
        f"in {escape(str(path))} for later targets)",
        highlight=False,
    )
    return predictor, {"file": str(path), "reused": False, "fit_seconds": fit_s}


def _read_predictor(
    path: Path,
    space: SearchSpace,
    samples: Sequence[tuple[Arch, float]],
    want: Mapping[str, Any],
    console: Console,
) -> tuple[AccuracyPredictor, float] | None:
    """The cached predictor and what its fit cost, or ``None``: missing, or fitted on other
    data, another way or by another version of the fit (then it is fitted again, saying why),
    or damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:  # data only: loading runs no code
            header = json.loads(str(npz["header"]))
            state = {k: np.array(npz[k]) for k in npz.files if k != "header"}
        if any(header.get(k) != want[k] for k in ("format", "state_version")):
            console.print(
                f"ofa: {escape(str(path))} was written by another version of nasforge (format "
                f"{escape(str(header.get('format')))}, state version "
                f"{header.get('state_version')}); fitting the accuracy predictor again",
                highlight=False,
            )
            return None
        stale = [k for k, v in want.items() if header.get(k) != v]
        if stale:
            console.print(
                f"ofa: {escape(str(path))} was fitted with another {', '.join(stale)}; fitting "
                "the accuracy predictor again",
                highlight=False,
            )
            return None
        s = header["summary"]
        cv = (float(s["cv_kendall_tau"]), float(s["cv_mae"]), int(s["folds"]))
        predictor = AccuracyPredictor.from_state(space, samples, str(want["kind"]), state, cv)
        return predictor, float(header.get("seconds") or 0.0)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError, TypeError) as exc:
        console.print(
            f"[yellow]warning:[/] {escape(str(path))} is damaged ({escape(type(exc).__name__)}); "
            "fitting the accuracy predictor again",
            highlight=False,
        )
        return None


# -- the latency table ---------------------------------------------------------------------------
def table_problems(
    table: LatencyTable, space: SearchSpace, spec: BackendSpec | None, batch_size: int | None
) -> list[str]:
    """Why ``table`` cannot predict ``space``'s subnets on ``spec`` at ``batch_size`` (empty:
    it can; ``None`` for either: not checked)."""
    out = []
    shape = list(getattr(space, "input_shape", ()))
    if table.space.get("name") != space.name:
        out.append(f"built for space {table.space.get('name')!r}, not {space.name!r}")
    elif list(table.input_shape) != shape:
        out.append(f"built for input {list(table.input_shape)}, the run's subnets take {shape}")
    else:
        missing = [s for s in space.all_layers() if s.key not in table.entries]
        if missing:
            out.append(f"lacks {len(missing)} layer(s) of the run's space (e.g. {missing[0].key})")
    if spec is not None and table.backend.label != spec.label:
        out.append(f"built for backend {table.backend.label}, not {spec.label}")
    if spec is not None and table.backend.threads != spec.threads:
        out.append(f"built with {table.backend.threads} thread(s), not {spec.threads}")
    if batch_size is not None and table.batch_size != batch_size:
        out.append(f"built for batch size {table.batch_size}, not {batch_size}")
    return out


def _fitting(path: Path, space: SearchSpace, spec: BackendSpec, batch: int) -> LatencyTable | None:
    """The table at ``path`` when it is readable, fits and was measured on this machine."""
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():  # another machine's table is simply not used
            warnings.simplefilter("ignore")
            table = LatencyTable.load(path)
    except TableError:
        return None
    if table_problems(table, space, spec, batch) or table.mismatches():
        return None
    return table


def resolve_table(
    run_dir: Path,
    space: SearchSpace,
    latency: Any,
    space_options: Mapping[str, Any],
    backend: str | None,
    table: Path | None,
    batch_size: int | None,
    console: Console,
) -> tuple[LatencyTable, str]:
    """The latency table of the target and where it came from: ``given``, ``config``,
    ``cached`` or ``built``.

    Args:
        run_dir: the run (its ``ofa/tables/`` cache).
        space: the run's space.
        latency: the run's validated ``latency:`` section (backend, threads, batch size,
            table).
        space_options: the run's ``space.options`` (recorded in a built table).
        backend, table, batch_size: the command's ``--backend``, ``--table``,
            ``--batch-size`` (``None``: not given).
        console: where the build is announced.

    Raises:
        TableError: ``table`` is missing, unreadable, or for another space, input, backend,
            thread count or batch size (names ``--table``, the file and what differs).
    """
    if table is not None:
        tab = LatencyTable.load(table, warn=False)
        spec = as_backend(backend, tab.backend.threads) if backend is not None else None
        problems = table_problems(tab, space, spec, batch_size)
        if problems:
            raise TableError(f"--table: {table}: " + "; ".join(problems))
        if tab.mismatches():
            console.print(
                f"[yellow]warning:[/] {escape(str(table))} was measured on another machine "
                f"({escape('; '.join(tab.mismatches()))}); its predictions may not hold here",
                highlight=False,
            )
        return tab, "given"
    spec = as_backend(backend or latency.backend, latency.threads)
    batch = int(batch_size or latency.batch_size)
    if latency.table:
        found = _fitting(Path(latency.table), space, spec, batch)
        if found is not None:
            return found, "config"
    name = f"{spec.label.replace(':', '_')}_t{spec.threads}_b{batch}.json"
    path = Path(run_dir) / OFA_DIR / TABLES_DIR / name
    found = _fitting(path, space, spec, batch)
    if found is not None:
        return found, "cached"
    console.print(
        f"ofa: building the latency table of the run's space on {spec.label}, batch {batch} "
        f"(once; kept in {escape(str(path))})",
        highlight=False,
    )
    builder = TableBuilder(
        space,
        spec,
        batch,
        AUTO_TABLE,
        space_options=dict(space_options),
        progress=console.is_terminal,
    )
    return builder.build(path), "built"
