"""The dashboard's web server: fixed routes, GET/HEAD only, security headers, bundled plotly,
errors as JSON, the CLI's refusals, and a real run's store left untouched by serving it."""

from __future__ import annotations

import _thread
import http.client
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from runproc import kill_group, start_search, wait_for, write_config
from typer.testing import CliRunner

from nasforge.cli import app
from nasforge.dashboard.server import (
    DashboardServer,
    is_loopback_host,
    make_server,
    plotly_js_path,
)
from nasforge.errors import NasforgeError


class FakeSource:
    """A stand-in data source for routing tests only (the real one is tested on real runs)."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: Exception | None = None

    def snapshot(self, run_dir: Path) -> dict[str, Any]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return {"run": {"name": "fake", "as_of": 1.0}, "leaderboard": [], "nan": math.nan}

    def trial_detail(self, run_dir: Path, trial_id: int) -> dict[str, Any]:
        self.calls += 1
        if trial_id != 1:
            raise KeyError(trial_id)
        return {"id": 1, "error": "<script>alert(1)</script>", "curve": [0.5, math.inf]}


@contextmanager
def serving(server: DashboardServer) -> Iterator[DashboardServer]:
    """``server`` answering from a thread; shut down and closed on exit."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def request(
    server: DashboardServer,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "trials.db").write_bytes(b"")  # make_server checks it exists; the fake reads nothing
    return run


@pytest.fixture
def fake(fake_run: Path) -> Iterator[tuple[DashboardServer, FakeSource]]:
    source = FakeSource()
    server = make_server(fake_run, port=0, refresh_s=0.5, source=source)
    with serving(server) as s:
        yield s, source


