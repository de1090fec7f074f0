"""The `nasforge` command line: search, scale, show, export, spaces, plugins, doctor, dashboard,
latency, compress, ofa."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nasforge.cliutil import check_run_dir, writable_folder_problem
from nasforge.cliutil import fail as _fail
from nasforge.compression.cli import compress
from nasforge.errors import NasforgeError
from nasforge.experiment.ofa_cli import ofa_app
from nasforge.hardware.cli import app as latency_app
from nasforge.plugins import ENTRY_POINT_GROUP, load_plugins, loaded_plugins, registrations

if TYPE_CHECKING:
    from nasforge.experiment.config import ExperimentConfig

app = typer.Typer(
    help="Search, scale and compress neural networks for a measured target.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def _num(value: object, fmt: str) -> str:
    """``value`` formatted with ``fmt``, or ``-`` when it is missing or not a number."""
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


@app.command()
def search(
    config: Annotated[Path, typer.Argument(help="experiment YAML config")],
    resume: Annotated[bool, typer.Option(help="continue a stopped run from its store")] = False,
    runs_dir: Annotated[Path | None, typer.Option(help="parent folder of run directories")] = None,
    name: Annotated[str | None, typer.Option(help="run name (overrides the config's)")] = None,
    no_final: Annotated[
        bool, typer.Option("--no-final", help="skip retraining and export")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Run a search; writes runs/<name>/ with trials.db, report.html and best/."""
    from nasforge.experiment.config import load_config
    from nasforge.experiment.interrupt import SearchInterrupted
    from nasforge.experiment.ofa_config import search_refusal
    from nasforge.experiment.runner import Experiment

    try:
        cfg = load_config(config, {"name": name} if name else None)
        if cfg.ofa is not None:  # Once-for-All has its own commands
            raise NasforgeError(search_refusal(str(config)))
        run_dir = cfg.run_dir(runs_dir)
        if _main_rank():  # ranks > 0 of torchrun (maybe on other machines) have no run dir
            check_run_dir(run_dir, resume)
        # the first line says where the run goes (runs_dir / --runs-dir accept any path); under
        # torchrun only rank 0, which owns the run, says it
        if _main_rank():
            err.print(
                f"run directory: {escape(str(run_dir.resolve()))}", highlight=False, soft_wrap=True
            )
        exp = Experiment(cfg, run_dir, console=err, progress=not quiet)
        summary = exp.run(resume=resume, final=not no_final)
    except SearchInterrupted as stop:  # the run printed what was saved and how to resume
        raise typer.Exit(stop.exit_code) from None
    except NasforgeError as exc:
        if str(exc).startswith("latency.table: ") and str(exc).endswith("does not exist"):
            from nasforge.experiment.doctor import table_build_hint

            _fail(NasforgeError(f"{exc}; {table_build_hint(cfg)}"))
        _fail(exc)
        return
    out.print(
        f"trials: {summary.trials_complete} complete, {summary.trials_failed} failed; "
        f"search {summary.search_seconds:.1f}s"
    )
    for note in summary.notes:
        out.print(escape(note), highlight=False)
    if summary.final and isinstance(summary.final.get("test_acc"), (int, float)):
        out.print(f"final test accuracy: {summary.final['test_acc']:.4f}")
    out.print(f"report: {escape(str(summary.run_dir / 'report.html'))}", highlight=False)
    if summary.trials_complete == 0:
        err.print(
            f"[red]error:[/] no trial completed ({summary.trials_failed} failed); the errors "
            f"are in {escape(str(summary.run_dir / 'report.html'))} and `nasforge show`",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


@app.command()
def scale(
    config: Annotated[Path, typer.Argument(help="experiment YAML config with a scaling: section")],
    resume: Annotated[
        bool, typer.Option(help="continue a stopped run, skipping done points")
    ] = False,
    runs_dir: Annotated[Path | None, typer.Option(help="parent folder of run directories")] = None,
    name: Annotated[str | None, typer.Option(help="run name (overrides the config's)")] = None,
    quiet: Annotated[bool, typer.Option(help="progress only in the run's progress.log")] = False,
) -> None:
    """Compound scaling (EfficientNet) of a base mobile arch: grid of alpha, beta, gamma, the
    family B0..Bk and width-, depth-, resolution-only baselines, accuracy and latency measured;
    writes runs/<name>/scaling.json, scaling.png and scaling.html."""
    from nasforge.experiment.config import load_config
    from nasforge.experiment.interrupt import SearchInterrupted
    from nasforge.experiment.scaling import ScalingRun

    try:
        cfg = load_config(config, {"name": name} if name else None)
        run_dir = cfg.run_dir(runs_dir)
        check_run_dir(run_dir, resume)
        err.print(
            f"run directory: {escape(str(run_dir.resolve()))}", highlight=False, soft_wrap=True
        )
        summary = ScalingRun(cfg, run_dir, err, progress=not quiet, config_path=config).run(resume)
    except SearchInterrupted as stop:  # the run printed what was kept and how to resume
        raise typer.Exit(stop.exit_code) from None
    except NasforgeError as exc:
        _fail(exc)
        return
    for line in summary.lines():
        out.print(escape(line), highlight=False, soft_wrap=True)


@app.command()
def show(
    run: Annotated[Path, typer.Argument(help="run directory")],
    top: Annotated[int, typer.Option(help="rows to show", min=1)] = 10,
) -> None:
    """Print the leaderboard of a run."""
    from nasforge.experiment.report import leaderboard
    from nasforge.experiment.report_ofa import show_lines as ofa_show_lines
    from nasforge.experiment.report_oneshot import search_cost_seconds, show_lines
    from nasforge.experiment.store import TrialStore

    db = run / "trials.db"
    if not db.is_file():
        _fail(NasforgeError(_not_a_run(run)))
    try:  # a damaged or empty store is refused, never rewritten
        store = TrialStore(db, create=False)
    except NasforgeError as exc:
        _fail(exc)
        return
    with store:
        rows = leaderboard(store, top)
        counts = {s: store.count((s,)) for s in ("complete", "failed", "running", "interrupted")}
        final = store.get_meta("final")
        cost = search_cost_seconds(store)  # a supernet trained before the trials counts
        oneshot = show_lines(store, run)  # weight-sharing runs: method, epochs, collapse
        oneshot += ofa_show_lines(store, run)  # Once-for-All: phases, specialisations
    table = Table(
        title=escape(f"{run.name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    )
    # latency.mode: flops reports mflops, never under the name latency_ms
    metric = "latency_ms" if any("latency_ms" in t.metrics for t in rows) or not rows else "mflops"
    for col in ("trial", "score", "val_acc", metric, "params", "cost s"):
        table.add_column(col, justify="right")
    for t in rows:
        score = t.score[0] if isinstance(t.score, tuple) else t.score
        table.add_row(
            str(t.id),
            _num(score, ".4f"),
            _num(t.metrics.get("val_acc"), ".4f"),
            _num(t.metrics.get(metric), ".3f"),
            _num(t.metrics.get("params"), ".0f"),
            _num(t.cost_seconds, ".1f"),
        )
    out.print(table)
    out.print(f"search cost: {cost:.1f} device-seconds")
    for line in oneshot:
        out.print(escape(line), highlight=False, soft_wrap=True)
    if final:
        f0 = final[0]
        lat = f0.get("latency") or {}
        how = f" ({lat['statistic']} on {lat['backend']}, after retraining)" if lat else ""
        from nasforge.experiment.latency_verdict import card_stability, latency_text

        value = f0.get("latency_ms")
        shown = (
            latency_text(float(value), card_stability(f0))
            if isinstance(value, (int, float))
            else f"{_num(value, '.3f')} ms"
        )
        out.print(
            f"final model (trial {f0.get('trial_id')}): test accuracy "
            f"{_num(f0.get('test_acc'), '.4f')}, latency " + escape(shown + how),
            highlight=False,
        )


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="run directory")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="where to write (default RUN/best)")
    ] = None,
) -> None:
    """Export the run's best model to ONNX (retraining it first if the run stopped before).

    The model is rebuilt from ``best/arch.json`` and its weights read from ``best/model.pt``
    as a state dict (``weights_only``): nothing in the run directory is unpickled.
    """
    from nasforge.experiment.config import load_config
    from nasforge.experiment.export import export_onnx
    from nasforge.experiment.store import check_store
    from nasforge.modelfile import WEIGHTS_FILE, load_model
    from nasforge.nn import fuse_bn

    try:
        if not (run / "trials.db").is_file():
            raise NasforgeError(_not_a_run(run))
        check_store(run / "trials.db")  # a damaged store is refused with how to recover
        cfg = load_config(run / "config.yaml")
        if not cfg.evaluator.needs_data:
            raise NasforgeError(
                f"{run}: a {cfg.evaluator.kind!r} run trains no network, so there is no model "
                "to export; its best architecture is in best/card.json"
            )
        best = run / "best"
        problem = writable_folder_problem(out_dir) if out_dir is not None else None
        if problem:  # before a retraining, not after it
            raise NasforgeError(f"--out: {problem}")
        if not (best / WEIGHTS_FILE).is_file():
            _finalize(cfg, run)
        card_file = best / "card.json"
        if not card_file.is_file():
            raise NasforgeError(
                f"{card_file}: missing (the final step did not finish); remove {best} and run "
                f"`nasforge export {run}` again to retrain the best trial"
            )
        card = json.loads(card_file.read_text())
        model = load_model(best, what=f"{best / WEIGHTS_FILE}")
        target = out_dir or best
        target.mkdir(parents=True, exist_ok=True)
        export_onnx(fuse_bn(model), tuple(card["input_shape"]), target / "model.onnx")
    except NasforgeError as exc:
        _fail(exc)
        return
    out.print(f"exported {escape(str(target / 'model.onnx'))}", highlight=False)


