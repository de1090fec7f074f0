"""The report's ``ofa`` section, its plots and ``nasforge show`` lines for Once-for-All runs.

Built from what the run directory holds, never from a checkpoint:

* training: the store's per-epoch records of phase ``"ofa"`` (``nasforge ofa train`` writes
  :class:`~nasforge.oneshot.ofa.train.OFAEpochRecord` fields: loss, teacher_loss, lr, steps,
  subnets, seconds, elastic) and the store's ``ofa`` meta (CPU seconds). The store sets a
  record's ``phase`` to ``"ofa"``, so each epoch's progressive-shrinking phase is found by
  taken from the record's ``stage`` (``nasforge ofa train`` writes it), else found by walking
  the config's schedule (``ofa.train.phases``) in order;
* specialisations: the ``card.json`` of every ``specialized/<label>/`` folder
  (:func:`nasforge.experiment.ofa_specialize.specialize_run` writes them): target, predicted
  vs measured latency (with the measurement's noise verdict), inherited / predicted /
  fine-tuned / test accuracy and the seconds each specialisation took.

A run with neither has no section (:func:`ofa_section` returns ``None``); its report is
unchanged.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nasforge.errors import NasforgeError
from nasforge.experiment.config import load_config
from nasforge.experiment.latency_verdict import card_stability
from nasforge.experiment.store import TrialStore

#: the store phase (and meta key) of OFA training
OFA_PHASE = "ofa"
#: where a run's specialisations live, one folder per label, each with a card
SPECIALIZED_DIR = "specialized"
CARD_FILE = "card.json"
#: per-epoch fields of a training record copied into the report
EPOCH_FIELDS: tuple[str, ...] = (
    "loss",
    "teacher_loss",
    "lr",
    "steps",
    "subnets",
    "seconds",
    "world_size",
)


def list_specialized(run_dir: Path) -> list[dict[str, Any]]:
    """The cards of ``run_dir``'s specialisations, by label (an unreadable card, or a staging
    folder of a specialisation in progress, is skipped)."""
    folder = Path(run_dir) / SPECIALIZED_DIR
    cards = []
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            card_file = sub / CARD_FILE
            if sub.name.startswith(".") or not card_file.is_file():
                continue
            try:
                card = json.loads(card_file.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(card, dict):
                cards.append(card)
    return cards


def _schedule(cfg: Any) -> list[tuple[str, list[str], int]]:
    """``(name, elastic, epochs)`` of the config's ``ofa.train.phases`` (empty without)."""
    section = getattr(cfg, "ofa", None)
    if section is None:
        return []
    train = section.train_config(getattr(cfg, "seed", 0))
    return [(p.name, list(p.elastic), int(p.epochs)) for p in train.phases]


def _phase_names(
    records: Sequence[Mapping[str, Any]], schedule: Sequence[tuple[str, list[str], int]]
) -> list[str]:
    """Each record's phase: its ``stage``, else the schedule walked in order (a record
    belongs to the current phase while that phase has epochs left and the elastic dimensions
    agree), else ``phase <k>`` counted by changes of the elastic dimensions."""
    names: list[str] = []
    index, used, k, last = 0, 0, 0, None
    for r in records:
        if isinstance(r.get("stage"), str):  # `nasforge ofa train` records the phase's name
            names.append(str(r["stage"]))
            continue
        elastic = sorted(r.get("elastic") or [])
        while index < len(schedule) and (
            used >= schedule[index][2] or sorted(schedule[index][1]) != elastic
        ):
            index, used = index + 1, 0
        if index < len(schedule):
            names.append(schedule[index][0])
            used += 1
            continue
        if elastic != last:
            k, last = k + 1, elastic
        names.append(f"phase {k}")
    return names


