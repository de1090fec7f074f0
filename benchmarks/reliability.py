"""Reliability of the trial store under injected faults: how many fault points, what survived.

Runs the harness of tests/test_store_faults.py (tests/storefaults.py) at full size:

- power loss at every write of a search (each store write and journal append; the on-disk
  files copied as they are at that point, shared memory dropped), and at each point two torn
  variants: the WAL cut inside its last frames, the journal cut inside its last line;
- a store write (trial insert, trial result) failing with ``disk I/O error`` at the n-th
  statement, and the journal append failing with ENOSPC, for every n of a run;
- a full disk: the search in a real process under RLIMIT_FSIZE at several limits;
- a damaged store after the run: zero-length, garbage, header overwritten, half-truncated,
  deleted.

After each fault the run is resumed (``--resume``); outcomes: survived (continued with every
trial that had finished, none evaluated twice), refused (a one-line error naming
``nasforge repair``; after repair, every finished trial is back), lost, silent restart.
Also prints what durability costs per trial (synced journal, WAL commits) against the store
with no journal, in the same process.

    python benchmarks/reliability.py [--trials 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import storefaults as sf  # noqa: E402
from goals import goal  # noqa: E402  (benchmarks/goals.py: one GOAL line format with the host)

from nasforge.experiment.store import TrialStore  # noqa: E402
from nasforge.space import Arch  # noqa: E402

FULL_DISK = """
import resource, sys
from pathlib import Path
import storefaults as sf
from nasforge.experiment.store import StoreError
cfg = sf.make_config(Path(sys.argv[1]), int(sys.argv[3]))
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    sf.run_search(cfg)
except StoreError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""


def power_loss(root: Path, trials: int, tally: sf.Tally) -> None:
    with sf.capture_points(root / "live" / "f", root / "snaps") as points:
        sf.run_search(sf.make_config(root / "live", trials))
    for p in points:
        sf.resume_and_classify(
            p.snapshot, p.truth, trials, tally, f"power loss ({p.variant})", root / "r"
        )


def failing_writes(root: Path, trials: int, tally: sf.Tally) -> None:
    for n in range(1, trials + 1):
        for i, (kind, fault) in enumerate(
            (
                ("trial insert fails", sf.failing_statement(n, "INSERT INTO trials")),
                ("trial result write fails", sf.failing_statement(n, "UPDATE trials SET state=?")),
                ("journal append fails (ENOSPC)", sf.failing_journal(n)),
            )
        ):
            where = root / f"{i}-{n}"
            sf.inject(kind, fault, where, trials, tally)


def full_disk(root: Path, trials: int, tally: sf.Tally) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), *sys.path])}
    for kb in (64, 128, 256, 512, 1024):
        where = root / f"disk-{kb}"
        res = subprocess.run(
            [sys.executable, "-c", FULL_DISK, str(where), str(kb * 1024), str(4 * trials)],
            capture_output=True,
            text=True,
            env=env,
        )
        if res.returncode == 0:
            tally.add("full disk", "no_fault")
            continue
        if res.returncode != 2 or len(res.stderr.strip().splitlines()) != 1:
            tally.add("full disk", "unclear_error", res.stderr[-300:])
            continue
        truth = sf.finished_truth(where / "f" / "trials.db")
        snap = root / f"disk-{kb}-snap"
        shutil.copytree(where / "f", snap)
        sf.resume_and_classify(snap, truth, 4 * trials, tally, "full disk", root / f"dr-{kb}")


def damaged(root: Path, trials: int, tally: sf.Tally) -> None:
    for name, damage in sf.damage_points().items():
        where = root / f"dmg-{name}"
        cfg = sf.make_config(where, trials)
        sf.run_search(cfg)
        truth = sf.finished_truth(where / "f" / "trials.db")
        damage(where / "f" / "trials.db")
        snap = root / f"dmg-{name}-snap"
        shutil.copytree(where / "f", snap)
        sf.resume_and_classify(snap, truth, trials, tally, f"damaged store ({name})", root / "d")


def write_cost(root: Path, n: int = 300) -> tuple[float, float]:
    """Seconds per trial (insert + result) for the durable store and for a NORMAL/no-journal
    one, same process, same disk."""
    out = []
    for durable in (True, False):
        with TrialStore(root / f"cost-{durable}.db") as s:
            if not durable:
                s._db.execute("PRAGMA synchronous=NORMAL")
                s._journal = None
            t0 = time.perf_counter()
            for i in range(n):
                tid = s.add_trial(Arch({"i": i}))
                s.finish_trial(tid, "complete", {"val_acc": 0.5}, 0.5, 0.0)
            out.append((time.perf_counter() - t0) / n)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="budget of each faulted search")
    args = parser.parse_args()
    tally = sf.Tally()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        power_loss(root / "pl", args.trials, tally)
        failing_writes(root / "fw", args.trials, tally)
        full_disk(root / "fd", args.trials, tally)
        damaged(root / "dm", args.trials, tally)
        durable, plain = write_cost(root)
    print(f"{'fault kind':46s} {'points':>6s} {'survived':>9s} {'refused':>8s} {'other':>6s}")
    for kind, c in tally.by_kind.items():
        other = sum(v for k, v in c.items() if k not in ("survived", "refused"))
        print(f"{kind:46s} {sum(c.values()):6d} {c['survived']:9d} {c['refused']:8d} {other:6d}")
    o = tally.outcomes
    print(
        f"TOTAL: {tally.points} fault points; {o['survived']} survived with every finished "
        f"trial; {o['refused']} refused with a one-line error, all finished trials back after "
        f"repair; {o['lost']} lost a trial; {o['silent_restart']} silent restarts; "
        f"{o['unclear_error']} unclear errors; {o['no_fault']} where the fault did not fire"
    )
    for f in tally.failures:
        print("FAILURE", f)
    print(
        f"durability cost per trial: {durable * 1e3:.2f} ms (synced journal + WAL commits) vs "
        f"{plain * 1e3:.2f} ms (no journal); {time.time() - t0:.0f}s total"
    )
    lost = o["lost"] + o["silent_restart"]
    goal(
        "no finished trial lost, no silent restart",
        lost == 0 and not tally.failures,
        f"{o['lost']} lost, {o['silent_restart']} silent restarts in {tally.points} fault points",
        "0 and 0",
    )
    goal(
        "every refusal is a clear error",
        o["unclear_error"] == 0,
        f"{o['unclear_error']} unclear errors",
        "0",
    )


if __name__ == "__main__":
    main()
