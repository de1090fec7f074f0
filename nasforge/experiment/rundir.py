"""One run directory's preparation, shared by ``nasforge search``, ``scale`` and ``ofa train``.

Every command that writes ``runs/<name>/`` does the same before its first piece of work, and
in the same order: take the run's lock (one writer, :class:`~nasforge.experiment.lock.RunLock`)
with SIGINT/SIGTERM stopping the run (:func:`~nasforge.experiment.interrupt.stop_on_signals`);
refuse a directory that holds another command's run, a run of this name without
``--resume``, nothing to resume with it, a trial store that vanished while its journal or
backups remain (damage, not a fresh start) and, on resume, a config that differs from the one
the run started with in what the results depend on; refuse a damaged store before any work
(never rewriting it); then create the directory and write the validated config as run; open
the progress log and the store, and record where the run runs. :class:`RunKind` says what
differs between the commands (the file that marks a run, the part of the config a resume must
keep, the words of the messages); :class:`RunDir` does the rest, once, so the three commands
refuse alike and say it alike.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from nasforge.errors import ConfigError
from nasforge.experiment.config import ExperimentConfig, load_config
from nasforge.experiment.interrupt import stop_on_signals
from nasforge.experiment.lock import RunLock
from nasforge.experiment.progress import LOG_NAME, RunLog
from nasforge.experiment.store import StoreError, TrialStore, journal_path, read_journal
from nasforge.hardware.fingerprint import host_info

#: the trial store of a search (and of an OFA training's epoch records)
STORE_NAME = "trials.db"
#: the results of a compound-scaling run
SCALING_RESULTS = "scaling.json"
CONFIG_NAME = "config.yaml"


@dataclass(frozen=True)
class RunKind:
    """What one command's run directory is (the rest of the preparation is the same).

    Attributes:
        command: the CLI words after ``nasforge`` (``"search"``, ``"scale"``,
            ``"ofa train"``): the lock's purpose and the resume command's.
        marker: the file whose presence says the run exists (``trials.db``, ``scaling.json``);
            with ``--resume`` it must be there, without it it must not.
        kept: the part of a config a resume must keep (compared between the saved config and
            the new one; anything else may change on resume).
        kept_text: how the refusal names that part, after "differs from the one this run
            started with" (``"in data, space, seed"``).
        noun: how the refusals name such a run (``"run"``, ``"scaling run"``).
        others: ``(file, what)`` of other commands' runs this one refuses to share a
            directory with (``("trials.db", "a search run")``).
    """

    command: str
    marker: str
    kept: Callable[[ExperimentConfig], Any]
    kept_text: str
    noun: str = "run"
    others: tuple[tuple[str, str], ...] = ()

    @property
    def has_store(self) -> bool:
        """Whether the run's marker is a trial store (checked for loss and damage)."""
        return self.marker == STORE_NAME


class RunDir:
    """The run directory of one command's run (see the module docstring).

    Args:
        path: the directory (``runs_dir/name`` unless the user chose another).
        config: the validated config the run is started or resumed with.
        kind: which command's run it is.
    """

    def __init__(self, path: str | Path, config: ExperimentConfig, kind: RunKind) -> None:
        self.path = Path(path)
        self.cfg = config
        self.kind = kind

    @property
    def config_file(self) -> Path:
        """``<run_dir>/config.yaml``: the validated config, as run."""
        return self.path / CONFIG_NAME

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock, with SIGINT/SIGTERM raising
        :class:`~nasforge.experiment.interrupt.SearchInterrupted`, for the block.

        Raises:
            RunLocked: another process writes this run (nothing was touched).
        """
        lock = RunLock(self.path, self.kind.command).acquire()
        try:
            with stop_on_signals():
                yield
        finally:
            lock.release()

    def prepare(self, resume: bool) -> None:
        """Check the directory for a new run (``resume=False``) or a resume, then create it and
        write the config (atomically: a kill leaves the old file or the new one). Call it with
        the lock held (:meth:`locked`).

        Raises:
            ConfigError: another command's run is there; a run exists (without ``resume``);
                nothing to resume (with it); the config differs in :attr:`RunKind.kept`.
            StoreError: the store is missing while its journal or backups are there, or (on
                resume) it is damaged; nothing is rewritten.
        """
        kind, marker = self.kind, self.path / self.kind.marker
        for name, what in kind.others:
            if (self.path / name).exists():
                raise ConfigError(
                    f"{self.path}: holds {what} ({name}); give the {kind.noun} another name "
                    "(--name or name:)"
                )
        if kind.has_store:
            self._check_store_not_lost(marker)
        if resume:
            if not marker.is_file():
                raise ConfigError(
                    f"{self.path}: nothing to resume (no {kind.marker}); run without --resume"
                )
            saved = self.config_file
            if saved.is_file() and kind.kept(load_config(saved)) != kind.kept(self.cfg):
                raise ConfigError(
                    f"{saved}: the config differs from the one this run started with "
                    f"{kind.kept_text}; use a new run name"
                )
        elif marker.exists():
            raise ConfigError(
                f"{self.path}: a {kind.noun} with this name exists; pass --resume to continue "
                "it or choose another name"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_suffix(".yaml.tmp")
        tmp.write_text(self.cfg.to_yaml())
        os.replace(tmp, self.config_file)
        if resume and kind.has_store:  # a damaged store is refused before any work
            TrialStore(marker, create=False).close()

    def _check_store_not_lost(self, db: Path) -> None:
        lost = not db.exists() and (
            read_journal(journal_path(db)) or (self.path / "backups").is_dir()
        )
        if lost:  # a store that vanished is damage, not a fresh start
            raise StoreError(
                f"{db}: the store is missing but the run's journal or backups are there; "
                f"recover with `nasforge repair {self.path}`, or choose another run name"
            )

    def open_store(self, resume: bool) -> TrialStore:
        """The run's trial store: created for a new run, opened (checked) on resume."""
        return TrialStore(self.path / STORE_NAME, create=not resume)

    @staticmethod
    def record_start(store: TrialStore, dataset: str, inputs: dict[str, Any], event: str) -> None:
        """Mark the run running and record where it runs: the host, the data, the networks'
        real input (``{"shape": [...], "classes": n}``) and a ``start`` event (the report and
        the dashboard read them)."""
        store.set_meta("status", "running")
        store.set_meta("hardware", host_info())
        store.set_meta("dataset", dataset)
        store.set_meta("input", inputs)
        store.log_event("start", event)

    def open_log(self, console: Console, show: bool = True) -> RunLog:
        """The run's ``progress.log`` (appended to: a resumed run continues it)."""
        return RunLog(self.path / LOG_NAME, console, show)

    def resume_command(self, config_path: str | Path | None = None) -> str:
        """The command that continues this run: ``config_path`` (default: the config saved in
        the run directory) with ``--resume``, and ``--runs-dir`` / ``--name`` where the run
        directory is not the config's ``runs_dir/name``."""
        config = Path(config_path) if config_path is not None else self.config_file
        cmd = ["nasforge", *self.kind.command.split(), str(config), "--resume"]
        if Path(self.cfg.runs_dir) / self.cfg.name != self.path:
            cmd += ["--runs-dir", str(self.path.parent)]
            if self.path.name != self.cfg.name:
                cmd += ["--name", self.path.name]
        return shlex.join(cmd)


__all__ = ["CONFIG_NAME", "SCALING_RESULTS", "STORE_NAME", "RunDir", "RunKind"]