def training_section(records: Sequence[Mapping[str, Any]], cfg: Any, meta: Any) -> dict[str, Any]:
    """The supernet's training: per epoch (with its phase), per phase (epochs planned and done,
    first and last loss, seconds) and in total."""
    schedule = _schedule(cfg)
    names = _phase_names(records, schedule)
    epochs = [
        {
            "epoch": r["epoch"],
            "phase": name,
            "elastic": list(r.get("elastic") or []),
            **{f: r[f] for f in EPOCH_FIELDS if f in r},
        }
        for r, name in zip(records, names)
    ]
    planned = {name: (elastic, n) for name, elastic, n in schedule}
    order = [name for name, _, _ in schedule] + [
        n for n in dict.fromkeys(names) if n not in planned
    ]
    phases = []
    for name in order:
        mine = [e for e in epochs if e["phase"] == name]
        elastic, n = planned.get(name, (mine[0]["elastic"] if mine else [], None))
        phases.append(
            {
                "name": name,
                "elastic": elastic,
                "epochs_planned": n,
                "epochs_done": len(mine),
                "loss_first": mine[0].get("loss") if mine else None,
                "loss_last": mine[-1].get("loss") if mine else None,
                "teacher_loss_last": mine[-1].get("teacher_loss") if mine else None,
                "seconds": round(sum(float(e.get("seconds") or 0.0) for e in mine), 3),
            }
        )
    meta = meta if isinstance(meta, Mapping) else {}
    cpu = meta.get("cpu_seconds")
    world = meta.get("world_size")
    return {
        "world_size": int(world) if isinstance(world, int) else 1,  # DDP processes (torchrun)
        "epochs_done": len(epochs),
        "epochs_total": sum(n for _, _, n in schedule) if schedule else None,
        "train_seconds": round(sum(float(e.get("seconds") or 0.0) for e in epochs), 3),
        "cpu_seconds": float(cpu) if isinstance(cpu, (int, float)) else None,
        "phases": phases,
        "epochs": epochs,
    }


def specialization_row(card: Mapping[str, Any]) -> dict[str, Any]:
    """One specialisation as the report lists it (from its card)."""
    lat = card.get("latency") or {}
    stability = card_stability(card)
    pred = card.get("accuracy_predictor") or {}
    return {
        "label": card.get("label"),
        "target_ms": card.get("target_ms"),
        "objective": card.get("objective"),
        "feasible": card.get("feasible"),
        "refine_rounds": len(card.get("refinement") or []),
        "backend": lat.get("backend"),
        "batch_size": lat.get("batch_size"),
        "statistic": lat.get("statistic"),
        "latency_ms_predicted": card.get("latency_ms_predicted"),
        "latency_ms_measured": card.get("latency_ms"),
        "latency_stable": None if stability is None else stability.stable,
        "latency_note": "" if stability is None or stability.stable else stability.label,
        "within_10pct": card.get("within_10pct"),
        "above_limit": card.get("above_limit"),
        "val_acc_inherited": card.get("val_acc_inherited"),
        "val_acc_predicted": card.get("val_acc_predicted"),
        "val_acc_finetuned": card.get("val_acc_finetuned"),
        "test_acc": card.get("test_acc"),
        "finetune_epochs": card.get("finetune_epochs"),
        "seconds": card.get("seconds") or {},
        "predictor_cv_kendall_tau": pred.get("cv_kendall_tau"),
        "predictor_cv_mae": pred.get("cv_mae"),
        "arch_key": card.get("arch_key"),
        "params": card.get("params"),
    }


def ofa_section(run_dir: Path | None, store: TrialStore, cfg: Any = None) -> dict[str, Any] | None:
    """The report's ``ofa`` section (``None`` for a run with no OFA training records and no
    specialisation).

    Args:
        run_dir: the run directory (its ``specialized/`` cards; ``None``: none read).
        store: the run's store (epoch records of phase ``ofa`` and the ``ofa`` meta).
        cfg: the run's ``ExperimentConfig`` (its ``ofa.train.phases`` name the phases).
    """
    records = store.epochs(OFA_PHASE)
    cards = list_specialized(run_dir) if run_dir is not None else []
    if not records and not cards:
        return None
    rows = [specialization_row(c) for c in cards]
    rows.sort(key=lambda r: (str(r["backend"]), r["batch_size"] or 0, r["target_ms"] or 0.0))
    training = training_section(records, cfg, store.get_meta(OFA_PHASE))
    return {
        "training": training,
        "specializations": rows,
        "search_cost_seconds": training["cpu_seconds"],
    }


