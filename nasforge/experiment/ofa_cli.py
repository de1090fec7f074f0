"""``nasforge ofa train | specialize | list``: Once-for-All from the command line.

A typer sub-app (:data:`ofa_app`) that :mod:`nasforge.cli` mounts as ``nasforge ofa``: train
one elastic supernet (:mod:`nasforge.experiment.ofa_run`), then extract a subnet per latency
target in seconds to minutes (:mod:`nasforge.experiment.ofa_specialize`), and list what was
extracted. Bad input is one ``error:`` line per problem on stderr and exit code 2; Ctrl-C or
SIGTERM during training exits 130 / 143 after saying how to resume.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nasforge.cliutil import check_run_dir
from nasforge.cliutil import fail as _fail
from nasforge.errors import NasforgeError
from nasforge.experiment.latency_verdict import card_stability
from nasforge.experiment.report_ofa import CARD_FILE, SPECIALIZED_DIR
from nasforge.yamlfile import read_yaml

ofa_app = typer.Typer(
    help="Once-for-All: train one elastic supernet, then specialise a subnet per latency target.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


@ofa_app.command()
def train(
    config: Annotated[Path, typer.Argument(help="experiment YAML config with an ofa: section")],
    resume: Annotated[
        bool, typer.Option(help="continue a stopped training from its last checkpoint")
    ] = False,
    runs_dir: Annotated[Path | None, typer.Option(help="parent folder of run directories")] = None,
    name: Annotated[str | None, typer.Option(help="run name (overrides the config's)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Train the elastic supernet (progressive shrinking); writes runs/<name>/supernet/final.pt.

    One checkpoint per epoch in runs/<name>/supernet/; --resume after a kill continues from
    the last one exactly. Data-parallel (DDP): torchrun --nproc-per-node N -m nasforge ofa
    train CONFIG.
    """
    from nasforge.experiment.config import load_config
    from nasforge.experiment.interrupt import SearchInterrupted
    from nasforge.experiment.ofa_run import LostRank, OFATraining
    from nasforge.oneshot.distributed import from_env

    try:
        cfg = load_config(config, {"name": name} if name else None)
        run_dir = cfg.run_dir(runs_dir)
        try:
            main = from_env().is_main  # under torchrun only rank 0 speaks (others: errors)
        except ValueError as exc:
            raise NasforgeError(f"torchrun environment: {exc}") from None
        if main:  # ranks > 0 (maybe on other machines) have no run directory to check
            check_run_dir(run_dir, resume)
            err.print(
                f"run directory: {escape(str(run_dir.resolve()))}",
                highlight=False,
                soft_wrap=True,
            )
        summary = OFATraining(cfg, run_dir, console=err, progress=not quiet).run(resume)
    except SearchInterrupted as stop:  # the run printed what was saved and how to resume
        raise typer.Exit(stop.exit_code) from None
    except LostRank:  # likewise (a data-parallel rank died)
        raise typer.Exit(2) from None
    except NasforgeError as exc:
        _fail(exc)
        return
    if summary is not None:  # None: a rank other than 0 of a data-parallel training
        out.print(escape(summary.line()), highlight=False, soft_wrap=True)


@ofa_app.command()
def specialize(
    run: Annotated[Path, typer.Argument(help="run directory of a finished `ofa train`")],
    target_ms: Annotated[
        float, typer.Option("--target-ms", help="latency target in milliseconds (> 0)")
    ],
    backend: Annotated[
        str | None, typer.Option(help="backend the target runs on (default: config's latency)")
    ] = None,
    table: Annotated[
        Path | None,
        typer.Option(help="latency table measured on the target (default: built once, cached)"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="batch size of the target (default: config's latency)")
    ] = None,
    finetune_epochs: Annotated[
        int, typer.Option(help="fine-tune the extracted subnet this many epochs (0: none)")
    ] = 0,
    label: Annotated[
        str | None,
        typer.Option("--name", help="folder under RUN/specialized/ (default from the target)"),
    ] = None,
    refine_rounds: Annotated[
        int | None,
        typer.Option(
            help="measured refinement rounds at most (0: none; default: ofa.specialize's)"
        ),
    ] = None,
) -> None:
    """Extract the most accurate subnet under --target-ms into RUN/specialized/<name>/.

    No training: subnets are scored by an accuracy predictor and a latency table of the
    target; the chosen one is written like best/ (weights, model.onnx, card.json with the
    predicted and the measured latency).
    """
    try:
        _check_run(run)
        if not (math.isfinite(target_ms) and target_ms > 0):
            raise NasforgeError(f"--target-ms: must be a positive number of ms, got {target_ms}")
        if batch_size is not None and batch_size < 1:
            raise NasforgeError(f"--batch-size: must be >= 1, got {batch_size}")
        if finetune_epochs < 0:
            raise NasforgeError(f"--finetune-epochs: must be >= 0, got {finetune_epochs}")
        if table is not None and not table.is_file():
            raise NasforgeError(f"--table: {table} is not a file")
        # the specialisation layer (accuracy samples, latency tables, timing, ONNX) is heavy
        from nasforge.experiment.ofa_specialize import specialize_run

        # it prints its own summary line (target, latencies, accuracy, folder)
        specialize_run(
            run, target_ms, backend, table, batch_size, finetune_epochs, label, err, refine_rounds
        )
    except NasforgeError as exc:
        _fail(exc)
        return


