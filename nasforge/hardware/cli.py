"""`nasforge latency build | predict | validate`: latency tables from the command line.

A typer sub-app (``app``) that ``nasforge.cli`` mounts as ``nasforge latency``. Bad input is
one ``error:`` line on stderr and exit code 2.

``build`` and ``validate`` end with the table's verdict (trust / do not trust / cannot tell,
:func:`~nasforge.hardware.trust.table_verdict`); ``validate`` records its verdict in the table
file (``--no-record`` to leave the file alone) so that later searches judge by it.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
import yaml
from rich.console import Console
from rich.markup import escape

from nasforge.cliutil import check_options, writable_file_problem
from nasforge.cliutil import fail as _fail
from nasforge.errors import NasforgeError
from nasforge.hardware.backends import BackendSpec
from nasforge.hardware.builder import BuildConfig, TableBuilder
from nasforge.hardware.predictor import LatencyPredictor
from nasforge.hardware.table import LatencyTable
from nasforge.hardware.trust import TableVerdict, record_validation, table_verdict
from nasforge.hardware.validate import plot_validation, validate_table
from nasforge.plugins import load_plugins
from nasforge.spaces import create_space, space_factory

app = typer.Typer(
    help="Build, predict and validate latency tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
#: the builder's defaults are the command's (whole models to calibrate and to score on)
_BUILD_DEFAULTS = BuildConfig()


class CliInputError(NasforgeError):
    """A command-line value is malformed (names the option)."""


#: user modules that register spaces/backends/layers (as a config's ``plugins:``)
PluginOption = Annotated[
    list[str], typer.Option("--plugin", "-p", help="import this plugin module first (repeatable)")
]


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise CliInputError(
            f"--input-shape: {text!r} is not a list of integers like 3,32,32"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise CliInputError(f"--input-shape: {text!r} must be positive integers like 3,32,32")
    return shape


def _options(items: list[str]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliInputError(f"--option: {item!r} must read key=value (value as YAML)")
        try:
            opts[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise CliInputError(f"--option: {item!r}: value is not valid YAML") from None
    return opts


def _parse_arch(space: Any, text: str, where: str) -> Any:
    """An arch from JSON (labels -> values, or Arch.to_json) or the space's own notation."""
    text = text.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliInputError(f"{where}: not valid JSON ({exc.msg})") from None
        values = obj["values"] if isinstance(obj, dict) and "values" in obj else obj
        try:
            return space.make(values)
        except NasforgeError as exc:  # name where the arch came from (--arch #2, file:line)
            raise CliInputError(f"{where}: {exc}") from None
    if hasattr(space, "from_string"):
        try:
            return space.from_string(text)
        except NasforgeError as exc:
            raise CliInputError(f"{where}: {exc}") from None
    raise CliInputError(
        f"{where}: {text[:40]!r} is not a JSON arch ({space.name} has no string notation)"
    )


def _print_verdict(verdict: TableVerdict) -> None:
    color = {"trust": "green", "do not trust": "red"}.get(verdict.status, "yellow")
    first, *notes = verdict.lines()
    label = first.removeprefix("verdict: ")
    out.print(f"verdict: [{color}]{escape(label)}[/]", highlight=False, soft_wrap=True)
    for line in notes:
        out.print(escape(line), highlight=False, soft_wrap=True)


