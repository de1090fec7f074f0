"""SQLite trial store: round trip, concurrent writers, interruption, strategy replay."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np

from nasforge.experiment.store import TrialStore
from nasforge.space import Arch
from nasforge.spaces import create_space
from nasforge.strategies import EvolutionStrategy


def test_round_trip_and_states(tmp_path: Path) -> None:
    with TrialStore(tmp_path / "t.db") as s:
        a = Arch({"x": 1})
        tid = s.add_trial(a)
        assert s.trial(tid).state == "running"
        s.finish_trial(tid, "complete", {"val_acc": 0.5, "bad": float("nan")}, (0.5, -2.0), 1.5)
        t = s.trial(tid)
        assert t.arch == a and t.score == (0.5, -2.0) and t.metrics["val_acc"] == 0.5
        assert np.isnan(t.metrics["bad"]) and t.cost_seconds == 1.5
        t2 = s.add_trial(Arch({"x": 2}))
        assert s.mark_interrupted() == 1 and s.trial(t2).state == "interrupted"
        assert s.finished_by_key(a.key).id == tid
        s.set_meta("k", {"a": [1, 2]})
        assert s.get_meta("k") == {"a": [1, 2]}
        assert s.total_cost_seconds() == 1.5


def _writer(path: str, worker: int, n: int) -> None:
    with TrialStore(path) as s:
        for i in range(n):
            tid = s.add_trial(Arch({"w": worker, "i": i}), worker=str(worker))
            s.finish_trial(tid, "complete", {"val_acc": i / n}, i / n, 0.01)


def test_several_processes_write_one_store(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    TrialStore(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 50)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)  # generous: spawning and importing torch is slow on a loaded host
        assert p.exitcode == 0
    with TrialStore(path) as s:
        assert s.count(("complete",)) == 150
        assert len({t.key for t in s.trials()}) == 150


def test_store_replay_equals_live_strategy_state(tmp_path: Path) -> None:
    space = create_space("mobile", (1, 8, 8), 10)
    live = EvolutionStrategy(space, seed=3, population=5, tournament=2)
    with TrialStore(tmp_path / "t.db") as s:
        for i in range(12):
            arch = live.ask(1)[0]
            tid = s.add_trial(arch)
            score = float(np.sin(i))
            s.finish_trial(tid, "complete", {"val_acc": score}, score)
            live.tell(arch, score)
        replayed = EvolutionStrategy(space, seed=3, population=5, tournament=2)
        replayed.replay((t.arch, t.score) for t in s.trials(("complete",), order="finished"))
    assert [a.key for a, _ in replayed.population] == [a.key for a, _ in live.population]
    assert replayed.asked == live.asked
    state = json.loads(json.dumps(live.state_dict()))
    restored = EvolutionStrategy(space, seed=0, population=5, tournament=2)
    restored.load_state_dict(state)
    assert [a.key for a in restored.ask(3)] == [a.key for a in live.ask(3)]