def test_routes_serve_the_page_its_files_the_bundled_plotly_and_the_api(fake) -> None:  # type: ignore[no-untyped-def]
    server, source = fake
    status, headers, body = request(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    assert 'id="leaderboard"' in page and 'content="500"' in page  # --refresh 0.5 s
    assert "__NASFORGE_REFRESH_MS__" not in page
    assert "http://" not in page and "https://" not in page  # nothing from a CDN
    status, headers, body = request(server, "/static/plotly.min.js")
    assert status == 200 and body == plotly_js_path().read_bytes()
    assert headers["content-type"].startswith("text/javascript")
    for name in ("dashboard.js", "dashboard.css"):
        assert request(server, f"/static/{name}")[0] == 200
    status, headers, body = request(server, "/api/snapshot?run=rm%20-rf")  # a query runs nothing
    assert status == 200 and headers["content-type"] == "application/json"
    snap = json.loads(body)  # strict JSON: NaN became null
    assert snap["run"]["name"] == "fake" and snap["nan"] is None
    status, _, body = request(server, "/api/trial/1")
    assert status == 200 and json.loads(body)["curve"] == [0.5, None]
    status, headers, body = request(server, "/api/trial/7")
    assert status == 404 and "no trial 7" in json.loads(body)["error"]
    calls = source.calls
    for path in (
        "/api/trial/abc",
        "/api/trial/1/../../",
        "/static/../server.py",
        "/static/server.py",
        "/static/%2e%2e/server.py",
        "/page.html",
        "/etc/passwd",
        "/api",
    ):
        status, headers, body = request(server, path)
        assert status == 404, path
        assert "error" in json.loads(body)
    assert source.calls == calls  # none of them reached the store


def test_responses_carry_the_security_headers(fake) -> None:  # type: ignore[no-untyped-def]
    server, _ = fake
    for path in ("/", "/api/snapshot", "/static/dashboard.js", "/nowhere"):
        _, headers, _ = request(server, path)
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self';" in csp
        assert "unsafe-eval" not in csp and "http" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert "python" not in headers["server"].lower()
    assert request(server, "/api/snapshot")[1]["cache-control"] == "no-store"
    assert request(server, "/api/trial/1")[1]["cache-control"] == "no-store"


def test_only_get_and_head_are_answered(fake) -> None:  # type: ignore[no-untyped-def]
    server, source = fake
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"):
        status, headers, body = request(server, "/api/snapshot", method, body=b'{"x": 1}')
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD"
        assert "read-only" in json.loads(body)["error"]
    assert source.calls == 0  # nothing was read, let alone written
    status, headers, body = request(server, "/api/snapshot", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    assert source.calls == 1


def test_a_store_that_cannot_be_read_answers_503_and_the_next_poll_recovers(fake) -> None:  # type: ignore[no-untyped-def]
    server, source = fake
    for exc in (
        NasforgeError("trials.db: damaged"),
        sqlite3.OperationalError("database is locked"),
        FileNotFoundError("trials.db"),
    ):
        source.fail = exc
        status, headers, body = request(server, "/api/snapshot")
        assert status == 503 and headers["cache-control"] == "no-store"
        assert json.loads(body)["error"].startswith("waiting for the store:")
    source.fail = RuntimeError("a bug")
    status, _, body = request(server, "/api/snapshot")
    assert status == 500 and json.loads(body)["error"] == "RuntimeError: a bug"
    source.fail = None
    assert request(server, "/api/snapshot")[0] == 200


def test_a_loopback_server_refuses_requests_for_other_host_names(fake) -> None:  # type: ignore[no-untyped-def]
    # DNS rebinding: a page elsewhere whose name resolves to 127.0.0.1 must not read the run
    server, source = fake
    status, _, _ = request(server, "/api/snapshot", headers={"Host": "evil.example:8050"})
    assert status == 403 and source.calls == 0
    for host in ("localhost:8050", "127.0.0.1", "[::1]:9"):
        assert request(server, "/api/snapshot", headers={"Host": host})[0] == 200


def test_make_server_refuses_bad_places_and_ports(tmp_path: Path, fake_run: Path) -> None:
    with pytest.raises(NasforgeError, match="no such run directory"):
        make_server(tmp_path / "missing", port=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NasforgeError, match="no trials.db"):
        make_server(tmp_path / "empty", port=0)
    with pytest.raises(NasforgeError, match="--host 0.0.0.0: not a loopback.*--allow-remote"):
        make_server(fake_run, host="0.0.0.0", port=0)
    with pytest.raises(NasforgeError, match="--refresh"):
        make_server(fake_run, port=0, refresh_s=0)
    taken = make_server(fake_run, port=0)
    try:
        port = taken.server_address[1]
        with pytest.raises(NasforgeError, match=f"--port {port}: already in use"):
            make_server(fake_run, port=port)
    finally:
        taken.server_close()
    assert is_loopback_host("localhost") and is_loopback_host("::1")
    assert is_loopback_host("127.0.0.2") and not is_loopback_host("0.0.0.0")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["{missing}"], "no such run directory"),
        (["{run}", "--host", "0.0.0.0"], "--host 0.0.0.0: not a loopback address"),
        (["{run}", "--port", "70000"], "--port: must be 0-65535"),
    ],
)
def test_cli_refusals_are_one_line_and_exit_2(
    fake_run: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    argv = [a.format(run=fake_run, missing=tmp_path / "missing") for a in args]
    result = CliRunner().invoke(app, ["dashboard", *argv])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert result.output.strip().startswith("error:")


# --- a real run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-trial digits search (inline executor, one epoch)."""
    from nasforge.experiment.config import load_config
    from nasforge.experiment.runner import Experiment

    tmp = tmp_path_factory.mktemp("dash")
    cfg = load_config(write_config(tmp, search="{trials: 2, executor: inline}"))
    run = cfg.run_dir(None)
    Experiment(cfg, run, progress=False).run(final=False)
    return run


def files_of(run: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def test_serving_a_real_run_matches_its_store_and_changes_no_file(real_run: Path) -> None:
    from nasforge.experiment.report import leaderboard
    from nasforge.experiment.store import TrialStore

    with TrialStore(real_run / "trials.db", create=False) as store:
        ranked = [t.id for t in leaderboard(store, 20)]
    before = files_of(real_run)
    server = make_server(real_run, port=0)
    with serving(server) as s:
        status, _, body = request(s, "/api/snapshot")
        assert status == 200, body
        snap = json.loads(body)
        assert [row["id"] for row in snap["leaderboard"]] == ranked
        assert snap["progress"]["complete"] == 2
        status, _, body = request(s, f"/api/trial/{ranked[0]}")
        assert status == 200 and json.loads(body)["id"] == ranked[0]
        assert request(s, "/api/trial/999")[0] == 404
        request(s, "/api/snapshot", "POST", body=b"x")
    after = files_of(real_run)
    # read-only: no byte or mtime of any file changed; the only files that may appear are
    # SQLite's WAL side files, which a read-only reader of a WAL database creates when absent
    assert {k: v for k, v in after.items() if k in before} == before
    new_files = set(after) - set(before)
    assert new_files <= {"trials.db-wal", "trials.db-shm"}, new_files
    assert after.get("trials.db-wal", (0, b""))[1] == b""  # nothing written through it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_dashboard_command_serves_warns_when_remote_and_stops_on_ctrl_c(
    real_run: Path,
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Ctrl-C is simulated in the main thread, and this test runs in another")
    port = free_port()
    served: list[int] = []

    def visit_then_ctrl_c() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/api/snapshot")
                resp = conn.getresponse()
                served.append(json.loads(resp.read())["progress"]["complete"])
                conn.close()
            except OSError:
                time.sleep(0.1)
                continue
            # Ctrl-C: KeyboardInterrupt in the main thread, where the command serves
            _thread.interrupt_main()
            return

    visitor = threading.Thread(target=visit_then_ctrl_c, daemon=True)
    visitor.start()
    argv = ["dashboard", str(real_run), "--port", str(port), "--host", "0.0.0.0"]
    result = CliRunner().invoke(app, [*argv, "--allow-remote"])
    visitor.join(30)
    assert result.exit_code == 0, result.output
    assert served == [2]
    text = " ".join(result.output.split())  # the console wraps long lines
    assert f"http://0.0.0.0:{port}/" in text and "dashboard stopped" in text
    assert "warning:" in text and "no authentication" in text


@pytest.mark.slow  # ~15 s: a fresh `python -m nasforge` imports torch on a busy host
def test_the_dashboard_process_prints_its_url_warns_when_remote_and_stops_on_sigint(
    real_run: Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasforge", "dashboard", str(real_run), "--port", "0"]
        + ["--host", "0.0.0.0", "--allow-remote"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "COLUMNS": "400"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://0.0.0.0:" in line, line
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/snapshot")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["progress"]["complete"] == 2
        conn.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 0, err
    assert "dashboard stopped" in out
    assert "warning:" in err and "no authentication" in err and "Traceback" not in err


@pytest.mark.slow  # ~40 s: a search, killed with -9 and resumed, under a live dashboard
def test_the_api_follows_a_search_through_kill_and_resume(tmp_path: Path) -> None:
    from nasforge.experiment.report import leaderboard
    from nasforge.experiment.store import TrialStore

    cfg = write_config(tmp_path, "kr", search="{trials: 8, executor: inline}")
    run = tmp_path / "runs" / "kr"
    seen: list[tuple[int, str | None, int | None]] = []
    stop = threading.Event()
    search = start_search(cfg)
    resumed = None
    try:
        wait_for(lambda: (run / "trials.db").is_file(), 300, "the store")
        server = make_server(run, port=0)
        with serving(server) as s:

            def poll() -> None:
                while not stop.is_set():
                    status, _, body = request(s, "/api/snapshot")
                    snap = json.loads(body)
                    run_status = snap.get("run", {}).get("status")
                    seen.append((status, run_status, snap.get("progress", {}).get("complete")))
                    time.sleep(0.1)

            poller = threading.Thread(target=poll)
            poller.start()
            try:
                wait_for(lambda: any(c and c >= 2 for _, _, c in seen), 300, "2 complete")
                os.killpg(search.pid, signal.SIGKILL)
                search.wait(30)
                wait_for(lambda: seen[-1][1] == "interrupted", 60, "the page to see the kill")
                resumed = start_search(cfg, "--resume")
                assert resumed.wait(600) == 0, resumed.communicate()
                wait_for(lambda: seen[-1][1] == "finished", 60, "the page to see the end")
            finally:
                stop.set()
                poller.join(30)
    finally:
        kill_group(search)
        if resumed is not None:
            kill_group(resumed)
    assert {status for status, _, _ in seen} <= {200, 503}  # never a server error
    statuses = [st for code, st, _ in seen if code == 200]
    assert "running" in statuses and "interrupted" in statuses and statuses[-1] == "finished"
    assert statuses.index("interrupted") < len(statuses) - 1 - statuses[::-1].index("running")
    with TrialStore.open_readonly(run / "trials.db") as store:
        ranked = [t.id for t in leaderboard(store, 20)]
        assert store.count(("complete",)) == 8
    last = json.loads(request_once(run, "/api/snapshot"))
    assert [r["id"] for r in last["leaderboard"]] == ranked
    assert last["progress"]["complete"] == 8


def request_once(run: Path, path: str) -> bytes:
    server = make_server(run, port=0)
    with serving(server) as s:
        status, _, body = request(s, path)
    assert status == 200, body
    return body
