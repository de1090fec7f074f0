"""Rung checkpoints: a promoted multi-fidelity trial continues where its lower rung stopped.

Successive halving, Hyperband and ASHA (Li et al. 2020) ask a configuration again at a larger
budget when it is promoted. Instead of training the new budget from scratch (1 + 3 + 9
epochs for a configuration promoted from 1 to 3 to 9), every rung trains on the schedule of
the *largest* budget (:attr:`RungPolicy.max_epochs`) and stops after its own epochs; at the
end of a rung the evaluator saves model, optimizer, scheduler and random state here, and the
next rung of the same configuration loads it and trains the difference (9 epochs in all).
Continuing a checkpoint of epoch ``r`` to ``3r`` is exactly the run that trains ``3r``
epochs of the largest budget's schedule.

Layout: ``<run dir>/rungs/<arch key>/e<epochs>.pt`` (``torch.save`` of plain tensors and
numbers, written to a temporary file and renamed, read with ``weights_only=True``). A
checkpoint is used only when its fingerprint matches the trial's: the exact arch, the recipe
(every ``train`` field but ``epochs``, the seed), the schedule's length, the data fraction
and the number of training samples. A missing, damaged or mismatched checkpoint (another Ray
node, ``kill -9`` mid-write, other options) means training from scratch; the last two add a
line to ``rungs/rungs.log``. Disk stays bounded: writing a configuration's checkpoint
removes its lower ones, and its top rung (nothing continues from there) removes them all.

The compressed evaluator files a trial's checkpoint under its *training* configuration (the
joint arch without its ``compress/`` labels; fingerprint likewise): the checkpoint is the
float model before compression, the same for every compression setting, so configurations
that differ only in how they are compressed continue one another's training. Each of them
claims the key (an empty ``by-<arch key>`` file); a top rung removes a shared key's
checkpoints only when no other configuration claims them, and a search's end keeps them
while any claimant is live.

Written here rather than borrowed: Ray Tune and Optuna leave checkpointing of a trial to the
user's training function; this is that function's part for the train and compressed
evaluators (:mod:`~nasforge.evaluators.rung_train`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasforge.checkpoint import load_state, save_state
from nasforge.errors import ConfigError
from nasforge.space import Arch
from nasforge.train import LoopState, TrainConfig

#: the metric of a multi-fidelity trial: the epoch its training started from (0: scratch)
BUDGET_STARTED_FROM = "budget_started_from"
#: the folder of the rung checkpoints in the run directory
RUNGS_DIR = "rungs"
#: the rung checkpoints' own log (fallbacks to scratch), in :data:`RUNGS_DIR`
RUNGS_LOG = "rungs.log"
FORMAT = 1
_NAME = re.compile(r"^e(\d+)\.pt$")
#: a claim on a shared key's checkpoints: an empty file ``by-<owner arch key>``
_CLAIM = "by-"
_OWNER = re.compile(r"^[0-9A-Za-z_.-]{1,128}$")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RungPolicy:
    """How the train evaluator trains a multi-fidelity trial (a :class:`Fidelity` budget).

    Attributes:
        max_epochs: the top rung's epochs (the strategy's ``max_epochs``): every rung's
            learning-rate schedule spans them.
        enabled: continue lower rungs' checkpoints (``automl.fidelity.continue_rungs``);
            ``False`` trains every rung from scratch on its own epochs' schedule.
    """

    max_epochs: int
    enabled: bool = True


@dataclass(frozen=True)
class RungStart:
    """A checkpoint to continue: the weights, the training loop's state, the file and the
    validation curve of the epochs it holds (empty when it was not kept)."""

    model: dict[str, torch.Tensor]
    state: LoopState
    path: Path
    curve: tuple[float, ...] = ()

    @property
    def epoch(self) -> int:
        return self.state.epoch


def fingerprint(
    arch: Arch, cfg: TrainConfig, schedule_epochs: int, fraction: float, samples: int
) -> str:
    """What must be equal for a checkpoint to continue into a trial exactly (module doc)."""
    recipe = cfg.model_dump(mode="json", exclude={"epochs"})
    text = json.dumps(
        {
            "arch": arch.to_json(),
            "recipe": recipe,
            "schedule_epochs": int(schedule_epochs),
            "fraction": round(float(fraction), 9),
            "samples": int(samples),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class RungCheckpoints:
    """The rung checkpoints of one run directory (module doc).

    Args:
        run_dir: the run directory; checkpoints go to ``run_dir/rungs``.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir) / RUNGS_DIR

    def path(self, key: str, epochs: int) -> Path:
        return self.root / key / f"e{int(epochs):04d}.pt"

    def epochs_saved(self, key: str) -> list[int]:
        """The epochs of ``key``'s checkpoints on disk, highest first."""
        folder = self.root / key
        if not folder.is_dir():
            return []
        found = (_NAME.match(p.name) for p in folder.iterdir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    def find(self, key: str, epochs: int, fp: str) -> RungStart | None:
        """The newest usable checkpoint of ``key`` at ``epochs`` or fewer with fingerprint
        ``fp``; ``None`` when there is none. A damaged or mismatched one is skipped with a
        line in the rungs log (the trial then starts lower, or from scratch)."""
        for e in self.epochs_saved(key):
            if e > epochs:
                continue
            path = self.path(key, e)
            try:
                data = load_state(path, "rung checkpoint", ("format", "model", "loop", "meta"))
                meta = data["meta"]
                if data["format"] != FORMAT or not isinstance(meta, dict):
                    raise ConfigError(f"rung checkpoint {path}: format {data['format']!r}")
                if meta.get("fingerprint") != fp:
                    self.note(f"{path}: trained with other options or data; not continued")
                    continue
                state = LoopState.from_dict(data["loop"])
                if state.epoch != e or not isinstance(data["model"], dict):
                    raise ConfigError(f"rung checkpoint {path}: holds epoch {state.epoch}")
            except (ConfigError, KeyError, TypeError, ValueError) as exc:
                self.note(f"{_first_line(exc)}; not continued")
                continue
            kept = meta.get("curve")
            curve = (
                tuple(float(v) for v in kept) if isinstance(kept, list) and len(kept) == e else ()
            )
            return RungStart(data["model"], state, path, curve)
        return None

    def save(
        self,
        key: str,
        model: torch.nn.Module,
        state: LoopState,
        fp: str,
        keep: bool = True,
        curve: Sequence[float] = (),
    ) -> Path | None:
        """Save ``model`` and ``state`` as ``key``'s checkpoint at ``state.epoch`` (with the
        validation ``curve`` of its epochs, so a continued trial's curve starts at epoch 1) and
        remove its lower ones; ``keep=False`` (the top rung) saves nothing and removes them
        all."""
        if not keep:
            self.discard(key)
            return None
        path = self.path(key, state.epoch)
        payload: dict[str, Any] = {
            "format": FORMAT,
            "model": model.state_dict(),
            "loop": state.to_dict(),
            "meta": {
                "fingerprint": fp,
                "epochs": state.epoch,
                "saved": time.time(),
                "curve": [float(v) for v in curve],
            },
        }
        save_state(payload, path)
        self.discard(key, below=state.epoch)
        return path

    def discard(self, key: str, below: int | None = None) -> None:
        """Remove ``key``'s checkpoints (those under ``below`` epochs only, when given) and
        any temporary file a killed writer left."""
        folder = self.root / key
        if not folder.is_dir():
            return
        for p in folder.iterdir():
            m = _NAME.match(p.name)
            stale = p.name.endswith(".tmp") or (
                m is not None and (below is None or int(m.group(1)) < below)
            )
            stale = stale or (below is None and p.name.startswith(_CLAIM))
            if stale:
                p.unlink(missing_ok=True)
        if below is None:
            try:
                folder.rmdir()
            except OSError:  # a concurrent writer put a file there: keep it
                pass

    def discard_except(self, keep: set[str]) -> int:
        """Remove the checkpoints of every configuration not in ``keep`` (arch keys): the
        search's end, for configurations the strategy has finished with. Returns how many
        configurations' checkpoints were removed."""
        if not self.root.is_dir():
            return 0
        gone = 0
        for folder in self.root.iterdir():
            if folder.is_dir() and folder.name not in keep and not self.owners(folder.name) & keep:
                self.discard(folder.name)
                gone += 1
        return gone

    def claim(self, key: str, owner: str) -> None:
        """Mark ``key``'s checkpoints as used by configuration ``owner`` (an arch key): a
        key several configurations share (the compressed evaluator files its checkpoints
        under the training configuration, without the compression settings) is kept at a
        search's end while any of its owners is live (:meth:`discard_except`)."""
        if not _OWNER.match(owner) or not (self.root / key).is_dir():
            return
        try:
            (self.root / key / f"{_CLAIM}{owner}").touch()
        except OSError:  # a vanished folder (another owner's top rung): nothing to claim
            pass

    def owners(self, key: str) -> set[str]:
        """The configurations that claimed ``key``'s checkpoints (:meth:`claim`)."""
        try:
            names = [p.name for p in (self.root / key).iterdir()]
        except OSError:  # no such folder (or it vanished meanwhile): no claims
            return set()
        return {n[len(_CLAIM) :] for n in names if n.startswith(_CLAIM)}

    def release(self, key: str, owner: str) -> None:
        """``owner`` is done with ``key``'s checkpoints (its top rung): drop its claim, and
        the checkpoints too when no other configuration claims them."""
        if _OWNER.match(owner):
            (self.root / key / f"{_CLAIM}{owner}").unlink(missing_ok=True)
        if not self.owners(key):
            self.discard(key)

    def note(self, message: str) -> None:
        """One line in ``rungs/rungs.log`` (and Python's log): why a checkpoint was not
        continued. The run's progress log is the driver's; workers write here."""
        _log.warning("%s", message)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with open(self.root / RUNGS_LOG, "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} {message}\n")
        except OSError:  # a read-only or vanished run dir: the Python log has it
            pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text