@ofa_app.command(name="list")
def list_specialized(
    run: Annotated[Path, typer.Argument(help="run directory of an `ofa train`")],
) -> None:
    """List the run's specialisations (RUN/specialized/*/card.json)."""
    try:
        _check_run(run)
        _check_ofa_run(run)
        cards = specialized_cards(run)
    except NasforgeError as exc:
        _fail(exc)
        return
    if not cards:
        out.print(
            f"no specialisations in {escape(str(run))} yet; make one with `nasforge ofa "
            f"specialize {escape(str(run))} --target-ms MS`",
            highlight=False,
            soft_wrap=True,
        )
        return
    table = Table(title=escape(f"{run.name}: {len(cards)} specialisation(s)"))
    columns = ("name", "target ms", "pred. ms", "meas. ms", "val acc", "pred. acc", "test acc")
    for col in columns:
        table.add_column(col, justify="left" if col == "name" else "right", no_wrap=col == "name")
    for label, card in cards:
        tuned = card.get("finetune_epochs")
        table.add_row(
            escape(label) + ("" if card.get("feasible", True) else " (none under target)"),
            _num(card.get("target_ms"), ".3f"),
            _num(card.get("latency_ms_predicted"), ".3f"),
            _measured(card),
            _num(_first(card, "val_acc_finetuned", "val_acc_inherited"), ".4f")
            + (f" ({tuned} ep.)" if isinstance(tuned, int) and tuned > 0 else ""),
            _num(card.get("val_acc_predicted"), ".4f"),
            _num(card.get("test_acc"), ".4f"),
        )
    out.print(table)


def specialized_cards(run: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(label, card)`` of each ``RUN/specialized/<label>/card.json``, by label.

    Raises:
        NasforgeError: a card that is not a JSON object (names the file).
    """
    folder = run / SPECIALIZED_DIR
    if not folder.is_dir():
        return []
    cards = []
    for path in sorted(folder.glob(f"*/{CARD_FILE}")):
        try:
            card = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise NasforgeError(f"{path}: cannot read the card ({exc})") from None
        if not isinstance(card, dict):
            raise NasforgeError(f"{path}: not a card (expected a JSON object)")
        cards.append((path.parent.name, card))
    return cards


def _check_run(run: Path) -> None:
    if not (run / "trials.db").is_file() or not (run / "config.yaml").is_file():
        raise NasforgeError(
            f"{run}: not a run directory (no trials.db and config.yaml); train one with "
            "`nasforge ofa train CONFIG`"
        )


def _check_ofa_run(run: Path) -> None:
    """Refuse a run whose config has no ``ofa:`` section (a search run has no
    specialisations, and ``specialize`` would refuse it too)."""
    config_file = run / "config.yaml"
    cfg = read_yaml(config_file, "config")
    if not isinstance(cfg, dict) or cfg.get("ofa") is None:
        raise NasforgeError(
            f"{config_file}: not an OFA run (its config has no ofa: section), so it has no "
            f"specialisations; `nasforge show {run}` shows a search run's results"
        )


def _first(card: dict[str, Any], *keys: str) -> Any:
    return next((card[k] for k in keys if card.get(k) is not None), None)


def _measured(card: dict[str, Any]) -> str:
    """The measured latency, marked when its stability verdict says the host was busy."""
    shown = _num(card.get("latency_ms"), ".3f")
    stability = card_stability(card)
    return shown + (" (unstable)" if stability is not None and not stability.stable else "")


def _num(value: object, fmt: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return format(int(value) if fmt == "d" else value, fmt)


__all__ = ["ofa_app", "specialized_cards"]