def _load(path: Path) -> LatencyTable:
    """Load a table, printing a warning line for each fingerprint mismatch."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = LatencyTable.load(path)
    for w in caught:
        err.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
    return table


@app.command()
def build(
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="table JSON to write (resumes if present)")
    ],
    space: Annotated[
        str, typer.Option(help="a registered space (`nasforge spaces` lists them)")
    ] = "mobile",
    input_shape: Annotated[str, typer.Option(help="per-sample shape, e.g. 3,32,32")] = "3,32,32",
    num_classes: Annotated[int, typer.Option(help="classifier outputs")] = 10,
    option: Annotated[list[str], typer.Option(help="space option key=value (repeatable)")] = [],  # noqa: B006
    backend: Annotated[
        str, typer.Option(help="torch | torch:parallel | onnxruntime | onnxruntime:parallel | cuda")
    ] = "torch",
    threads: Annotated[int, typer.Option(help="threads, pinned and recorded")] = 1,
    batch_size: Annotated[int, typer.Option(help="batch size of every measurement")] = 1,
    statistic: Annotated[
        str, typer.Option(help="min | p10 | median: what predictions use")
    ] = "min",
    calibration: Annotated[
        int, typer.Option(help="whole models measured to fit the overhead")
    ] = _BUILD_DEFAULTS.calibration_archs,
    held_out: Annotated[
        int,
        typer.Option(help="further whole models that score the table (its verdict needs >= 5)"),
    ] = _BUILD_DEFAULTS.held_out_archs,
    seed: Annotated[int, typer.Option(help="seeds calibration archs and visiting order")] = 0,
    wait_quiet: Annotated[
        float,
        typer.Option(
            "--wait-quiet",
            help="before each timing pass, wait up to this many seconds for a quiet host, "
            "then measure anyway (0: measure at once)",
        ),
    ] = 0.0,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    plugin: PluginOption = [],  # noqa: B006
) -> None:
    """Measure every distinct layer of a space on a backend and save the table.

    Building into an existing table measures only the layers it lacks."""
    try:
        load_plugins(plugin)
        if not wait_quiet >= 0:  # also refuses nan
            raise CliInputError(f"--wait-quiet: seconds must be >= 0, got {wait_quiet}")
        if batch_size < 1 or threads < 1 or calibration < 0 or held_out < 0:
            raise CliInputError(
                "--batch-size and --threads must be >= 1, --calibration and --held-out >= 0"
            )
        shape = _shape(input_shape)
        opts = _options(option)
        problem = writable_file_problem(out_path)
        if problem:  # before the minutes of measuring, not when the table is written
            raise CliInputError(f"--out: {problem}")
        try:
            check_options(
                "--option",
                f"space {space!r}",
                opts,
                lambda: space_factory(space),
                ("input_shape", "num_classes"),
                sep=" ",
            )
        except ValueError as exc:
            raise CliInputError(str(exc)) from None
        sp = create_space(space, shape, num_classes, **opts)
        spec = BackendSpec.parse(backend, threads=threads)
        t0 = time.perf_counter()
        config = BuildConfig(
            statistic=statistic,
            calibration_archs=calibration,
            held_out_archs=held_out,
            seed=seed,
            timing=_BUILD_DEFAULTS.timing.waiting(wait_quiet),
        )
        builder = TableBuilder(sp, spec, batch_size, config, space_options=opts, progress=not quiet)
        try:
            table = builder.build(out_path)
        except KeyboardInterrupt:  # Ctrl-C: what was measured is in the file (saved as it goes)
            kept = (
                f"the layers measured so far are kept in {out_path}; " if out_path.is_file() else ""
            )
            err.print(
                f"interrupted: {escape(kept)}run the same command again to continue (it "
                "measures only what the table lacks)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        pred = LatencyPredictor(table, sp)
    except NasforgeError as exc:
        _fail(exc)
        return
    cal = table.calibration.get(f"{table.statistic}/{pred.mode}")
    out.print(
        f"{out_path}: {len(table.entries)} layers of {space} on {spec.label} in "
        f"{time.perf_counter() - t0:.0f}s ({table.clock} clock, statistic {table.statistic})"
    )
    if table.parallel_speedup is not None:
        out.print(
            f"parallel speedup of two independent branches: {table.parallel_speedup:.2f}x "
            f"(predictions use the {pred.mode.replace('_', ' ')})"
        )
    if cal is not None:
        out.print(
            f"calibration: measured = {cal.slope:.3f} x table + {cal.intercept_ms:.4f} ms "
            f"(fit MAPE {cal.mape:.1f}% on {cal.points} models)"
        )
    acc = table.accuracy.get(f"{table.statistic}/{pred.mode}")
    if acc is not None:
        out.print(
            f"held-out accuracy on {int(acc['n'])} models: "
            f"{100 * acc['within_10pct']:.0f}% within +-10%, MAPE {acc['mape']:.1f}%, "
            f"Kendall tau {acc['kendall_tau']:.2f}"
        )
    _print_verdict(table_verdict(table, statistic=table.statistic, mode=pred.mode))


@app.command()
def predict(
    table_path: Annotated[Path, typer.Argument(help="latency table JSON")],
    arch: Annotated[
        list[str], typer.Option(help="arch as JSON or the space's notation (repeatable)")
    ] = [],  # noqa: B006
    archs_file: Annotated[
        Path | None, typer.Option("--archs", help="file with one arch per line")
    ] = None,
    sample: Annotated[int, typer.Option(help="predict this many random archs")] = 0,
    seed: Annotated[int, typer.Option(help="seed of --sample")] = 0,
    mode: Annotated[str, typer.Option(help="auto | sum | critical_path | schedule")] = "auto",
    statistic: Annotated[
        str | None, typer.Option(help="min | p10 | median (default: the table's)")
    ] = None,
    plugin: PluginOption = [],  # noqa: B006
) -> None:
    """Predict latency (ms) of archs from a table, one line each, and the prediction speed."""
    try:
        load_plugins(plugin)
        table = _load(table_path)
        pred = LatencyPredictor(table, mode=mode, statistic=statistic)
        space = pred.space
        archs = [_parse_arch(space, a, f"--arch #{i + 1}") for i, a in enumerate(arch)]
        if archs_file is not None:
            if not archs_file.is_file():
                raise CliInputError(f"--archs: {archs_file} not found")
            try:
                lines = archs_file.read_text().splitlines()
            except UnicodeDecodeError:
                raise CliInputError(
                    f"--archs: {archs_file} is not a text file (one arch per line)"
                ) from None
            archs += [
                _parse_arch(space, ln, f"{archs_file}:{i + 1}")
                for i, ln in enumerate(lines)
                if ln.strip()
            ]
        if sample:
            rng = np.random.default_rng(seed)
            archs += [space.sample(rng) for _ in range(sample)]
        if not archs:
            raise CliInputError("give archs with --arch, --archs FILE or --sample N")
        t0 = time.perf_counter()
        values = pred.predict_many(archs)
        dt = time.perf_counter() - t0
    except NasforgeError as exc:
        _fail(exc)
        return
    shown = archs if len(archs) <= 50 else archs[:50]
    for a, v in zip(shown, values):
        out.print(f"{v:10.4f} ms  {a.key}", highlight=False)
    if len(archs) > len(shown):
        out.print(f"... {len(archs) - len(shown)} more; mean {values.mean():.4f} ms")
    out.print(
        f"{len(archs)} archs in {dt * 1e3:.1f} ms ({len(archs) / max(dt, 1e-9):,.0f} archs/s), "
        f"{pred.mode}, statistic {pred.statistic}"
    )


@app.command()
def validate(
    table_path: Annotated[Path, typer.Argument(help="latency table JSON")],
    n: Annotated[int, typer.Option(help="archs to measure whole")] = 100,
    seed: Annotated[int, typer.Option(help="seed of the sample")] = 0,
    plot: Annotated[Path | None, typer.Option(help="predicted-vs-measured PNG")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the report as JSON")
    ] = None,
    record: Annotated[
        bool,
        typer.Option(help="record the verdict in the table file, for later searches to judge by"),
    ] = True,
    plugin: PluginOption = [],  # noqa: B006
) -> None:
    """Measure N archs whole; score the table, FLOPs and params (within 10%, MAPE, Kendall tau);
    say whether to trust the table on this host (with the host and its load beside the figures).

    A validation measured while the host was busy gives "cannot tell: host busy" and is not
    recorded."""
    try:
        load_plugins(plugin)
        if n < 2:
            raise CliInputError("--n: need at least 2 archs")
        for option, path in (("--plot", plot), ("--json", json_out)):
            problem = writable_file_problem(path) if path is not None else None
            if problem:  # before the measuring, not after it
                raise CliInputError(f"{option}: {problem}")
        table = _load(table_path)
        report = validate_table(table, n=n, seed=seed)
        recorded: Path | None = None
        if record and report.stability.stable:
            recorded = record_validation(table_path, report.record())
    except NasforgeError as exc:
        _fail(exc)
        return
    lines = report.lines()
    verdict_at = next((i for i, ln in enumerate(lines) if ln.startswith("verdict: ")), len(lines))
    for line in lines[:verdict_at]:
        out.print(line, highlight=False, soft_wrap=True)
    if report.verdict is not None:
        _print_verdict(report.verdict)
    if recorded is not None:
        out.print(
            f"verdict recorded in {escape(str(recorded))} (searches in predict mode judge the "
            "table by it)",
            highlight=False,
            soft_wrap=True,
        )
    elif record:
        out.print("verdict not recorded: the host was busy; validate again when it is quiet")
    if plot is not None:
        out.print(f"plot: {plot_validation(report, plot)}")
    if json_out is not None:
        out.print(f"report: {report.save(json_out)}")


@app.command()
def diagnose(
    space: Annotated[str, typer.Option(help="a registered space")] = "mobile",
    backend: Annotated[str, typer.Option(help="torch | onnxruntime | ...")] = "torch",
    batch: Annotated[int, typer.Option("--batch", "--batch-size", help="batch size")] = 1,
    layers: Annotated[int, typer.Option(help="sampled layers (each with its predecessor)")] = 6,
    threads: Annotated[int, typer.Option(help="threads, pinned and recorded")] = 1,
    input_shape: Annotated[str, typer.Option(help="per-sample shape, e.g. 3,32,32")] = "3,32,32",
    num_classes: Annotated[int, typer.Option(help="classifier outputs")] = 10,
    option: Annotated[list[str], typer.Option(help="space option key=value (repeatable)")] = [],  # noqa: B006
    seed: Annotated[int, typer.Option(help="seeds the layer sample")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the JSON here")] = None,
    plugin: PluginOption = [],  # noqa: B006
) -> None:
    """Why latency differs on this host: marginal cost in a chain vs alone, fusion, layout
    conversions, first calls, kernels/ISA (nasforge.hardware.diagnose)."""
    # imported here so that this command stays one self-contained block of this file
    from nasforge.hardware.diagnose import DiagnoseConfig
    from nasforge.hardware.diagnose import diagnose as run_diagnosis

    try:
        load_plugins(plugin)
        if batch < 1 or threads < 1 or layers < 1:
            raise CliInputError("--batch, --threads and --layers must be >= 1")
        problem = writable_file_problem(json_out) if json_out is not None else None
        if problem:  # before the measuring, not after it
            raise CliInputError(f"--json: {problem}")
        spec = BackendSpec.parse(backend, threads=threads)
        sp = create_space(space, _shape(input_shape), num_classes, **_options(option))
        report = run_diagnosis(sp, spec, DiagnoseConfig(layers, batch, seed), space)
    except NasforgeError as exc:
        _fail(exc)
        return
    for line in report.lines():  # "[section]" is text, not rich markup
        out.print(line, highlight=False, soft_wrap=True, markup=False)
    if json_out is not None:
        out.print(f"json: {report.save(json_out)}", markup=False)
