"""What the live dashboard shows of a run, read from its directory without writing to it.

:func:`snapshot` is the page's whole state at one instant (the store read inside one WAL read
transaction, so its counts, leaderboard and points agree), and :func:`trial_detail` one
trial's record with its learning curve. Both open the store with
:meth:`~nasforge.experiment.store.TrialStore.open_readonly` on every call: a run being
written, killed (``kill -9``), resumed or repaired (a new store file) is read as it is now.
Nothing here imports a config's plugins or writes anything: the run's ``config.yaml`` is read
as plain YAML data for the objective's metric names and the planned number of trials, and the
store file is never written (SQLite may add the empty ``-wal``/``-shm`` sidecars a WAL reader
needs, and marks its reads in ``-shm``, which holds no data).

The leaderboard ranks complete trials by their stored score exactly as ``nasforge show`` and
the report do (:func:`nasforge.experiment.report.leaderboard`: the highest budget reached of
a multi-fidelity run, ties by id).

Errors: a missing run directory or store, or a store that cannot be read, is a
:class:`~nasforge.experiment.store.StoreError` naming the file; :func:`trial_detail` of an
id the store lacks raises :class:`UnknownTrial` (a :class:`LookupError`).
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nasforge.errors import NasforgeError
from nasforge.experiment.fidelity_view import full_fidelity
from nasforge.experiment.live_curves import (
    live_curve,
    live_path,
    live_series,
    read_live,
    read_running,
)
from nasforge.experiment.lock import LOCK_NAME
from nasforge.experiment.store import StoreError, TrialStore
from nasforge.objectives import Objective
from nasforge.strategies.base import scalar
from nasforge.yamlfile import read_yaml

STORE_NAME = "trials.db"
CONFIG_NAME = "config.yaml"
#: rows of the leaderboard
TOP = 20
#: trials listed (newest first)
MAX_TRIALS = 500
#: leaderboard rows whose curves come with the snapshot (the page overlays them)
TOP_CURVES = 5
#: metrics shown as leaderboard columns after the objective's, when trials have them
EXTRA_COLUMNS = ("params", "flops", "budget_epochs", "rung")
STATUSES = ("running", "finished", "interrupted", "failed", "unknown")
#: running trials whose live curves come with the snapshot (the newest ids)
MAX_LIVE = 16


class UnknownTrial(LookupError):
    """The run has no trial of that id (the server answers 404)."""


@dataclass(frozen=True)
class _Row:
    """A trial as :meth:`TrialStore.trial_dicts` reads it (``.metrics`` for full_fidelity)."""

    d: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.d["metrics"]


def store_path(run_dir: str | Path) -> Path:
    """The store of ``run_dir``.

    Raises:
        StoreError: the directory or its store is missing (one line naming it).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise StoreError(f"{run}: no such run directory")
    db = run / STORE_NAME
    if not db.is_file():
        raise StoreError(f"{run}: not a run directory (no {STORE_NAME})")
    return db


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``config.yaml`` as plain data (``{}`` when it is missing or unreadable: it
    only names things on the page). Never imports the plugins it lists."""
    try:
        data = read_yaml(Path(run_dir) / CONFIG_NAME, "config")
    except NasforgeError:
        return {}
    return data if isinstance(data, dict) else {}


def run_objective(config: Mapping[str, Any]) -> Objective:
    """The objective of a run's config data (the default one where it cannot be built; the
    stored scores, which rank the trials, do not depend on it)."""
    from nasforge.experiment.config import ObjectiveConfig

    section = config.get("objective")
    try:
        return ObjectiveConfig.model_validate(section if isinstance(section, dict) else {}).build()
    except (ValueError, TypeError):
        return Objective()


def lock_held(run_dir: str | Path) -> bool:
    """Whether a live process holds the run's lock.

    Read without touching the lock (taking even a shared lock could make the writer's
    ``--resume`` fail at that instant): a holder writes its PID into ``.lock`` and a clean
    release empties it; a holder killed with ``kill -9`` leaves its PID, which is dead. Where
    the kernel lists its locks (Linux ``/proc/locks``) the lock file's inode must be among the
    ``FLOCK`` ones too, so a reused PID is not taken for the holder.
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        text = path.read_text(errors="replace").strip()
        pid = int(text.partition(" ")[0])
        inode = path.stat().st_ino
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    try:
        locks = Path("/proc/locks").read_text()
    except OSError:
        return True
    # "1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF"
    return any(
        len(f) > 5 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(inode)
        for f in (line.split() for line in locks.splitlines())
    )


