"""``nasforge compress MODEL``: the typer command (mounted by the lead on the main app).

``MODEL`` is a file written by ``torch.save``: either a full pickled ``nn.Module`` or a dict
with the module under ``"model"`` (what the search writes to ``best/model.pt``). Loading
unpickles code, so only load files you trust. Bad input exits with code 2 and one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError

from nasforge.compression.config import CompressConfig
from nasforge.compression.errors import CompressionError
from nasforge.errors import NasforgeError


def load_model(path: str | Path) -> torch.nn.Module:  # type: ignore[name-defined]  # noqa: F821
    """Load a full module saved with ``torch.save(model)`` or ``torch.save({"model": model})``."""
    import pickle

    import torch
    from torch import nn

    p = Path(path)
    if not p.is_file():
        raise CompressionError(f"MODEL: {p} does not exist")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=False)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        AttributeError,
        ModuleNotFoundError,
    ) as exc:
        raise CompressionError(
            f"MODEL: {p} is not a torch.save file ({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]
    if not isinstance(obj, nn.Module):
        raise CompressionError(
            f"MODEL: {p} holds a {type(obj).__name__}, not a module; save the full model with "
            "torch.save(model, path) or torch.save({'model': model}, path) (a bare state_dict "
            "has no architecture)"
        )
    return obj.eval()


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
        Path, typer.Argument(help="torch.save'd model (full module or {'model': module})")
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
        Path | None, typer.Option("--distill-from", help="teacher model file")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML with a CompressConfig (or a compress: section)"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="output directory")] = Path("compressed"),
    finetune_epochs: Annotated[int | None, typer.Option("--finetune-epochs")] = None,
) -> None:
    """Prune, fine-tune with distillation, quantize, export ONNX, verify and measure."""
    from rich.console import Console

    from nasforge.compression.pipeline import run_pipeline
    from nasforge.data import load_dataset

    console = Console(stderr=True)
    try:
        raw: dict[str, Any] = {}
        if config is not None:
            if not config.is_file():
                raise CompressionError(f"--config: {config} does not exist")
            loaded = yaml.safe_load(config.read_text()) or {}
            if not isinstance(loaded, dict):
                raise CompressionError(f"--config: {config} is not a YAML mapping")
            raw = dict(loaded.get("compress", loaded))

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
        try:
            cfg = CompressConfig.model_validate(raw)
        except ValidationError as exc:  # report the first field on one line
            e = exc.errors()[0]
            field = ".".join(str(x) for x in e.get("loc", ()))
            raise CompressionError(f"compress.{field}: {e.get('msg')}") from None
        net = load_model(model)
        teacher = load_model(distill_from) if distill_from is not None else None
        ds = load_dataset(data, data_path)
        with console.status("compressing") as status:
            report = run_pipeline(
                net,
                ds,
                cfg,
                out,
                teacher=teacher,
                progress=lambda m: _show(status, console, m),
            )
    except (NasforgeError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    for s in report.stages:
        lat = "  ".join(
            f"b{bs} {ms:.3f} ms ({s.speedup.get(bs, 0):.2f}x)" for bs, ms in s.latency_ms.items()
        )
        typer.echo(
            f"{s.name:24s} top-1 {s.test_accuracy * 100:6.2f}%  "
            f"{s.size_bytes / 1024:8.1f} KiB  {lat}"
        )
    for w in report.warnings:
        typer.secho(f"WARNING: {w}", fg="red", err=True)
    typer.echo(f"report: {out / 'report.html'}")