# -- show ----------------------------------------------------------------------------------------
def _fmt(v: Any, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _where(row: Mapping[str, Any]) -> str:
    if row.get("above_limit"):
        return "ABOVE the limit"
    return "within +-10%" if row.get("within_10pct") else "under the limit"


def _read_config(run_dir: Path) -> Any:
    """The run's config (``None`` when it cannot be read: phase names are then counted)."""
    try:
        return load_config(Path(run_dir) / "config.yaml")
    except NasforgeError:
        return None


def show_lines(store: TrialStore, run_dir: Path | None = None, cfg: Any = None) -> list[str]:
    """The lines ``nasforge show`` prints for an OFA run (none for another run): training
    progress per phase and one line per specialisation. ``cfg`` (the run's config, for the
    phase names) is read from ``run_dir`` when not given."""
    if cfg is None and run_dir is not None:
        cfg = _read_config(run_dir)
    section = ofa_section(run_dir, store, cfg)
    if section is None:
        return []
    t = section["training"]
    total = f"/{t['epochs_total']}" if t["epochs_total"] else ""
    phases = ", ".join(
        f"{p['name']} {p['epochs_done']}"
        + (f"/{p['epochs_planned']}" if p["epochs_planned"] else "")
        for p in t["phases"]
    )
    last = t["epochs"][-1] if t["epochs"] else {}
    lines = [
        f"ofa: supernet {t['epochs_done']}{total} epochs ({phases or 'no epochs yet'}), last loss "
        f"{_fmt(last.get('loss'))}"
        + (f", data-parallel on {t['world_size']} processes" if t["world_size"] > 1 else "")
    ]
    for r in section["specializations"]:
        note = f" ({r['latency_note']})" if r["latency_note"] else ""
        tuned = (
            f", fine-tuned {_fmt(r['val_acc_finetuned'])}"
            if r["val_acc_finetuned"] is not None
            else ""
        )
        lines.append(
            f"  {r['label']}: target {_fmt(r['target_ms'], 'g')} ms on {r['backend']} b"
            f"{r['batch_size']}: measured {_fmt(r['latency_ms_measured'], '.3f')} ms{note} "
            f"(predicted {_fmt(r['latency_ms_predicted'], '.3f')}, {_where(r)}); val "
            f"{_fmt(r['val_acc_inherited'])} inherited{tuned}; test {_fmt(r['test_acc'])}"
        )
    return lines


# -- plots ---------------------------------------------------------------------------------------
def _nan(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def ofa_plots(section: Mapping[str, Any] | None, png: Callable[[Any], str]) -> dict[str, str]:
    """PNG data URLs (``png`` turns a matplotlib figure into one): ``ofa_loss`` (training and
    teacher loss per epoch, phases marked) and ``ofa_targets`` (accuracy vs measured latency
    of each specialisation, its target marked)."""
    if not section:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out: dict[str, str] = {}
    epochs = section["training"]["epochs"]
    if epochs:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        ep = [e["epoch"] for e in epochs]
        ax.plot(ep, [_nan(e.get("loss")) for e in epochs], "o-", ms=3, label="subnets' loss")
        ax.plot(ep, [_nan(e.get("teacher_loss")) for e in epochs], "s--", ms=3, label="largest net")
        start = 0
        for i in range(1, len(epochs) + 1):
            if i == len(epochs) or epochs[i]["phase"] != epochs[start]["phase"]:
                ax.axvspan(ep[start] - 0.5, ep[i - 1] + 0.5, alpha=0.08 * (1 + start % 2))
                ax.text(
                    ep[start] - 0.4, ax.get_ylim()[1], epochs[start]["phase"], fontsize=7, va="top"
                )
                start = i
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("training loss")
        ax.legend(fontsize=8)
        ax.set_title("OFA supernet training (progressive shrinking)")
        out["ofa_loss"] = png(fig)
    rows = section["specializations"]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [_nan(r["latency_ms_measured"]) for r in rows]
        ax.scatter(xs, [_nan(r["val_acc_inherited"]) for r in rows], label="inherited (val)")
        if any(r["val_acc_finetuned"] is not None for r in rows):
            ax.scatter(
                xs,
                [_nan(r["val_acc_finetuned"]) for r in rows],
                marker="^",
                label="fine-tuned (val)",
            )
        ax.scatter(xs, [_nan(r["test_acc"]) for r in rows], marker="x", label="test")
        for r in rows:
            ax.axvline(_nan(r["target_ms"]), ls=":", c="gray", lw=0.8)
        ax.set_xlabel("measured latency (ms); dotted: targets")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
        ax.set_title("specialised subnets")
        out["ofa_targets"] = png(fig)
    return out


# -- HTML ----------------------------------------------------------------------------------------
def render_ofa(
    section: Mapping[str, Any] | None,
    plots: Mapping[str, str],
    table: Callable[[list[list[Any]], list[str]], str],
) -> str:
    """The HTML of the section (empty without one); ``table(rows, header)`` renders an
    escaped table (the report's own)."""
    if not section:
        return ""
    esc = html.escape
    t = section["training"]
    parts = ["<h2>Once-for-All</h2>"]
    total = f"/{t['epochs_total']}" if t["epochs_total"] else ""
    cpu = f" ({t['cpu_seconds']:.1f} CPU s)" if t["cpu_seconds"] is not None else ""
    parts.append(
        f"<p>Elastic supernet trained once: {t['epochs_done']}{total} epochs of progressive "
        f"shrinking, {t['train_seconds']:.1f} s{esc(cpu)}"
        + (f", data-parallel (DDP) on {t['world_size']} processes" if t["world_size"] > 1 else "")
        + ". Each specialisation below reuses it.</p>"
    )
    parts.append(
        table(
            [
                [
                    p["name"],
                    ", ".join(p["elastic"]) or "none (largest net)",
                    f"{p['epochs_done']}"
                    + (f"/{p['epochs_planned']}" if p["epochs_planned"] is not None else ""),
                    _fmt(p["loss_first"]),
                    _fmt(p["loss_last"]),
                    _fmt(p["seconds"], ".1f"),
                ]
                for p in t["phases"]
            ],
            ["phase", "elastic", "epochs", "loss first", "loss last", "seconds"],
        )
    )
    if "ofa_loss" in plots:
        parts.append(f"<img src='{plots['ofa_loss']}'/>")
    rows = section["specializations"]
    parts.append("<h3>Specialisations</h3>")
    if not rows:
        parts.append("<p>None yet: `nasforge ofa specialize RUN --target-ms MS`.</p>")
        return "".join(parts)
    shaky = [r["label"] for r in rows if r["latency_note"]]
    if shaky:
        parts.append(
            "<p class='warn'>Measured latencies of "
            + esc(", ".join(str(s) for s in shaky))
            + " are unstable (host busy): not trustworthy figures; measure them again on a "
            "quiet host.</p>"
        )
    body = []
    for r in rows:
        sec = r["seconds"]
        body.append(
            [
                r["label"],
                f"{_fmt(r['target_ms'], 'g')} ({r['objective']})",
                f"{r['backend']} b{r['batch_size']}",
                _fmt(r["latency_ms_predicted"], ".3f"),
                _fmt(r["latency_ms_measured"], ".3f")
                + (f" ({r['latency_note']})" if r["latency_note"] else ""),
                _where(r)
                + ("" if r["feasible"] is not False else "; none within")
                + (f"; {r['refine_rounds']} measured round(s)" if r.get("refine_rounds") else ""),
                _fmt(r["val_acc_inherited"]),
                _fmt(r["val_acc_predicted"]),
                _fmt(r["val_acc_finetuned"]),
                _fmt(r["test_acc"]),
                f"{_fmt(sec.get('total'), '.1f')} ({_fmt(sec.get('predictor'), '.1f')} / "
                f"{_fmt(sec.get('search'), '.1f')} / {_fmt(sec.get('measure'), '.1f')})",
            ]
        )
    parts.append(
        table(
            body,
            [
                "label",
                "target ms",
                "target",
                "predicted ms",
                "measured ms",
                "vs target",
                "val inherited",
                "val predicted",
                "val fine-tuned",
                "test",
                "seconds (predictor / search / measure)",
            ],
        )
    )
    if "ofa_targets" in plots:
        parts.append(f"<img src='{plots['ofa_targets']}'/>")
    return "".join(parts)
