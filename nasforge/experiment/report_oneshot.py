"""The report's ``oneshot`` section, its plots and ``nasforge show`` lines for weight-sharing
runs (DARTS, single-path one-shot), built from the store's per-epoch records only.

Everything here reads :meth:`~nasforge.experiment.store.TrialStore.epochs` (never a
checkpoint), so the report of any run, finished, stopped or killed, can be rebuilt from its
``trials.db``. Two phases are understood:

* ``"darts"``: records of ``DartsSearch.step_epoch()`` (validation/training loss and accuracy,
  derived cell, skip/none count, entropy, dominant Hessian eigenvalue, op weights per cell and
  each edge's ``(src, dst)`` nodes, regularisers, the ``alpha_lr`` used and why,
  expected/derived latency when a latency table was used). Edges are named by their nodes
  ("node 0 -> node 1"); records from before the nodes were kept get the space's layout by
  cell name (:func:`edge_endpoints`).
* ``"supernet"``: records of single-path training (``spos.EpochRecord`` plus ``sampling``);
  when the least-trained op choice gets fewer than ~100 passes over the training split in the
  planned epochs, the section carries a warning naming ``oneshot.options.epochs`` and the
  epochs that would be enough (:mod:`nasforge.oneshot.budget`).

Other phases are passed through as their raw records. A run without epoch records has no
``oneshot`` section (:func:`oneshot_section` returns ``None``), so its report is unchanged.

The plots are :mod:`nasforge.experiment.report_oneshot_plots` (:func:`oneshot_plots` is
re-exported here). The collapse rule is
:func:`nasforge.experiment.collapse.collapse_verdict` (read its docstring: it is the contract
the report and ``show`` print).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nasforge.errors import NasforgeError
from nasforge.experiment.collapse import CLEAR, collapse_verdict, op_count
from nasforge.experiment.report_oneshot_plots import oneshot_plots
from nasforge.experiment.store import TrialStore
from nasforge.oneshot.budget import supernet_budget_warning
from nasforge.spaces.nb201 import EDGES as NB201_EDGES
from nasforge.yamlfile import read_yaml

#: the store meta the weight-sharing phase of a run writes (``method``, ``phase``, ``config``
#: (DARTS' settings), ``epochs`` (DARTS: done; supernet: planned), ``derived``,
#: ``derived_trial``, ``derivation``, ``stopped``, ``sampling``, ``cpu_seconds``)
META = "oneshot"

#: per-epoch diagnostics of a DARTS record copied into the report (when the record has them)
DARTS_FIELDS: tuple[str, ...] = (
    "val_acc",
    "val_loss",
    "train_loss",
    "train_acc",
    "lr",
    "skip_count",
    "none_count",
    "entropy",
    "hessian_eigenvalue",
    "expected_latency_ms",
    "derived_latency_ms",
    "aux_skip",
    "cpu_seconds",
    "stopped",
    "arch_string",
)
#: per-epoch fields of a single-path supernet record copied into the report
SUPERNET_FIELDS: tuple[str, ...] = ("loss", "lr", "steps", "paths", "seconds")

#: the regularisers of ``nasforge.oneshot.regularizers``, named in words for the report
REGULARIZER_WORDS: dict[str, str] = {
    "darts_minus": "DARTS- (an auxiliary skip connection on every edge, decaying to 0)",
    "partial_channels": "PC-DARTS (partial channels with edge normalisation)",
    "beta": "beta-DARTS (beta-decay regularisation of the architecture weights)",
    "drnas": "DrNAS (Dirichlet-sampled op weights with a KL term)",
    "sdarts_rs": "SDARTS-RS (random smoothing of the op weights for the network weights)",
    "early_stop": "DARTS+ early stop (the search stops when the skip count reaches its limit)",
}


def regularizer_words(names: Sequence[str]) -> list[str]:
    """``names`` (a record's ``regularization``) in words; an empty list or ``["none"]`` is
    plain DARTS; an unknown name is kept as it is."""
    real = [n for n in names if n != "none"]
    if not real:
        return ["none: plain DARTS (no regulariser against collapse)"]
    return [REGULARIZER_WORDS.get(n, n) for n in real]


# -- edges -------------------------------------------------------------------------------------
def edge_endpoints(cell: str, n_edges: int) -> list[tuple[int, int]] | None:
    """``(src, dst)`` of each mixed edge of ``cell`` in supernet order, for records that do not
    carry them: the ``nb201`` cell (``"cell"``: nodes 0-3, edge ``(s, d)`` for ``d > s``) or a
    ``darts`` cell (``"normal"`` / ``"reduce"``: nodes 0 and 1 are the cell's inputs, every
    earlier node feeds intermediate node ``d``); ``None`` when ``n_edges`` fits neither."""
    if cell == "cell" and n_edges == len(NB201_EDGES):
        return [(s, d) for d, s in NB201_EDGES]
    if cell in ("normal", "reduce"):
        out: list[tuple[int, int]] = []
        dst = 2
        while len(out) < n_edges:
            out += [(s, dst) for s in range(dst)]
            dst += 1
        return out if len(out) == n_edges else None
    return None


def edge_names(edges: Sequence[Sequence[int]] | None, n_edges: int) -> list[str]:
    """``"node s -> node d"`` for each edge (``"edge i"`` where the endpoints are unknown)."""
    if edges is None or len(edges) != n_edges:
        return [f"edge {e}" for e in range(n_edges)]
    return [f"node {int(s)} -> node {int(d)}" for s, d in edges]


def _alpha_lr(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture learning rate the search used and why (its records'), else what the
    stored config says (records from before the value was kept)."""
    for r in records:
        if r.get("alpha_lr_note"):
            return {"value": r.get("alpha_lr"), "note": str(r["alpha_lr_note"])}
    given = (meta.get("config") or {}).get("alpha_lr")
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        return {"value": float(given), "note": f"alpha_lr {given:g} (set in the config)"}
    return {"value": None, "note": "alpha_lr: not recorded"}


# -- the section ---------------------------------------------------------------------------------
def oneshot_settings(source: Any) -> tuple[str | None, dict[str, Any]]:
    """``(method, options)`` of a config's optional ``oneshot:`` section; ``source`` is an
    ``ExperimentConfig`` (its ``oneshot`` attribute, absent before that section existed) or
    the config as plain data (a run's ``config.yaml``). ``(None, {})`` when there is none."""
    section = (
        source.get("oneshot") if isinstance(source, Mapping) else getattr(source, "oneshot", None)
    )
    dump = getattr(section, "model_dump", None)  # a pydantic section
    if callable(dump):
        section = dump(mode="json")
    if not isinstance(section, Mapping):
        return None, {}
    method, options = section.get("method"), section.get("options")
    return (str(method) if method else None), dict(options) if isinstance(options, Mapping) else {}


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _pick(rec: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    return {"epoch": rec["epoch"], **{f: rec[f] for f in fields if f in rec}}


def _final_derived(
    store: TrialStore, last: Mapping[str, Any], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The search's result: the arch the run derived and recorded as a trial (``meta``'s
    ``derived_trial``, by its ``derivation``), else the last epoch's argmax cell."""
    out: dict[str, Any] = {
        "epoch": last["epoch"],
        "how": "argmax of the last recorded epoch's architecture weights",
        "trial": None,
        "arch": last.get("arch"),
        "arch_string": last.get("arch_string"),
        "skip_count": last.get("skip_count"),
        "none_count": last.get("none_count"),
    }
    tid = _int(meta.get("derived_trial"))
    if tid is None:
        return out
    try:
        arch = store.trial(tid).arch.to_dict()
    except KeyError:  # a meta naming a trial the store lacks: keep the epochs' own result
        return out
    how = f"{meta.get('derivation') or 'argmax'} derivation after the last epoch"
    return {
        **out,
        "how": f"{how}, recorded as trial {tid}",
        "trial": tid,
        "arch": arch,
        "arch_string": meta.get("derived") or out["arch_string"],
        "skip_count": op_count(arch, "skip_connect"),
        "none_count": op_count(arch, "none"),
    }


def darts_section(
    store: TrialStore,
    records: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    total: int | None,
) -> dict[str, Any]:
    """The report's summary of a DARTS phase (``records`` in epoch order, at least one): per
    epoch diagnostics, weight trajectories per cell, derived cell per epoch and final,
    collapse verdict (:func:`~nasforge.experiment.collapse.collapse_verdict`), CPU seconds."""
    names: list[str] = []
    for r in records:
        names += [n for n in r.get("regularization") or [] if n not in names]
    trajectories: dict[str, dict[str, Any]] = {}
    for r in records:
        for cell, summary in (r.get("cells") or {}).items():
            t = trajectories.setdefault(
                cell, {"ops": list(summary.get("ops") or []), "epochs": [], "weights": []}
            )
            t["epochs"].append(r["epoch"])
            t["weights"].append(summary.get("weights") or [])
            if (r.get("edges") or {}).get(cell):
                t["edges"] = [list(e) for e in r["edges"][cell]]
    for cell, t in trajectories.items():
        n_edges = max((len(w) for w in t["weights"]), default=0)
        edges = t.get("edges") or edge_endpoints(cell, n_edges)
        t["edges"] = [list(e) for e in edges] if edges is not None else None
        t["edge_names"] = edge_names(t["edges"], n_edges)
    stopped = records[-1].get("stopped") or meta.get("stopped")
    final = _final_derived(store, records[-1], meta)
    derived = final["arch"] if final["trial"] is not None else None
    return {
        "epochs_done": len(records),
        "epochs_total": total,
        "stopped": stopped if isinstance(stopped, str) else None,
        "regularization": names,
        "regularization_words": regularizer_words(names),
        "alpha_lr": _alpha_lr(records, meta),
        "epochs": [_pick(r, DARTS_FIELDS) for r in records],
        "derived_cells": [
            {"epoch": r["epoch"], "arch_string": r.get("arch_string")} for r in records
        ],
        "final_derived": final,
        "trajectories": trajectories,
        "collapse": collapse_verdict(records, derived).to_dict(),
        "search_cpu_seconds": round(sum(float(r.get("cpu_seconds") or 0.0) for r in records), 3),
    }


def supernet_section(records: Sequence[Mapping[str, Any]], total: int | None) -> dict[str, Any]:
    """The report's summary of single-path supernet training: loss/lr per epoch, sampling,
    wall and CPU seconds (the latter when the records have them), and the passes over the
    training split of the least-trained op choice with a warning when the planned epochs
    (else the trained ones) give fewer than ~100 (records that carry ``choice_passes``)."""
    sampling = sorted({str(r["sampling"]) for r in records if r.get("sampling")})
    return {
        **_choice_budget(records, total, sampling[0] if len(sampling) == 1 else "this"),
        "epochs_done": len(records),
        "epochs_total": total,
        "sampling": sampling[0] if len(sampling) == 1 else sampling or None,
        "epochs": [_pick(r, SUPERNET_FIELDS) for r in records],
        "train_seconds": round(sum(float(r.get("seconds") or 0.0) for r in records), 3),
        "cpu_seconds": round(sum(float(r.get("cpu_seconds") or 0.0) for r in records), 3),
    }


def _choice_budget(
    records: Sequence[Mapping[str, Any]], total: int | None, sampling: str
) -> dict[str, Any]:
    """``choice_passes`` (so far), ``choice_passes_planned`` and ``budget_warning`` (or
    ``None``) of a supernet's records; empty for records without ``choice_passes``."""
    last = records[-1]
    passes, done = last.get("choice_passes"), _int(last.get("epoch"))
    if not isinstance(passes, (int, float)) or not passes > 0 or done is None:
        return {}
    per_epoch = float(passes) / (done + 1)  # supernet records count epochs from 0
    planned = per_epoch * total if total else float(passes)
    return {
        "choice_passes": round(float(passes), 3),
        "choice_passes_planned": round(planned, 3),
        "budget_warning": supernet_budget_warning(
            planned, per_epoch, "oneshot.options.epochs", sampling
        ),
    }


def _method(phases: Mapping[str, list[dict[str, Any]]]) -> str:
    if "darts" in phases:
        return "darts"
    if "supernet" in phases:
        sampling = {str(r.get("sampling")) for r in phases["supernet"]}
        return "fairnas" if sampling == {"fair"} else "spos"
    return next(iter(phases))


def oneshot_section(store: TrialStore, cfg: Any = None) -> dict[str, Any] | None:
    """The report's ``oneshot`` section, or ``None`` when the store has no epoch records.

    Reads the store only: its epoch records and the ``oneshot`` meta the runner writes
    (method, planned epochs, the derived trial and its derivation, early stop).

    Args:
        store: the run's store.
        cfg: the run's ``ExperimentConfig`` or config data: the method and planned epochs of
            its ``oneshot:`` section where the store's meta lacks them (optional).
    """
    records = store.epochs()
    if not records:
        return None
    phases: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        phases.setdefault(r["phase"], []).append(r)
    meta = store.get_meta(META)
    meta = meta if isinstance(meta, Mapping) else {}
    method, options = oneshot_settings(cfg) if cfg is not None else (None, {})
    planned = _int(options.get("epochs"))
    world = meta.get("world_size")
    out: dict[str, Any] = {
        "method": meta.get("method") or method or _method(phases),
        "phases": list(phases),
        "world_size": int(world) if isinstance(world, int) else 1,  # DDP processes (torchrun)
    }
    for phase, recs in phases.items():
        if phase == "darts":  # the meta's "epochs" counts DARTS' done epochs; its config plans
            total = _int((meta.get("config") or {}).get("epochs")) or planned
            out[phase] = darts_section(store, recs, meta, total)
        elif phase == "supernet":
            total = _int(meta.get("epochs")) if meta.get("phase") == "supernet" else None
            out[phase] = supernet_section(recs, total if total is not None else planned)
        else:
            out[phase] = {"epochs_done": len(recs), "epochs": recs}
    return out


# -- show ----------------------------------------------------------------------------------------
def search_cost_seconds(store: TrialStore) -> float:
    """The run's search cost: its trials' costs plus a weight-sharing phase's CPU seconds that
    no trial carries (the single-path supernet is trained once, before the trials; a DARTS
    run's derived trial already carries its search's cost; a Once-for-All run's supernet
    training has no trials at all: its CPU seconds are the ``ofa`` meta's)."""
    cost = float(store.total_cost_seconds())
    meta = store.get_meta("oneshot") or {}
    if isinstance(meta, dict) and meta.get("in_trial_costs") is False:
        cost += float(meta.get("cpu_seconds") or 0.0)
    ofa = store.get_meta("ofa") or {}
    if isinstance(ofa, dict):
        cost += float(ofa.get("cpu_seconds") or 0.0)
    return cost


def _progress(section: Mapping[str, Any]) -> str:
    total = section.get("epochs_total")
    return f"{section['epochs_done']}/{total}" if total else str(section["epochs_done"])


def show_lines(store: TrialStore, run_dir: Path | None = None) -> list[str]:
    """The lines ``nasforge show`` prints for a weight-sharing run (none for another run):
    method, epochs done / planned (the store's meta, else the run's ``config.yaml`` when it
    can be read), the derived cell, its skip/none count and the collapse verdict; for
    supernet training its sampling and last loss."""
    cfg: Any = None
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        try:
            cfg = read_yaml(run_dir / "config.yaml", "config")
        except NasforgeError:  # the planned total is a nicety: an unreadable config omits it
            cfg = None
    section = oneshot_section(store, cfg)
    if section is None:
        return []
    lines = []
    if section.get("world_size", 1) > 1:
        lines.append(f"trained data-parallel (DDP) on {section['world_size']} processes")
    darts = section.get("darts")
    if darts:
        fin, col = darts["final_derived"], darts["collapse"]
        regs = ", ".join(darts["regularization"]) or "none"
        which = f"trial {fin['trial']}" if fin["trial"] is not None else f"epoch {fin['epoch']}"
        stop = f", {darts['stopped']}" if darts["stopped"] else ""
        lines.append(
            f"{section['method']}: {_progress(darts)} epochs{stop} (regularisers: {regs}); "
            f"derived cell ({which}): {fin['arch_string']}"
        )
        why = f" ({'; '.join(col['reasons'])})" if col["reasons"] else ""
        lines.append(
            f"skip {fin['skip_count']}, none {fin['none_count']} of {col['edges']} edges; "
            f"collapse: {col['verdict']}{why}"
        )
        lines.append(str(darts["alpha_lr"]["note"]))
    sn = section.get("supernet")
    if sn:
        last = sn["epochs"][-1]
        lines.append(
            f"{section['method']}: supernet ({sn['sampling']} sampling) {_progress(sn)} epochs, "
            f"last loss {_fmt(last.get('loss'))}, lr {_fmt(last.get('lr'), '.4g')}"
        )
        if sn.get("budget_warning"):
            lines.append(f"warning: {sn['budget_warning']}")
    return lines


def _last_weights(t: Mapping[str, Any]) -> list[list[Any]]:
    """Rows of a cell's trajectory at its last epoch: each edge by its nodes, its strongest op
    and that op's probability."""
    last = t["weights"][-1] if t["weights"] else []
    names, ops = t.get("edge_names") or [], t["ops"]
    rows = []
    for e, row in enumerate(last):
        if not row:
            continue
        best = max(range(len(row)), key=lambda o: row[o])
        name = names[e] if e < len(names) else f"edge {e}"
        rows.append([name, ops[best] if best < len(ops) else best, _fmt(row[best], ".3f")])
    return rows


def _fmt(v: Any, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


# -- HTML ----------------------------------------------------------------------------------------
def render_oneshot(
    section: Mapping[str, Any] | None,
    plots: Mapping[str, str],
    table: Callable[[list[list[Any]], list[str]], str],
) -> str:
    """The HTML of the section (empty without one); ``table(rows, header)`` renders an
    escaped table (the report's own). Every text from the store is escaped."""
    if not section:
        return ""
    esc = html.escape
    parts = [f"<h2>Weight-sharing search: {esc(str(section['method']))}</h2>"]
    darts = section.get("darts")
    if darts:
        col, fin = darts["collapse"], darts["final_derived"]
        parts.append(
            f"<p>DARTS: {esc(_progress(darts))} epochs, {darts['search_cpu_seconds']:.1f} CPU "
            "seconds of search"
            + (f"; {esc(darts['stopped'])}" if darts["stopped"] else "")
            + f".</p><p>Architecture learning rate: {esc(str(darts['alpha_lr']['note']))}.</p>"
            + "<p>Regularisers in effect:</p><ul>"
            + "".join(f"<li>{esc(w)}</li>" for w in darts["regularization_words"])
            + "</ul>"
        )
        verdict = f"Collapse verdict: {col['verdict']}"
        if col["reasons"]:
            verdict += ": " + "; ".join(col["reasons"])
        cls = " class='warn'" if col["verdict"] != CLEAR else ""
        parts.append(f"<p{cls}>{esc(verdict)}</p>")
        parts.append(
            table(
                [
                    [
                        "skip + none count, first / last epoch",
                        f"{col['skip_none_first']} / {col['skip_none_last']} of {col['edges']}",
                    ],
                    ["Hessian eigenvalue growth (late / early)", _fmt(col["eigen_ratio"], ".2f")],
                    [
                        "entropy, first / last (uniform max)",
                        f"{_fmt(col['entropy_first'])} / {_fmt(col['entropy_last'])} "
                        f"({_fmt(col['entropy_max'])})",
                    ],
                ],
                ["collapse signal", "value"],
            )
        )
        parts.append(
            f"<p>Derived cell ({esc(fin['how'])}; skip {fin['skip_count']}, none "
            f"{fin['none_count']}):</p>"
            f"<pre>{esc(str(fin['arch_string']))}</pre>"
        )
        for cell, t in darts["trajectories"].items():
            img = plots.get(f"weights:{cell}")
            parts.append(f"<h3>Architecture weights ({esc(cell)})</h3>")
            if img:
                parts.append(f"<img src='{img}'/>")
            parts.append(table(_last_weights(t), ["edge", "strongest op", "probability"]))
        if "collapse" in plots:
            parts.append(f"<h3>Collapse diagnostics</h3><img src='{plots['collapse']}'/>")
        parts.append("<h3>Derived cell per epoch</h3>")
        has_lat = any("expected_latency_ms" in r for r in darts["epochs"])
        header = [
            "epoch",
            "val_acc",
            "val_loss",
            "train_loss",
            "skip",
            "none",
            "entropy",
            "Hessian eig.",
        ] + (["exp. lat ms", "derived lat ms"] if has_lat else [])
        rows = []
        for r in darts["epochs"]:
            row = [
                r["epoch"],
                _fmt(r.get("val_acc")),
                _fmt(r.get("val_loss")),
                _fmt(r.get("train_loss")),
                r.get("skip_count"),
                r.get("none_count"),
                _fmt(r.get("entropy")),
                _fmt(r.get("hessian_eigenvalue"), ".4g"),
            ]
            if has_lat:
                row += [
                    _fmt(r.get("expected_latency_ms"), ".3f"),
                    _fmt(r.get("derived_latency_ms"), ".3f"),
                ]
            rows.append(row + [r.get("arch_string", "")])
        parts.append(table(rows, header + ["derived cell"]))
    sn = section.get("supernet")
    if sn:
        parts.append(
            f"<h3>Supernet training</h3><p>{esc(str(sn['sampling']))} sampling, "
            f"{esc(_progress(sn))} epochs, {sn['train_seconds']:.1f} s "
            f"({sn['cpu_seconds']:.1f} CPU s).</p>"
        )
        if sn.get("choice_passes") is not None:
            parts.append(
                f"<p>Training per op choice: ~{sn['choice_passes_planned']:.3g} passes over the "
                "training split for the least-trained choice in the planned epochs "
                f"({sn['choice_passes']:.3g} so far).</p>"
            )
        if sn.get("budget_warning"):  # the leaderboard that follows ranks on this supernet
            parts.append(
                "<p class='warn'>Ranking on this supernet: "
                + esc(str(sn["budget_warning"]))
                + ". The leaderboard below orders candidates by their accuracy with the "
                "supernet's weights; treat its order as weak evidence.</p>"
            )
        if "supernet_loss" in plots:
            parts.append(f"<img src='{plots['supernet_loss']}'/>")
        parts.append(
            table(
                [
                    [
                        r["epoch"],
                        _fmt(r.get("loss")),
                        _fmt(r.get("lr"), ".4g"),
                        r.get("steps"),
                        r.get("paths"),
                        _fmt(r.get("seconds"), ".1f"),
                    ]
                    for r in sn["epochs"]
                ],
                ["epoch", "loss", "lr", "steps", "paths", "seconds"],
            )
        )
    return "".join(parts)


__all__ = [
    "DARTS_FIELDS",
    "META",
    "REGULARIZER_WORDS",
    "SUPERNET_FIELDS",
    "darts_section",
    "edge_endpoints",
    "edge_names",
    "oneshot_plots",
    "oneshot_section",
    "oneshot_settings",
    "regularizer_words",
    "render_oneshot",
    "search_cost_seconds",
    "show_lines",
    "supernet_section",
]