@app.command()
def repair(run: Annotated[Path, typer.Argument(help="run directory")]) -> None:
    """Rebuild a damaged or empty store: every readable trial (from the store, its journal of
    finished trials and the newest backup) goes into a new trials.db; the old files are kept."""
    from nasforge.experiment.repair import repair_run

    try:
        if not run.is_dir():  # a typo'd path is refused, not created
            raise NasforgeError(_not_a_run(run))
        report = repair_run(run)
    except NasforgeError as exc:
        _fail(exc)
        return
    out.print(escape(report.summary()), highlight=False, soft_wrap=True)


def _not_a_run(run: Path) -> str:
    """Why ``run`` is not a run directory, in the user's terms."""
    if not run.exists():
        return (
            f"{run}: no such folder; a run directory is runs/<name>/ as `nasforge search` made it"
        )
    if not run.is_dir():
        return f"{run}: a file, not a run directory (runs/<name>/ as `nasforge search` made it)"
    if (run / "scaling.json").is_file():
        return (
            f"{run}: a `nasforge scale` run (no trials.db): its results are "
            f"{run / 'scaling.json'} and {run / 'scaling.html'}"
        )
    return f"{run}: not a run directory (no trials.db)"


def _finalize(cfg: ExperimentConfig, run: Path) -> None:
    """Retrain the run's best trial into ``run/best`` (a run stopped before its final step)."""
    from nasforge.experiment.final import finalize
    from nasforge.experiment.lock import RunLock
    from nasforge.experiment.setup import make_dataset, make_objective, make_space
    from nasforge.experiment.store import TrialStore

    ds = make_dataset(cfg)
    with RunLock(run, "export"), TrialStore(run / "trials.db", create=False) as store:
        if finalize(cfg, run, store, ds, make_space(cfg, ds), make_objective(cfg), err) is None:
            raise NasforgeError(f"{run}: no completed trial to export")


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="also load this config's plugins")
]
PluginOption = Annotated[
    list[str] | None, typer.Option("--plugin", "-p", help="also load this plugin module")
]


