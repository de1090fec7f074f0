"""The dashboard in a real headless Chromium (the OS package), while a real search runs: the
page's leaderboard rows equal the store's ranking at the instant the page shows, the plots
render, the run shows as running; after the search is killed (-9) the server still answers.
The screenshot is kept under the test's tmp dir and its path printed (``pytest -s``)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
from runproc import kill_group, start_search, wait_for, write_config

from nasforge.dashboard.server import make_server
from nasforge.experiment.store import StoreError, TrialStore
from nasforge.strategies.base import scalar


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Chromium from the OS packages (Debian: apt-get install chromium; .ci/run "
    "installs it where apt is available)",
)
#: not a sandbox-capable host (containers, CI), no GPU, nothing fetched from the network
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1800",
)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


class PageDom(HTMLParser):
    """What the test reads from the dumped DOM: attributes of elements by id, the leaderboard's
    rows (trial id and cell texts by class), and the classes found inside each ``plot-*``."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str]] = {}
        self.rows: list[dict[str, str]] = []
        self.plot_classes: dict[str, set[str]] = {}
        self.stack: list[tuple[str, str | None]] = []
        self.cell: str | None = None

    def inside(self, element_id: str) -> bool:
        return any(i == element_id for _, i in self.stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.by_id[a["id"]] = a
        plot = next((i for _, i in reversed(self.stack) if i and i.startswith("plot-")), None)
        if plot:
            self.plot_classes.setdefault(plot, set()).update(a.get("class", "").split())
        if tag == "tr" and "data-trial-id" in a and self.inside("leaderboard"):
            self.rows.append({"id": a["data-trial-id"]})
        if tag == "td" and self.rows and self.inside("leaderboard"):
            self.cell = a.get("class", "")
            self.rows[-1][self.cell] = ""
        if tag not in VOID:
            self.stack.append((tag, a.get("id")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.cell = None
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.rows[-1][self.cell] += data


def complete_count(run: Path) -> int:
    try:
        with TrialStore.open_readonly(run / "trials.db") as s:
            return s.count(("complete",))
    except (StoreError, sqlite3.Error):  # not created yet, or mid-creation
        return 0


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        return json.loads(resp.read())
    finally:
        conn.close()


def test_the_page_in_chromium_follows_a_running_search_as_its_store_has_it(
    tmp_path: Path,
) -> None:
    # many trials: the search is still running when the browser looks (the test kills it)
    cfg = write_config(
        tmp_path, "live", search="{trials: 100, executor: inline}", train="{epochs: 2, lr: 0.1}"
    )
    run = tmp_path / "runs" / "live"
    search = start_search(cfg)
    server = None
    thread = None
    try:
        wait_for(lambda: complete_count(run) >= 2, 300, "two complete trials")
        server = make_server(run, port=0, refresh_s=0.5)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        shot = tmp_path / "dashboard.png"
        assert CHROMIUM is not None
        browser = subprocess.run(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--virtual-time-budget=2500",  # a few polls of the page at 0.5 s
                f"--screenshot={shot}",
                "--dump-dom",
                server.url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert search.poll() is None, "the search ended before the browser looked"
        os.killpg(search.pid, signal.SIGKILL)  # the run dies under the page
        search.wait(30)
        after = get_json(server.server_address[1], "/api/snapshot")
    finally:
        kill_group(search)
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(10)
    assert browser.returncode == 0, browser.stderr[-2000:]
    print(f"\ndashboard screenshot: {shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

    dom = PageDom()
    dom.feed(browser.stdout)
    assert dom.by_id["run-status"]["data-status"] == "running"
    assert "hidden" in dom.by_id["store-error"]  # the store was read, no waiting banner
    complete = int(dom.by_id["as-of"]["data-complete"])
    assert complete >= 2

    # the store's ranking when `complete` trials had completed: they complete in order of
    # their finish time, and rank by score, ties by id, as `nasforge show` ranks them
    with TrialStore.open_readonly(run / "trials.db") as store:
        done = sorted(store.trials(("complete",)), key=lambda t: (t.finished or 0.0, t.id))
        assert len(done) >= complete
        expected = sorted(done[:complete], key=lambda t: (-scalar(t.score), t.id))[:20]
        final = sorted(done, key=lambda t: (-scalar(t.score), t.id))[:20]
    assert [row["id"] for row in dom.rows] == [str(t.id) for t in expected]
    assert [row["score"] for row in dom.rows] == [f"{scalar(t.score):.4f}" for t in expected]
    assert [row["rank"] for row in dom.rows] == [str(i + 1) for i in range(len(expected))]

    for plot in ("plot-pareto", "plot-best", "plot-curves"):
        assert "js-plotly-plot" in dom.by_id[plot].get("class", ""), plot
        assert "plot-container" in dom.plot_classes.get(plot, set()), plot
    assert "trace" in dom.plot_classes["plot-curves"]  # the top trials' learning curves drawn

    # killed with -9: the server still reads the store; nothing holds the run any more
    assert after["run"]["status"] != "running" and after["run"]["lock_held"] is False
    assert [r["id"] for r in after["leaderboard"]] == [t.id for t in final]


def run_chromium(url: str, tmp_path: Path, *extra: str) -> str:
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra]
        + ["--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_page_waits_for_an_unreadable_store_and_shows_its_error_as_text(
    tmp_path: Path,
) -> None:
    # a damaged store (a run killed mid-write of its header, or not a store at all), in a
    # directory whose name is markup: the page must say it waits, and show the name as text
    run = tmp_path / "<img src=x onerror=alert(1)><b>run"
    run.mkdir()
    (run / "trials.db").write_bytes(b"this is not a SQLite file" * 200)
    server = make_server(run, port=0, refresh_s=0.5)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        html = run_chromium(server.url, tmp_path, "--virtual-time-budget=2000")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    dom = PageDom()
    dom.feed(html)
    assert "hidden" not in dom.by_id["store-error"]
    assert "waiting for the store:" in html and "not a SQLite database" in html
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;b&gt;run" in html  # text, not tags
    assert "<img" not in html and "<b>" not in html
    assert dom.rows == []
