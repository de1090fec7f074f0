"""The one way a command line refuses bad input: each line of the error on stderr as
``error: ...`` (escaped: ``[...]`` in user text is text, not markup), then exit code 2.
Shared by ``nasforge`` and its sub-apps (``latency``, ``ofa``, ``compress``), with the checks
they make before any work starts (output paths, option names)."""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from nasforge.errors import NasforgeError

err = Console(stderr=True)


def fail(exc: BaseException) -> NoReturn:
    """Print ``exc`` as one ``error:`` line per line of its text and exit with code 2."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        err.print(f"[red]error:[/] {escape(line)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def _cannot_write_in(folder: Path) -> str | None:
    """Why no file can be created in the existing ``folder`` (probed with a temporary file
    that is removed at once: permission bits say nothing for root, or on /proc, a read-only
    mount or a full disk), or ``None``."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def writable_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot become an output folder (it is a file, or its nearest existing
    parent is a file or not writable), or ``None``; creates nothing, so a command refused
    later for another reason leaves no empty folder behind."""
    if folder.exists():
        if not folder.is_dir():
            return f"{folder} is a file; give a folder to write into"
        why = _cannot_write_in(folder)
        return f"cannot write in {folder} ({why})" if why else None
    parent = folder.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {folder}: {parent} is a file"
    why = _cannot_write_in(parent)
    return f"cannot create {folder} in {parent} ({why})" if why else None


def check_run_dir(run_dir: Path, resume: bool = False) -> None:
    """``NasforgeError`` for a ``--resume`` of a run directory that does not exist (refused
    before anything, so a mistyped name or ``--runs-dir`` leaves no empty folder behind), and
    when the run directory cannot be created or written (``runs_dir`` or ``--runs-dir`` names
    a file, a read-only or impossible place), before anything runs."""
    if resume and not run_dir.is_dir():
        raise NasforgeError(
            f"{run_dir}: nothing to resume (no such run directory); check the config's name, "
            "--name and --runs-dir, or run without --resume to start it"
        )
    problem = writable_folder_problem(run_dir)
    if problem:
        raise NasforgeError(
            f"runs_dir: {problem}; pass --runs-dir (or set runs_dir:) to a folder you can write"
        )


def writable_file_problem(file: Path) -> str | None:
    """Why ``file`` cannot be written as an output file (it is a folder, or its folder cannot
    be created), or ``None``; creates nothing."""
    if file.is_dir():
        return f"{file} is a folder; give a file name (e.g. {file / 'table.json'})"
    if file.exists() and not os.access(file, os.W_OK):
        return f"{file} is not writable"
    return writable_folder_problem(file.absolute().parent)


def check_options(
    field: str,
    kind: str,
    options: Iterable[str],
    lookup: Callable[[], Callable[..., Any]],
    reserved: tuple[str, ...],
    sep: str = ".",
) -> None:
    """``ValueError`` naming the first key of ``options`` that the registered factory does not
    take (``strategy.options.populaton: evolution has no option 'populaton'; did you mean
    'population'?``), at load time so ``doctor`` and ``search`` say it in the user's terms
    instead of a Python ``__init__() got an unexpected keyword argument``.

    Nothing is checked when the name is not registered (that error is reported where the name
    is resolved) or when the factory takes ``**kwargs``."""
    keys = list(options)
    if not keys:
        return
    try:
        sig = inspect.signature(lookup())
    except (NasforgeError, TypeError, ValueError, ImportError):
        return
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [
        p.name
        for p in params
        if p.name not in reserved
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in keys:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{field}{sep}{key}: {kind} has no option {key!r}{hint} "
                f"(accepted: {', '.join(accepted) or 'none'})"
            )