def run_status(meta_status: Any, held: bool) -> str:
    """One of :data:`STATUSES`: ``running`` while the lock is held; else ``finished`` (the run
    recorded ``done``), ``interrupted`` (it recorded an interrupt, or it stopped without a
    word: killed, crashed; ``--resume`` continues it) or ``unknown`` (it recorded nothing)."""
    if held:
        return "running"
    if meta_status == "done":
        return "finished"
    if meta_status in ("interrupted", "running"):
        return "interrupted"
    return "unknown"


def run_kind(config: Mapping[str, Any], has_ofa: bool, oneshot: Mapping[str, Any] | None) -> str:
    """``search``, ``darts``, ``spos`` (FairNAS too) or ``ofa``."""
    if has_ofa or isinstance(config.get("ofa"), dict):
        return "ofa"
    section = config.get("oneshot")
    method = section.get("method") if isinstance(section, dict) else None
    method = method or (oneshot or {}).get("method")
    if method == "darts":
        return "darts"
    if method in ("spos", "fairnas"):
        return "spos"
    return "search"


def _finite(v: Any) -> Any:
    """JSON-ready: a non-finite float becomes ``None`` (browsers' JSON has no NaN)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _stored(score: Any) -> Any:
    """A score as the store reads it back (a Pareto score is a tuple there, a list in JSON)."""
    return tuple(score) if isinstance(score, list) else score


def _score(score: Any) -> float | None:
    """The score to show and rank by (:func:`scalar`: a Pareto score's first objective)."""
    if score is None:
        return None
    try:
        v = scalar(_stored(score))
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _error_line(error: str | None) -> str:
    return error.strip().splitlines()[0] if error and error.strip() else ""


def ranked(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Complete trials with a score, at the highest budget reached, best first (ties by id):
    :func:`nasforge.experiment.report.leaderboard`'s order."""
    complete = [_Row(d) for d in rows if d["state"] == "complete" and d["score"] is not None]
    kept = [r.d for r in full_fidelity(complete)]
    kept.sort(key=lambda d: (-scalar(_stored(d["score"])), d["id"]))
    return kept


def _columns(
    objective: Objective, complete: Sequence[dict[str, Any]]
) -> tuple[list[str], str | None]:
    """The leaderboard's metric columns and the scatter's x metric (the objective's cost
    metric, else ``mflops`` of a ``latency.mode: flops`` run; ``None`` when neither is there)."""
    have = {k for d in complete for k in d["metrics"]}
    x = objective.cost_metric if objective.cost_metric in have else None
    if x is None and "mflops" in have:
        x = "mflops"
    cols = [objective.metric] + ([x] if x else [])
    cols += [c for c in EXTRA_COLUMNS if c in have and c not in cols]
    return cols, x


def _points(kept: Sequence[dict[str, Any]], y: str, x: str | None) -> list[dict[str, Any]]:
    """Accuracy vs cost of every ranked trial with both, flagged on the Pareto front (highest
    accuracy, lowest cost)."""
    if x is None:
        return []
    pts: list[tuple[dict[str, Any], float, float]] = []
    for d in sorted(kept, key=lambda d: d["id"]):
        px, py = _num(d["metrics"].get(x)), _num(d["metrics"].get(y))
        if px is not None and py is not None:
            pts.append((d, px, py))
    front = _front([(px, py) for _, px, py in pts])
    return [
        {"id": d["id"], "x": px, "y": py, "score": _score(d["score"]), "pareto": i in front}
        for i, (d, px, py) in enumerate(pts)
    ]


def _front(xy: Sequence[tuple[float, float]]) -> set[int]:
    """Indices of the points no other point dominates (lower or equal ``x`` and higher or equal
    ``y``, one of them strictly): :func:`nasforge.objectives.pareto_front` on ``(y, -x)``, but
    a sort and one sweep (two objectives) instead of its all-fronts ranking, whose n x n
    matrices cost most of a 1,000-trial snapshot."""
    order = sorted(range(len(xy)), key=lambda i: (xy[i][0], -xy[i][1]))
    front: set[int] = set()
    best_before = -math.inf  # the highest y among points of a strictly lower x
    k = 0
    while k < len(order):
        x, top = xy[order[k]][0], xy[order[k]][1]  # the highest y of this x comes first
        group = []
        while k < len(order) and xy[order[k]][0] == x:
            group.append(order[k])
            k += 1
        if top > best_before:
            front.update(i for i in group if xy[i][1] == top)
        best_before = max(best_before, top)
    return front


def _best_so_far(kept: Sequence[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """Each time a finished trial beat every earlier one: seconds since the first trial was
    created, its id and score."""
    out: list[dict[str, Any]] = []
    best = -math.inf
    for d in sorted(kept, key=lambda d: (d["finished"] or 0.0, d["id"])):
        s = _score(d["score"])
        if s is not None and s > best:
            best = s
            out.append({"t": round(float(d["finished"] or t0) - t0, 3), "id": d["id"], "score": s})
    return out


def _alphas(darts: Mapping[str, Any]) -> dict[str, Any]:
    """DARTS op probabilities per ``<cell>/edge<k>``: the edge's name (its nodes), the ops and
    one row per recorded epoch."""
    out: dict[str, Any] = {}
    for cell, t in (darts.get("trajectories") or {}).items():
        weights = t.get("weights") or []
        n_edges = max((len(w) for w in weights), default=0)
        names = list(t.get("edge_names") or [])  # "node 0 -> node 1" (the report's)
        for e in range(n_edges):
            out[f"{cell}/edge{e}"] = {
                "name": f"{cell}: {names[e]}" if e < len(names) else f"{cell}/edge{e}",
                "ops": list(t.get("ops") or []),
                "epoch_numbers": list(t.get("epochs") or []),
                "epochs": [list(w[e]) if e < len(w) else [] for w in weights],
            }
    return out


def _oneshot(section: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The page's weight-sharing part of the report's ``oneshot`` section."""
    if not section or set(section.get("phases") or []) <= {"ofa"}:
        return None
    darts, sn = section.get("darts"), section.get("supernet")
    part = darts or sn or {}
    out: dict[str, Any] = {
        "method": section.get("method"),
        "epochs_done": part.get("epochs_done", 0),
        "epochs_total": part.get("epochs_total"),
        "epochs": list(part.get("epochs") or []),
        "alphas": _alphas(darts) if darts else {},
    }
    if darts:
        out["derived"] = (darts.get("final_derived") or {}).get("arch_string")
        out["collapse"] = (darts.get("collapse") or {}).get("verdict")
    if sn:
        out["sampling"] = sn.get("sampling")
    return out


def _ofa(section: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not section:
        return None
    training = section.get("training") or {}
    return {
        "epochs_done": training.get("epochs_done", 0),
        "epochs_total": training.get("epochs_total"),
        "epochs": list(training.get("epochs") or []),
        "phases": list(training.get("phases") or []),
        "specializations": list(section.get("specializations") or []),
    }


def _eta(progress: Mapping[str, Any], phase: Mapping[str, Any] | None) -> float | None:
    """Seconds left of a running run: the epochs left of a weight-sharing or OFA phase at its
    recorded seconds per epoch while it trains, else the trials left at the run's pace so far
    (elapsed / finished; parallel workers included). ``None`` when there is no pace yet."""
    if phase is not None and phase.get("epochs_total"):
        done, planned = int(phase["epochs_done"]), int(phase["epochs_total"])
        if done < planned:
            secs = [
                float(v)
                for e in phase.get("epochs") or []
                if isinstance(v := e.get("seconds", e.get("cpu_seconds")), (int, float))
            ]
            return sum(secs) / len(secs) * (planned - done) if secs else None
    total, elapsed = progress.get("total"), progress.get("elapsed_s")
    finished = int(progress["complete"]) + int(progress["failed"])
    if not total or not finished or elapsed is None:
        return None
    return float(elapsed) / finished * max(int(total) - finished, 0)


def _ofa_config(config: Mapping[str, Any]) -> Any:
    """What :func:`~nasforge.experiment.report_ofa.ofa_section` reads of a config (``ofa`` and
    ``seed``: the planned phases), built from the plain data; ``None`` without a valid one."""
    from types import SimpleNamespace

    from nasforge.experiment.ofa_config import OFASection

    section = config.get("ofa")
    if not isinstance(section, dict):
        return None
    try:
        ofa = OFASection.model_validate(section)
        seed = config.get("seed", 0)
        return SimpleNamespace(ofa=ofa, seed=seed if isinstance(seed, int) else 0)
    except (ValueError, TypeError):
        return None


def _planned_trials(config: Mapping[str, Any]) -> int | None:
    search = config.get("search")
    trials = search.get("trials") if isinstance(search, dict) else None
    if isinstance(trials, int) and not isinstance(trials, bool) and trials > 0:
        return trials
    if isinstance(config.get("ofa"), dict):
        return None
    from nasforge.experiment.config import SearchConfig

    default = SearchConfig.model_fields["trials"].default
    return int(default) if isinstance(default, int) else None


def snapshot(run_dir: str | Path) -> dict[str, Any]:
    """The dashboard's state of ``run_dir`` now, JSON-ready (no NaN). Read-only.

    Keys: ``run`` (name, dir, kind, status, objective, as_of, lock_held), ``progress``
    (complete, failed, running, interrupted, total, elapsed_s, eta_s, cost_seconds, and
    epochs_done/epochs_total of a weight-sharing or OFA run), ``columns`` and ``axes`` (the
    scatter's ``x``/``y`` metrics), ``leaderboard`` (top :data:`TOP`: rank, id, key, score,
    state, worker, cost_seconds, finished, metrics of ``columns``), ``points`` (id, x, y,
    score, pareto), ``best_so_far`` (t, id, score), ``trials`` (newest first, at most
    :data:`MAX_TRIALS`: id, state, score, error_line, worker, cost_seconds), ``curves``
    (validation accuracy per epoch of the top :data:`TOP_CURVES` and of the running trials in
    ``live``, by id as a string; a running trial's epochs it has not reported are ``None``),
    ``live`` (running trials' curves so far, at most :data:`MAX_LIVE`, newest ids, by id as a
    string: epochs, val_acc, loss, updated; :mod:`nasforge.experiment.live_curves`),
    ``oneshot`` (``None`` or method, epochs, alphas ``{"<cell>/edge<k>": {ops, epoch_numbers,
    epochs: [[p per op] per epoch]}}``, epochs_done, epochs_total; DARTS: derived,
    collapse; supernet: sampling) and ``ofa`` (``None`` or epochs, phases, epochs_done,
    epochs_total, specializations).

    ``status`` is ``running`` while a live process holds the run's lock (:func:`lock_held`).
    ``total`` is the config's ``search.trials`` (``None`` for DARTS and OFA runs: their
    progress is in epochs); ``eta_s`` (running runs only) is a phase's epochs left at its
    recorded seconds per epoch while it trains, else the trials left at the pace so far.
    Live curves are read only while the run is ``running``, of trials the store says run:
    a file a killed run left behind is never shown as running.

    Raises:
        StoreError: no run directory, no store, or a store that cannot be read (naming it).
    """
    from nasforge.experiment.report_ofa import ofa_section
    from nasforge.experiment.report_oneshot import oneshot_section, search_cost_seconds

    run = Path(run_dir)
    db = store_path(run)
    config = run_config(run)
    objective = run_objective(config)
    held = lock_held(run)
    try:
        with TrialStore.open_readonly(db) as store, store.reading():
            as_of = time.time()
            rows = store.trial_dicts()
            status_meta = store.get_meta("status")
            search_seconds = store.get_meta("search_seconds")
            cost = search_cost_seconds(store)
            oneshot = _oneshot(oneshot_section(store, config))
            ofa = _ofa(ofa_section(run, store, _ofa_config(config)))
            kept = ranked(rows)
            top = kept[:TOP]
            curves = store.curves([d["id"] for d in top[:TOP_CURVES]])
            first_event = store.events()[:1]
    except sqlite3.Error as exc:
        raise StoreError(f"{db}: cannot be read ({exc})") from None
    status = run_status(status_meta, held)
    counts = {s: 0 for s in ("complete", "failed", "running", "interrupted")}
    for d in rows:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    kind = run_kind(config, ofa is not None, oneshot)
    # a DARTS run records one derived trial and an OFA run none: their progress is in epochs
    total = None if kind in ("darts", "ofa") else _planned_trials(config)
    t0 = min([float(d["created"]) for d in rows] + [float(e[0]) for e in first_event], default=None)
    elapsed = _num(search_seconds)
    if elapsed is None and t0 is not None and status == "running":  # before the loop saved it
        elapsed = max(0.0, as_of - t0)
    progress: dict[str, Any] = {
        **counts,
        "total": total,
        "elapsed_s": elapsed,
        "eta_s": None,
        "cost_seconds": _num(cost),
    }
    phase = oneshot or ofa
    if phase is not None:
        progress["epochs_done"] = phase["epochs_done"]
        progress["epochs_total"] = phase["epochs_total"]
    if status == "running":
        progress["eta_s"] = _eta(progress, phase)
    columns, x = _columns(objective, kept)
    running_ids = [d["id"] for d in rows if d["state"] == "running"]
    live = read_running(run, running_ids, MAX_LIVE) if status == "running" else {}
    shown: dict[int, list[Any]] = {**curves}
    for tid, records in live.items():
        shown[tid] = live_curve(records)
    out = {
        "run": {
            "name": str(config.get("name") or run.name),
            "dir": str(run),
            "kind": kind,
            "status": status,
            "objective": {**asdict(objective), "mode": "max"},
            "as_of": as_of,
            "lock_held": held,
        },
        "progress": _finite(progress),
        "columns": columns,
        "axes": {"x": x, "y": objective.metric},
        "leaderboard": [
            {
                "rank": i + 1,
                "id": d["id"],
                "key": d["key"],
                "score": _score(d["score"]),
                "state": d["state"],
                "worker": d["worker"],
                "cost_seconds": _num(d["cost_seconds"]),
                "finished": d["finished"],
                "metrics": _finite({c: d["metrics"].get(c) for c in columns}),
            }
            for i, d in enumerate(top)
        ],
        "points": _points(kept, objective.metric, x),
        "best_so_far": _best_so_far(kept, as_of if t0 is None else t0),
        "trials": [
            {
                "id": d["id"],
                "state": d["state"],
                "score": _score(d["score"]),
                "error_line": _error_line(d["error"]),
                "worker": d["worker"],
                "cost_seconds": _num(d["cost_seconds"]),
            }
            for d in reversed(rows[-MAX_TRIALS:])
        ],
        "curves": {str(k): _finite(v) for k, v in shown.items()},
        "live": {str(k): _finite(live_series(v)) for k, v in live.items()},
        "oneshot": _finite(oneshot),
        "ofa": _finite(ofa),
    }
    # the store keeps no NaN in its JSON (stored as null) and the parts above are cleaned
    # where they may hold one: the rest (500 trials) need no walk
    return out


def trial_detail(run_dir: str | Path, trial_id: int | str) -> dict[str, Any]:
    """One trial of ``run_dir``, JSON-ready: id, key, arch, state, score (the first objective
    of a Pareto score; ``scores``: all of them), metrics, error (in full), worker,
    cost_seconds, curve (validation accuracy per epoch; ``[]`` when none was recorded),
    created, started, finished, and ``live``: ``True`` when the trial is running in a run a
    live process holds and ``curve`` is what it reported so far (its epochs not reported are
    ``None``), else ``False`` and ``curve`` is the store's.

    Raises:
        UnknownTrial: no trial of that id (or ``trial_id`` is not a number).
        StoreError: no run directory, no store, or a store that cannot be read.
    """
    try:
        tid = int(trial_id)
    except (TypeError, ValueError):
        raise UnknownTrial(f"no trial {trial_id!r}: trial ids are numbers") from None
    db = store_path(run_dir)
    try:
        with TrialStore.open_readonly(db) as store, store.reading():
            try:
                t = store.trial(tid)
            except KeyError:
                raise UnknownTrial(f"{Path(run_dir)}: no trial {tid}") from None
            curve: list[Any] = store.curve(tid)
    except sqlite3.Error as exc:
        raise StoreError(f"{db}: cannot be read ({exc})") from None
    running = t.state == "running" and lock_held(run_dir)
    if running:
        curve = live_curve(read_live(live_path(run_dir, tid))) or curve
    d = t.to_dict()
    out = {
        "id": t.id,
        "key": t.key,
        "arch": d["arch"],
        "state": t.state,
        "score": _score(d["score"]),
        "scores": d["score"] if isinstance(d["score"], list) else None,
        "metrics": d["metrics"],
        "error": t.error,
        "worker": t.worker,
        "cost_seconds": t.cost_seconds,
        "curve": curve,
        "created": t.created,
        "started": t.started,
        "finished": t.finished,
        "live": running,
    }
    result: dict[str, Any] = _finite(out)
    return result


__all__ = [
    "STATUSES",
    "UnknownTrial",
    "lock_held",
    "ranked",
    "run_config",
    "run_objective",
    "run_status",
    "snapshot",
    "store_path",
    "trial_detail",
]
