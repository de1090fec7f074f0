"""The ``ray`` executor on a real multi-node Ray cluster on this machine
(:class:`~nasforge.testing.raycluster.LocalRayCluster`: a head and a worker node started with
``ray start`` on loopback addresses): trials spread over both nodes, a lost node's trial runs
again elsewhere, a ``kill -9``'d driver resumes against the still-running cluster; and the
config checks of the Ray fields.

The searches run as driver subprocesses (``python -m nasforge search``) with the cluster's
token in their environment, as a user's driver on a machine of the cluster would.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nasforge.experiment.store import TrialStore

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'nasforge[ray]')")

from nasforge.testing.raycluster import LocalRayCluster, free_port  # noqa: E402

TRIALS = 6


def write_config(tmp_path: Path, name: str, address: str, trials: int = TRIALS, **search) -> Path:
    opts = {"trials": trials, "executor": "ray", "workers": 2, "ray_address": address, **search}
    text = ", ".join(f"{k}: {v}" for k, v in opts.items())
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\nruns_dir: {tmp_path / 'runs'}\n"
        "data: {name: digits, limit: 600}\n"
        f"search: {{{text}}}\n"
        "strategy: {name: random}\n"
        "train: {epochs: 2}\n"
        "latency: {repeats: 5, warmup: 1}\n"
    )
    return cfg


def search(cfg: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nasforge", "search", str(cfg), "--quiet", "--no-final", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def rows(db: Path) -> list[tuple[int, str, str, str | None]]:
    """(id, state, arch key, worker) of every trial, read with plain SQLite read-only."""
    with TrialStore(db) as store:
        return [(t.id, t.state, t.key, t.worker) for t in store.trials()]


def complete_count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(
                con.execute("SELECT COUNT(*) FROM trials WHERE state='complete'").fetchone()[0]
            )
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def assert_exactly(db: Path, n: int) -> list[tuple[int, str, str, str | None]]:
    """``n`` complete trials, each arch once, no trial row lost or finished twice."""
    got = rows(db)
    complete = [r for r in got if r[1] == "complete"]
    assert len(complete) == n, got
    assert len({r[0] for r in got}) == len(got)  # unique ids
    assert len({r[2] for r in complete}) == n, got  # each network evaluated (counted) once
    assert not [r for r in got if r[1] in ("running", "failed")], got
    return complete


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    with LocalRayCluster(nodes=2, cpus_per_node=1, object_store_mb=100) as c:
        yield c


@pytest.mark.slow
def test_trials_spread_over_both_nodes(tmp_path: Path, cluster: LocalRayCluster) -> None:
    cfg = write_config(tmp_path, "spread", cluster.address, ray_num_cpus=1)
    res = search(cfg, cluster.driver_env())
    assert res.returncode == 0, res.stdout + res.stderr
    complete = assert_exactly(tmp_path / "runs" / "spread" / "trials.db", TRIALS)
    ips = {str(w).rsplit(":", 1)[0] for *_, w in complete}
    # 2 trials at a time, 1 CPU per trial, 1 CPU per node: both nodes ran trials
    assert ips == set(cluster.node_ips), (ips, cluster.node_ips)


@pytest.mark.slow
def test_a_task_no_node_can_hold_is_refused(tmp_path: Path, cluster: LocalRayCluster) -> None:
    cfg = write_config(tmp_path, "gpu", cluster.address, trials=1, ray_num_gpus=1)
    res = search(cfg, cluster.driver_env())
    assert res.returncode == 2, res.stdout + res.stderr
    assert "search.ray_num_gpus" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


def _evaluating_on(cluster: LocalRayCluster, node: int) -> bool:
    """Whether a process of ``node``'s session is running a trial (Ray titles a task's
    worker process ``ray::<function>`` while it runs)."""
    sid = cluster._nodes[node].proc.pid
    out = subprocess.run(["ps", "-eo", "sid=,args="], capture_output=True, text=True).stdout
    return any(
        line.split(None, 1)[0] == str(sid) and "ray::_ray_evaluate" in line
        for line in out.splitlines()
        if line.strip()
    )


def _evaluating_anywhere(cluster: LocalRayCluster) -> bool:
    return any(_evaluating_on(cluster, i) for i in range(len(cluster._nodes)))


def _worker_node(cluster: LocalRayCluster) -> int:
    """The index of the newest alive worker node (an earlier test killed and re-added one)."""
    return max(i for i, n in enumerate(cluster._nodes) if i > 0 and not n.killed)


def _search_losing_a_node(cluster: LocalRayCluster, cfg: Path) -> tuple[int, str, str]:
    """Run a search on ``cluster``, SIGKILL the worker node while it evaluates a trial (a lost
    machine, with that trial), wait for the search; the node is added back for the next test.
    Returns the search's exit code, its output and the lost node's IP."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "nasforge", "search", str(cfg), "--quiet", "--no-final"],
        env=cluster.driver_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        node = _worker_node(cluster)
        while not _evaluating_on(cluster, node):
            assert driver.poll() is None, driver.communicate()[0]
            assert time.monotonic() < deadline, "no trial ever ran on the worker node"
            time.sleep(0.2)
        lost_ip = cluster.kill_node(node)
        out, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
        cluster.add_node()  # the module's cluster has two nodes again for the next test
    return driver.returncode, out, lost_ip