def _load_plugins(config: Path | None, plugin: list[str] | None) -> None:
    """Entry-point plugins always; a config's ``plugins:`` and ``--plugin`` modules if given."""
    from nasforge.experiment.config import load_config

    if config is not None:
        load_config(config)  # loads the config's plugins before validating the rest
    load_plugins(plugin or [])


@app.command()
def spaces(config: ConfigOption = None, plugin: PluginOption = None) -> None:
    """List the registered search spaces (plugins' included, with where they come from)."""
    from nasforge.spaces import list_spaces

    try:
        _load_plugins(config, plugin)
    except NasforgeError as exc:
        _fail(exc)
        return
    added = registrations("space")
    table = Table(title="search spaces")
    table.add_column("name")
    table.add_column("description")
    table.add_column("origin")
    for e in list_spaces():
        origin = added.get(("space", e.name))
        builtin = e.origin == "nasforge" or e.origin.startswith("nasforge.")
        table.add_row(
            e.name,
            e.description,
            f"plugin {origin}" if origin else "nasforge" if builtin else e.origin,
        )
    out.print(table)


@app.command()
def plugins(config: ConfigOption = None, plugin: PluginOption = None) -> None:
    """List loaded plugins (entry points, a config's plugins:, --plugin) and what they added."""
    try:
        _load_plugins(config, plugin)
    except NasforgeError as exc:
        _fail(exc)
        return
    if not loaded_plugins():
        out.print(
            f"no plugins loaded (none in a config's plugins:, --plugin or entry-point group "
            f"{ENTRY_POINT_GROUP})"
        )
        return
    table = Table(title=f"plugins (entry-point group {ENTRY_POINT_GROUP})")
    for col in ("plugin", "source", "registered"):
        table.add_column(col)
    for p in loaded_plugins():
        what = ", ".join(f"{r.kind} {r.name}" for r in p.registered) or "(nothing)"
        table.add_row(p.name, p.source, what)
    out.print(table)


