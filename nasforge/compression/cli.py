"""``nasforge compress MODEL``: the typer command (mounted by the lead on the main app).

``MODEL`` never runs code when it is read (:mod:`nasforge.modelfile`): it is a run's ``best/``
folder (or the run directory), a ``model.pt`` state dict next to the ``arch.json`` that
rebuilds it, or a state dict together with ``--model-factory package.module:factory`` (a
function returning your ``nn.Module``; ``model_factory:`` in the ``--config`` YAML does the
same). A whole pickled module (``torch.save(model)``) is refused with one line saying what to
save instead. ``MODEL`` may also be an exported program (``.pt2``, checked before
``torch.export.load`` so no pickled object is read; quantization only, through ONNX: its
ATen graph has no modules to prune) or an ONNX model (``.onnx``: quantization only). A
TorchScript archive is refused with one line saying what to pass. ``--input-shape C,H,W``
adapts the data to the model; ``--plugin MODULE`` (repeatable, or ``compress.plugins``) is
imported before the model is loaded (to register stages and pruning rules). Bad input exits
with code 2 and one line.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from nasforge.cliutil import writable_folder_problem
from nasforge.compression.config import CompressConfig
from nasforge.compression.errors import CompressionError
from nasforge.compression.report import float_layers_text
from nasforge.compression.results import CompressionReport
from nasforge.errors import NasforgeError
from nasforge.hardware.noise import UNSTABLE
from nasforge.yamlfile import is_blank, read_yaml

if TYPE_CHECKING:  # torch is imported when a command runs, not when the CLI starts
    from torch import nn


def load_model(path: str | Path, factory: str | None = None, what: str = "MODEL") -> nn.Module:
    """The model at ``path`` (see :func:`nasforge.modelfile.load_model`); nothing is
    unpickled, so a crafted file cannot run code."""
    from nasforge.modelfile import load_model as _load

    return _load(path, factory, what)


def read_compress_yaml(path: Path) -> tuple[dict[str, Any], str | None]:
    """The ``CompressConfig`` mapping of a ``--config`` YAML (its ``compress:`` section, or
    the whole file) and its ``model_factory`` (top level or in the section), through the one
    YAML loader (:func:`nasforge.yamlfile.read_yaml`).

    Raises:
        ConfigError: missing, empty, not valid YAML (file and line), or not a mapping.
    """
    loaded = read_yaml(path, "--config file")
    if is_blank(loaded):
        raise CompressionError(f"--config: {path} is empty")
    if not isinstance(loaded, dict):
        raise CompressionError(f"--config: {path} is not a YAML mapping")
    factory = loaded.get("model_factory")
    experiment_keys = sorted(set(loaded) & _EXPERIMENT_SECTIONS)
    if "compress" not in loaded and experiment_keys:
        raise CompressionError(
            f"--config: {path} is an experiment config ({', '.join(experiment_keys)}) with no "
            "compress: section; add one, or pass a compression config like "
            "examples/compress.yaml"
        )
    section = loaded.get("compress", loaded)
    if not isinstance(section, dict):
        raise CompressionError(f"--config: {path}: compress: expected a mapping")
    raw = {k: v for k, v in section.items() if k != "model_factory"}
    factory = section.get("model_factory", factory)
    if factory is not None and not isinstance(factory, str):
        raise CompressionError(f"--config: {path}: model_factory: expected package.module:factory")
    return raw, factory


#: top-level keys of a search config (``nasforge search``), none of which a compression
#: config has: such a file given to ``--config`` is named for what it is
_EXPERIMENT_SECTIONS = frozenset(
    {
        "name",
        "data",
        "space",
        "strategy",
        "search",
        "evaluator",
        "train",
        "objective",
        "latency",
        "final",
        "oneshot",
        "ofa",
        "automl",
        "scaling",
        "runs_dir",
    }
)


def _validation_line(exc: ValidationError) -> str:
    """The first problem of a ``CompressConfig`` as ``compress.field: message`` (an unknown
    key with the nearest allowed one, pydantic's ``Value error, `` prefix dropped)."""
    import difflib

    e = exc.errors()[0]
    loc = tuple(e.get("loc", ()))
    field = ".".join(str(x) for x in loc)
    if e.get("type") == "extra_forbidden":
        model: Any = CompressConfig
        for part in loc[:-1]:
            f = getattr(model, "model_fields", {}).get(part)
            model = f.annotation if f is not None else None
        allowed = list(getattr(model, "model_fields", {}))
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"compress.{field}: unknown field{hint} (allowed: {', '.join(allowed)})"
    msg = str(e.get("msg", "")).removeprefix("Value error, ")
    return f"compress.{field}: {msg}"


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot be the output folder before anything is trained."""
    problem = writable_folder_problem(out)
    if problem:
        raise CompressionError(f"--out: {problem}")


def _parse_prune(spec: str | None) -> dict[str, object]:
    """``channel:0.5`` / ``unstructured:0.8`` / ``imp:0.8`` / ``none``."""
    if not spec or spec == "none":
        return {"method": "none"}
    method, _, ratio = spec.partition(":")
    out: dict[str, object] = {"method": method}
    if ratio:
        try:
            out["ratio"] = float(ratio)
        except ValueError:
            raise CompressionError(
                f"--prune: ratio {ratio!r} is not a number (e.g. channel:0.5)"
            ) from None
    return out


def _show(status: Any, console: Any, message: str) -> None:
    status.update(message)
    console.log(message)


def compress(
    model: Annotated[
        Path,
        typer.Argument(
            help="a run's best/ folder, a state dict (model.pt next to arch.json, or with "
            "--model-factory), an exported program (.pt2) or an ONNX model (.onnx); the last "
            "two are quantized only"
        ),
    ],
    data: Annotated[str, typer.Option("--data", help="dataset name (nasforge.data)")] = "mnist5k",
    data_path: Annotated[
        Path | None, typer.Option("--data-path", help="path for on-disk datasets")
    ] = None,
    prune: Annotated[
        str | None,
        typer.Option("--prune", help="channel:RATIO | unstructured:RATIO | imp:RATIO | none"),
    ] = None,
    quantize: Annotated[
        str | None, typer.Option("--quantize", help="int8 | int4 | none (default int8)")
    ] = None,
    stages: Annotated[
        str | None,
        typer.Option(
            "--stages",
            help="comma-separated registered stages, e.g. prune_channels,distill,quantize_int8",
        ),
    ] = None,
    distill_from: Annotated[
        Path | None, typer.Option("--distill-from", help="teacher model (same forms as MODEL)")
    ] = None,
    model_factory: Annotated[
        str | None,
        typer.Option(
            "--model-factory",
            help="package.module:factory returning your nn.Module; MODEL is then its state dict",
        ),
    ] = None,
    teacher_factory: Annotated[
        str | None,
        typer.Option("--teacher-factory", help="the same for --distill-from"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML with a CompressConfig (or a compress: section)"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="output directory")] = Path("compressed"),
    finetune_epochs: Annotated[int | None, typer.Option("--finetune-epochs")] = None,
    wait_quiet: Annotated[
        float,
        typer.Option(
            "--wait-quiet",
            help="before each latency pass, wait up to this many seconds for a quiet host, "
            "then measure anyway (0: measure at once)",
        ),
    ] = 0.0,
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            help="C,H,W the model takes (e.g. 3,32,32); the data is adapted to it",
        ),
    ] = None,
    plugin: Annotated[
        list[str] | None,
        typer.Option(
            "--plugin",
            help="module to import first (repeatable); it may call register_stage, "
            "register_leaf_rule, register_function_rule",
        ),
    ] = None,
) -> None:
    """Prune, fine-tune with distillation, quantize, export ONNX, verify and measure."""
    from rich.console import Console
    from rich.markup import escape

    from nasforge.compression.model_inputs import run_exported_pipeline, run_onnx_pipeline
    from nasforge.compression.pipeline import run_pipeline
    from nasforge.compression.quantization.runtime import timing_config
    from nasforge.data import load_dataset
    from nasforge.plugins import load_plugins

    console = Console(stderr=True)
    try:
        raw: dict[str, Any] = {}
        if config is not None:
            raw, yaml_factory = read_compress_yaml(config)
            model_factory = model_factory or yaml_factory

        def section(name: str, **values: object) -> None:
            raw[name] = {**dict(raw.get(name) or {}), **values}

        if prune is not None:
            section("prune", **_parse_prune(prune))
        if quantize is not None:
            section("quantize", mode=quantize)
        if stages is not None:
            raw["stages"] = [s.strip() for s in stages.split(",") if s.strip()]
        if finetune_epochs is not None:
            section("finetune", epochs=finetune_epochs)
        if input_shape is not None:
            raw["input_shape"] = input_shape
        if plugin:
            raw["plugins"] = [*list(raw.get("plugins") or []), *plugin]
        try:
            cfg = CompressConfig.model_validate(raw)
        except ValidationError as exc:  # report the first field on one line
            raise CompressionError(_validation_line(exc)) from None
        _check_out(out)
        if not wait_quiet >= 0:  # also refuses nan
            raise CompressionError(f"--wait-quiet: seconds must be >= 0, got {wait_quiet}")
        # the wait's lines ("waiting for a quiet host: ...") go to the console, above the status
        timing = replace(timing_config(cfg.target.rounds).waiting(wait_quiet), notify=console.log)
        load_plugins(cfg.plugins)
        if model.suffix == ".onnx":
            if not model.is_file():
                raise CompressionError(f"MODEL: {model} does not exist")
            ds = load_dataset(data, data_path)
            with console.status("compressing") as status:
                report = run_onnx_pipeline(
                    model, ds, cfg, out, progress=lambda m: _show(status, console, m), timing=timing
                )
        elif model.suffix == ".pt2":
            net = load_model(model)
            ds = load_dataset(data, data_path)
            with console.status("compressing") as status:
                report = run_exported_pipeline(
                    net,
                    ds,
                    cfg,
                    out,
                    f"MODEL: {model}",
                    lambda m: _show(status, console, m),
                    timing,
                )
        else:
            net = load_model(model, model_factory)
            teacher = (
                load_model(distill_from, teacher_factory, "--distill-from")
                if distill_from is not None
                else None
            )
            ds = load_dataset(data, data_path)
            with console.status("compressing") as status:
                report = run_pipeline(
                    net,
                    ds,
                    cfg,
                    out,
                    teacher=teacher,
                    progress=lambda m: _show(status, console, m),
                    timing=timing,
                )
    except (NasforgeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        console.print(f"[red]error:[/red] {escape(first)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:  # Ctrl-C: say that nothing was shipped, not a bare exit
        console.print(
            f"interrupted: nothing was shipped; {escape(str(out))} may hold a partial result "
            "(no report.html); run the command again to compress from the start",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=130) from None
    for line in table_lines(report):
        typer.echo(line)
    for w in report.warnings:
        typer.secho(f"WARNING: {w}", fg="red", err=True)
    if report.deployable is not True:
        typer.secho(report.verdict, fg="red", err=True)
    typer.echo(f"report: {out / 'report.html'}")


def table_lines(report: CompressionReport) -> list[str]:
    """The console table: one line per stage, each latency with its speed-up over the
    original as ``2.63x [2.51, 2.76]`` (95% interval) or, when the host was too busy,
    ``UNSTABLE: host busy (<reasons>)`` in capitals, never the bare ratio; then every stage
    against every earlier compressed stage (a slower one flagged), the shipped artifact,
    the layers INT8 left float and why, and the verdict."""
    lines = []
    for s in report.stages:
        parts = []
        for bs, ms in s.latency_ms.items():
            label = s.speedup_label.get(bs, f"{s.speedup.get(bs, 0):.2f}x")
            if not s.speedup_stable.get(bs, True):
                label = label.replace(UNSTABLE, UNSTABLE.upper(), 1)
            parts.append(f"b{bs} {ms:.3f} ms ({label})")
        lines.append(
            f"{s.name:24s} top-1 {s.test_accuracy * 100:6.2f}%  "
            f"{s.size_bytes / 1024:8.1f} KiB  {'  '.join(parts)}"
        )
    earlier = [c for c in report.comparisons if c.earlier != report.stages[0].name]
    if earlier:
        lines.append("against earlier stages (speed-up = earlier / this, same pass):")
        for c in earlier:
            label = c.label
            if not c.stable:
                label = label.replace(UNSTABLE, UNSTABLE.upper(), 1)
            flag = "  <- SLOWER: flagged, not shipped" if c.verdict == "slower" else ""
            lines.append(f"  {c.stage} vs {c.earlier} b{c.batch_size}: {label} ({c.verdict}){flag}")
    if report.shipped:
        lines.append(
            f"shipped: {report.shipped} -> {report.shipped_artifact} ({report.shipped_reason})"
        )
    floats = float_layers_text(report)
    if floats:
        lines.append(f"INT8: {len(floats)} layer(s) stayed float:")
        lines.extend(f"  {ln}" for ln in floats)
    lines.append(f"verdict: {report.verdict}")
    return lines