@pytest.mark.slow
def test_a_lost_node_s_trial_runs_again(tmp_path: Path, cluster: LocalRayCluster) -> None:
    cfg = write_config(tmp_path, "lost", cluster.address, trials=TRIALS, ray_num_cpus=1)
    returncode, out, lost_ip = _search_losing_a_node(cluster, cfg)
    assert returncode == 0, out
    complete = assert_exactly(tmp_path / "runs" / "lost" / "trials.db", TRIALS)
    # the lost node's trial finished elsewhere (Ray ran its task again on the head)
    assert any(not str(w).startswith(lost_ip + ":") for *_, w in complete)


@pytest.mark.slow
def test_kill_9_driver_then_resume_on_the_running_cluster(
    tmp_path: Path, cluster: LocalRayCluster
) -> None:
    cfg = write_config(tmp_path, "resume", cluster.address, trials=TRIALS)
    db = tmp_path / "runs" / "resume" / "trials.db"
    driver = subprocess.Popen(
        [sys.executable, "-m", "nasforge", "search", str(cfg), "--quiet", "--no-final"],
        env=cluster.driver_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while complete_count(db) < 2:
            assert driver.poll() is None, "the driver ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = complete_count(db)
    assert before < TRIALS
    assert len(cluster.alive_ips()) == 2  # the cluster outlives its driver
    res = search(cfg, cluster.driver_env(), "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    got = rows(db)
    complete = [r for r in got if r[1] == "complete"]
    assert len(complete) == TRIALS, got
    assert len({r[2] for r in complete}) == TRIALS, got  # none evaluated (counted) twice
    assert not [r for r in got if r[1] in ("running", "failed")], got


def test_ray_fields_are_checked(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nasforge.cli import app

    runner = CliRunner()
    for field, value in [
        ("ray_num_gpus", "-1"),
        ("ray_num_cpus", "0"),
        ("ray_max_retries", "-2"),
        ("ray_address", "nowhere"),
    ]:
        cfg = write_config(tmp_path, "bad", "auto", **{field: value})
        if field == "ray_address":
            cfg.write_text(cfg.read_text().replace("ray_address: auto", f"ray_address: {value}"))
        res = runner.invoke(app, ["search", str(cfg), "--quiet", "--no-final"])
        assert res.exit_code == 2, res.output
        assert f"search.{field}" in res.output
        assert "Traceback" not in res.output


def test_no_cluster_at_the_address_is_a_config_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nasforge.cli import app

    port = free_port()  # nothing listens there
    cfg = write_config(tmp_path, "nocluster", f"127.0.0.1:{port}", trials=1)
    res = CliRunner().invoke(app, ["search", str(cfg), "--quiet", "--no-final"])
    assert res.exit_code == 2, res.output
    assert "search.ray_address" in res.output and str(port) in res.output
    assert "Traceback" not in res.output
    assert not ray.is_initialized()


def test_a_lost_task_is_one_line_naming_the_loss() -> None:
    from nasforge.experiment.executors import ray_loss_message

    exc = ray.exceptions.NodeDiedError("node 127.0.0.2 died\nmore detail")
    msg = ray_loss_message(exc, 3)
    assert "\n" not in msg
    assert "NodeDiedError" in msg and "search.ray_max_retries" in msg and "127.0.0.2" in msg


@pytest.mark.slow
def test_past_the_retries_a_lost_node_s_trial_is_failed_in_one_line(
    tmp_path: Path, cluster: LocalRayCluster
) -> None:
    cfg = write_config(tmp_path, "noretry", cluster.address, trials=4, ray_max_retries=0)
    returncode, out, _ = _search_losing_a_node(cluster, cfg)
    assert returncode == 0, out
    got = rows(tmp_path / "runs" / "noretry" / "trials.db")
    assert len(got) == 4 and len({r[0] for r in got}) == 4, got  # none lost, none twice
    with TrialStore(tmp_path / "runs" / "noretry" / "trials.db") as store:
        failed = store.trials(("failed",))
    assert len(failed) == 1, got
    error = str(failed[0].error)
    assert "\n" not in error and "lost" in error and "search.ray_max_retries" in error, error


@pytest.mark.slow
def test_ctrl_c_cancels_the_tasks_and_the_cluster_keeps_running(
    tmp_path: Path, cluster: LocalRayCluster
) -> None:
    cfg = write_config(tmp_path, "sigint", cluster.address, trials=TRIALS)
    driver = subprocess.Popen(
        [sys.executable, "-m", "nasforge", "search", str(cfg), "--quiet", "--no-final"],
        env=cluster.driver_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not _evaluating_anywhere(cluster):
            assert driver.poll() is None, driver.communicate()[0]
            assert time.monotonic() < deadline, "no trial ever ran"
            time.sleep(0.2)
        os.kill(driver.pid, signal.SIGINT)
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode not in (0, None), out
    assert "--resume" in out, out
    deadline = time.monotonic() + 60
    while _evaluating_anywhere(cluster):  # the driver cancelled its running tasks
        assert time.monotonic() < deadline, "a cancelled trial still runs on the cluster"
        time.sleep(0.5)
    assert len(cluster.alive_ips()) == 2
    res = search(cfg, cluster.driver_env(), "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    got = rows(tmp_path / "runs" / "sigint" / "trials.db")
    complete = [r for r in got if r[1] == "complete"]
    assert len(complete) == TRIALS and len({r[2] for r in complete}) == TRIALS, got