@app.command()
def doctor(config: Annotated[Path, typer.Argument(help="experiment YAML config")]) -> None:
    """Name anti-patterns in a config (FLOPs as latency, test-split search, ...) before a run."""
    from nasforge.experiment.config import load_config
    from nasforge.experiment.doctor import diagnose

    try:
        cfg = load_config(config)
    except NasforgeError as exc:
        _fail(exc)
        return
    findings = diagnose(cfg)
    colors = {"error": "red", "warning": "yellow", "info": "cyan"}
    for f in findings:
        out.print(
            f"[{colors[f.level]}]{f.level}[/] {escape(f.field)}: {escape(f.message)}",
            soft_wrap=True,
            highlight=False,
        )
    if not findings:
        out.print("[green]no problems found[/]")
    if any(f.level == "error" for f in findings):
        raise typer.Exit(1)


@app.command()
def dashboard(
    run: Annotated[Path, typer.Argument(help="run directory")],
    port: Annotated[int, typer.Option(help="TCP port (0: any free port)")] = 8050,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="allow a non-loopback --host (no auth!)")
    ] = False,
    refresh: Annotated[float, typer.Option(help="seconds between the page's updates")] = 2.0,
    verbose: Annotated[bool, typer.Option(help="log every request")] = False,
) -> None:
    """Serve a live, read-only web page of a run (progress, leaderboard, Pareto front, curves);
    it follows a running search and keeps working while the run is killed and resumed."""
    import logging

    from nasforge.dashboard.server import serve

    if verbose:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("nasforge.dashboard").setLevel(logging.DEBUG)

    def say(line: str) -> None:  # the URL on stdout, a warning on stderr
        if line.startswith("warning:"):
            err.print(escape(line), style="yellow", highlight=False, soft_wrap=True)
        else:
            out.print(escape(line), highlight=False, soft_wrap=True)

    try:
        serve(run, host, port, refresh_s=refresh, allow_remote=allow_remote, say=say)
    except NasforgeError as exc:
        _fail(exc)


app.add_typer(latency_app, name="latency", help="Build, predict and validate latency tables.")
app.command(name="compress")(compress)
app.add_typer(ofa_app, name="ofa", help="Once-for-All: one elastic supernet, a subnet per target.")


def _main_rank() -> bool:
    """Whether this process owns the run: always, but for ranks > 0 under torchrun."""
    from nasforge.oneshot import distributed

    try:
        return distributed.from_env().is_main
    except ValueError:  # a malformed torchrun environment is reported where it is joined
        return True


def main() -> None:
    try:
        app()
    except NasforgeError as exc:  # errors raised outside a command's own handling
        for line in str(exc).splitlines():
            err.print(f"[red]error:[/] {escape(line)}", highlight=False)
        sys.exit(2)
    except ModuleNotFoundError as exc:  # an optional dependency a command imports lazily
        missing = exc.name or str(exc)
        err.print(
            f"[red]error:[/] this command needs the optional package {missing!r}, which is "
            f"not installed (pip install {missing.split('.')[0]})"
        )
        sys.exit(2)
    except OSError as exc:  # a path the user named that cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(
            f"[red]error:[/] {escape(where + (exc.strerror or str(exc)))}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2 if exc.errno in _USER_PATH_ERRNOS else 1)
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the user, the trace in a file
        if os.environ.get("NASFORGE_DEBUG"):  # developers: the traceback in the terminal
            raise
        sys.exit(_internal_error(exc))


#: errors of a path the user gave (a missing folder, no permission, a file where a folder
#: goes): bad input, exit 2; others (a full disk, an I/O error) are runtime failures, exit 1
_USER_PATH_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.EROFS,
        errno.ENAMETOOLONG,
    }
)


def _internal_error(exc: BaseException) -> int:
    """Report an unexpected exception as one line naming a file with the full traceback
    (nothing is lost for the bug report, and the terminal shows no traceback; set
    ``NASFORGE_DEBUG=1`` to see it there instead); exit code 1."""
    import tempfile
    import time
    import traceback

    text = "".join(traceback.format_exception(exc))
    where = ""
    try:
        with tempfile.NamedTemporaryFile(
            "w",
            prefix=f"nasforge-crash-{time.strftime('%Y%m%d-%H%M%S')}-",
            suffix=".txt",
            delete=False,
        ) as fh:
            fh.write(" ".join(sys.argv) + "\n\n" + text)
            where = f"; the full traceback is in {fh.name} (attach it to a bug report)"
    except OSError:
        where = ""
    first = str(exc).splitlines()[0] if str(exc) else ""
    err.print(
        f"[red]error:[/] internal error: {escape(type(exc).__name__)}: {escape(first[:300])}"
        f"{escape(where)}",
        highlight=False,
        soft_wrap=True,
    )
    return 1


if __name__ == "__main__":
    main()
