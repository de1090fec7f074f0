"""One writer per run: an exclusive OS lock on ``<run_dir>/.lock``.

``nasforge search`` (new or ``--resume``) and ``nasforge repair`` take the lock before they
write a run's store and hold it until they finish. The lock is an ``fcntl.flock`` on an open
file, so the kernel drops it when the holding process dies for any reason (``kill -9``,
out of memory, power loss): a stale lock never blocks a later ``--resume``. The file records
the holder's PID and command, which a second process names in its one-line refusal.

Worker processes of the run (process pool, Ray tasks) do not take the lock and do not
write the store: they return results to the one owner. The lock's descriptor is not
inherited by spawned children (Python opens files non-inheritable), so an orphaned worker
can never keep a run locked.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

from nasforge.errors import NasforgeError

LOCK_NAME = ".lock"


class RunLocked(NasforgeError):
    """Another live process holds the run's lock (the message names its PID)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class RunLock:
    """The exclusive lock of one run directory, held from :meth:`acquire` to :meth:`release`.

    Args:
        run_dir: the run directory (created if missing).
        purpose: what the holder does, recorded for the refusal message (``search``,
            ``repair``).
    """

    def __init__(self, run_dir: str | Path, purpose: str = "search") -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.purpose = purpose
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Self:
        """Take the lock without waiting.

        Raises:
            RunLocked: another process holds it; the message names the PID and what to do.
        """
        if self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            pid = holder[0] if holder else None
            who = f"process {pid} ({holder[1]})" if holder else "another process"
            raise RunLocked(
                f"{self.run_dir} is in use by {who}: one process writes a run at a time; "
                "wait for it to finish or stop it, then retry",
                pid,
            ) from None
        # the holder's identity, for the message a second process prints
        record = f"{os.getpid()} {self.purpose} {' '.join(sys.argv[:3])}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process ends)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:  # a full or read-only disk must not hide the real error
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> tuple[int, str] | None:
    """``(pid, what)`` recorded by the holder, or ``None`` if unreadable (being written)."""
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        pid, _, what = text.partition(" ")
        return int(pid), what or "nasforge"
    except (OSError, ValueError):
        return None
