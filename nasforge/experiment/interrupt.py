"""Stopping a run on SIGINT (Ctrl-C) and SIGTERM (``kill``, ``timeout``, systemd, CI).

While :func:`stop_on_signals` is active in the main thread, either signal raises
:class:`SearchInterrupted` there, at once: the running trials are not waited for. The
experiment then stops its workers, records the running trials as ``interrupted`` (a
``--resume`` runs them again first), records the run as interrupted, prints one line with
what was saved and the resume command, and re-raises; the CLI exits with 128 + the signal
number (130 for SIGINT, 143 for SIGTERM), the shell convention. A further signal during that
clean-up is ignored, so the clean-up finishes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SearchInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal (a :class:`KeyboardInterrupt`, so code that handles
    Ctrl-C handles it too).

    Attributes:
        signum: the signal received.
        message: set by the experiment once it saved the run: what was saved and the resume
            command (empty before).
    """

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.message = message

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Raise :class:`SearchInterrupted` in the main thread on SIGINT or SIGTERM (once; later
    signals are ignored until the block exits). Outside the main thread this does nothing
    (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise SearchInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
