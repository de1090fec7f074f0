"""Progress that shows in a terminal AND in a log file.

A live rich bar only repaints a terminal: with output going to a file (CI, ``nohup``, a log)
it prints nothing until the run ends. :class:`RunLog` therefore appends one plain,
timestamped line per event (a finished trial, a final-training epoch) to
``<run_dir>/progress.log`` always, and echoes the line on the console when the console is not
a terminal. On a terminal the caller shows its rich bar instead (:attr:`RunLog.live`).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.markup import escape

LOG_NAME = "progress.log"


class RunLog:
    """Plain progress lines for a run directory.

    Args:
        path: the log file; lines are appended (a resumed run continues the same file).
        console: where lines are echoed when it is not a terminal.
        show: ``False`` (``--quiet``) writes the file only, never the console.
    """

    def __init__(self, path: Path, console: Console, show: bool = True) -> None:
        self.path = path
        self.console = console
        self.show = show
        self._fh = path.open("a", encoding="utf-8", buffering=1)  # line-buffered: tail -f works

    @property
    def live(self) -> bool:
        """Whether the caller should show a live rich bar (a terminal, progress wanted)."""
        return self.show and self.console.is_terminal

    @property
    def echo(self) -> bool:
        """Whether :meth:`line` also prints to the console (not a terminal, progress wanted)."""
        return self.show and not self.console.is_terminal

    def line(self, message: str, echo: bool = True) -> None:
        """Append ``message`` with a UTC timestamp to the log; print it on the console where
        :attr:`echo` (``echo=False``: the caller printed it already)."""
        if not self._fh.closed:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._fh.write(f"{stamp} {message}\n")
        if echo and self.echo:
            self.console.print(escape(message), highlight=False, soft_wrap=True)

    def say(self, message: str) -> None:
        """A message for the user: printed on the console (terminal or not) and logged."""
        self.console.print(escape(message), highlight=False)
        self.line(message, echo=False)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
