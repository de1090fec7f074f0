"""The one way a command line refuses bad input: each line of the error on stderr as
``error: ...`` (escaped: ``[...]`` in user text is text, not markup), then exit code 2.
Shared by ``nasforge`` and its sub-apps (``latency``, ``ofa``)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)


def fail(exc: BaseException) -> NoReturn:
    """Print ``exc`` as one ``error:`` line per line of its text and exit with code 2."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        err.print(f"[red]error:[/] {escape(line)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)
