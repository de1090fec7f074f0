"""Failed candidates are recorded with their error and the search goes on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from nasforge.experiment.config import parse_config
from nasforge.experiment.executors import ProcessExecutor, evaluate_payload
from nasforge.experiment.runner import Experiment
from nasforge.experiment.store import TrialStore
from nasforge.objectives import Objective
from nasforge.space import Arch
from nasforge.spaces import create_space


def test_out_of_memory_candidate_is_a_failed_trial_not_a_crash() -> None:
    cfg = parse_config(
        {
            "data": {"name": "digits"},
            "space": {"name": "mobile", "options": {"head_features": 4_000_000_000}},
        }
    )
    arch = create_space("mobile", (1, 8, 8), 10).sample(np.random.default_rng(0))
    out = evaluate_payload(
        {
            "config_json": json.dumps(cfg.model_dump(mode="json")),
            "arch_json": arch.to_json(),
            "run_dir": None,
        }
    )
    assert not out["ok"]
    assert "memory" in out["error"].lower()


def test_killed_worker_is_recorded_and_pool_restarts(tmp_path: Path) -> None:
    cfg = parse_config({"data": {"name": "digits"}, "train": {"epochs": 200}})
    exp = Experiment(cfg, tmp_path / "run", console=Console(quiet=True), progress=False)
    store = TrialStore(tmp_path / "t.db")
    arch = create_space("mobile", (1, 8, 8), 10).sample(np.random.default_rng(0))
    executor = ProcessExecutor(1)
    try:
        tid = store.add_trial(arch)
        fut = executor.submit(
            {
                "config_json": json.dumps(cfg.model_dump(mode="json")),
                "arch_json": arch.to_json(),
                "run_dir": None,
            }
        )
        deadline = time.time() + 60
        while not executor._pool._processes and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        for proc in list(executor._pool._processes.values()):
            proc.kill()
        score = exp._record(store, fut, tid, Arch(dict(arch)), Objective(), executor)
        assert score is None
        rec = store.trial(tid)
        assert rec.state == "failed" and "worker process died" in (rec.error or "")
        # the restarted pool evaluates the next trial (a tiny one: only the pool is tested)
        tiny = {"stages": [[8, 1, 1]], "kernels": [3], "expands": [1], "se": [False]}
        cfg2 = parse_config(
            {
                "data": {"name": "digits"},
                "space": {"name": "mobile", "options": tiny},
                "train": {"epochs": 1},
                "latency": {"mode": "flops"},
            }
        )
        small = create_space("mobile", (1, 8, 8), 10, **tiny).sample(np.random.default_rng(0))
        out = executor.submit(
            {
                "config_json": json.dumps(cfg2.model_dump(mode="json")),
                "arch_json": small.to_json(),
                "run_dir": None,
            }
        ).result(timeout=600)
        assert out["ok"], out
    finally:
        executor.shutdown()
        store.close()


def test_resume_runs_interrupted_trials_again_first_as_it_says(tmp_path: Path) -> None:
    import io

    import storefaults as sf

    cfg = sf.make_config(tmp_path, 4)
    sf.run_search(cfg)
    db = cfg.run_dir / "trials.db"
    space = create_space("mobile", (3, 32, 32), 10, **sf.SPACE_OPTIONS)
    with TrialStore(db, create=False) as s:
        done = {t.key for t in s.trials()}
        rng = np.random.default_rng(7)
        stopped = next(a for a in (space.sample(rng) for _ in range(100)) if a.key not in done)
        s.add_trial(stopped)  # left running by a killed process
    more = sf.make_config(tmp_path, 6)  # search.trials may grow on resume
    buf = io.StringIO()
    exp = Experiment(more.config, more.run_dir, console=Console(file=buf), progress=False)
    exp.run(resume=True, final=False)
    assert "1 interrupted trial(s) will be run again first" in buf.getvalue()
    with TrialStore(db, create=False) as s:
        trials = s.trials()
        new = [t for t in trials if t.id > 5]
        assert new[0].key == stopped.key and new[0].state == "complete"
        assert s.count(("complete",)) == 6 and len({t.key for t in trials}) == 6
