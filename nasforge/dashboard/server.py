"""The live dashboard's web server: a read-only page that follows a run through its store.

Routes (GET and HEAD only; every other method is answered 405 and does nothing):

- ``/``                     the page (``page.html``)
- ``/static/<name>``        the page's script and style, and ``plotly.min.js`` served from the
                            installed plotly package (bundled: no CDN, works offline)
- ``/api/snapshot``         :func:`nasforge.dashboard.data.snapshot` of the run as JSON
- ``/api/trial/<id>``       :func:`nasforge.dashboard.data.trial_detail` (404 for an unknown id)

Nothing else is served: no file system browsing, and no query parameter changes what runs.
The store is opened read-only for each API request (by the data module), so the page keeps
following a run that is killed, resumed or still being written. A store that cannot be read
at the moment answers 503 with ``{"error": ...}``; the page says it is waiting and polls on.

Why the standard library's ``http.server`` and no web framework: the page needs only GET of a
few fixed files and two JSON routes, on a local port; ``ThreadingHTTPServer`` is maintained
with Python and adds no dependency.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import re
import socket
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from nasforge.errors import NasforgeError

log = logging.getLogger("nasforge.dashboard")

HERE = Path(__file__).resolve().parent
PAGE_FILE = HERE / "page.html"
STATIC_DIR = HERE / "static"
#: the page's own files under /static/ (a fixed list: never a path taken from the request)
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
REFRESH_TOKEN = "__NASFORGE_REFRESH_MS__"

# Only this origin: scripts, data and images. Plotly writes inline styles (style attributes
# and a <style> element), so styles allow 'unsafe-inline'; no inline or foreign script runs.
CSP = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; font-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
TRIAL_ROUTE = re.compile(r"/api/trial/(\d{1,12})")
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


@dataclass(frozen=True)
class DashboardSettings:
    """What the dashboard serves and how: the run, the poll interval the page uses, whether
    requests must name a loopback host (on by default: a web page elsewhere cannot reach the
    local server through a DNS name that resolves to 127.0.0.1)."""

    run_dir: Path
    refresh_s: float = 2.0
    loopback_only: bool = True


class DataSource(Protocol):
    """Where the JSON comes from: :mod:`nasforge.dashboard.data` (a test may pass its own)."""

    def snapshot(self, run_dir: Path) -> dict[str, Any]: ...

    def trial_detail(self, run_dir: Path, trial_id: int) -> dict[str, Any]: ...


def plotly_js_path() -> Path:
    """``plotly.min.js`` of the installed plotly package (its ``package_data``), without
    importing plotly; a missing package or file is a :class:`NasforgeError` saying what to
    install."""
    spec = find_spec("plotly")
    where = list(spec.submodule_search_locations or []) if spec else []
    for root in where:
        path = Path(root) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    raise NasforgeError(
        "the dashboard needs the optional package 'plotly' (its bundled plotly.min.js), which "
        "is not installed (pip install 'nasforge[dashboard]')"
    )


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (an address or a name) means this machine only."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:  # a name: loopback only when every address it resolves to is
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    addrs = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a).is_loopback for a in addrs)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None: JSON has no NaN (the browser's
    ``JSON.parse`` rejects Python's ``NaN``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_bytes(value: Any) -> bytes:
    """``value`` as strict JSON (no NaN), UTF-8."""
    return json.dumps(_finite(value), allow_nan=False, default=str).encode()


class DashboardHandler(BaseHTTPRequestHandler):
    """One request. GET/HEAD of the fixed routes; everything else 404 or 405."""

    server: DashboardServer
    server_version = "nasforge-dashboard"

    def version_string(self) -> str:  # no Python version in the Server header
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    def __getattr__(self, name: str) -> Callable[[], None]:
        # the stdlib dispatches method X to do_X and answers 501 when there is none; every
        # method but GET and HEAD is refused here with 405 instead, and its body is not read
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._send_json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            {"error": f"method {self.command} not allowed: the dashboard is read-only"},
            extra={"Allow": "GET, HEAD"},
        )

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        settings = self.server.settings
        if settings.loopback_only and not self._host_is_loopback():
            self._send_json(HTTPStatus.FORBIDDEN, {"error": "this dashboard serves localhost only"})
            return
        path = urlsplit(self.path).path  # a query string is ignored: it never runs anything
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", self.server.page())
        elif path == "/static/plotly.min.js":
            self._send(HTTPStatus.OK, "text/javascript", self.server.plotly_js(), cache=True)
        elif path.startswith("/static/") and path[len("/static/") :] in STATIC_FILES:
            name = path[len("/static/") :]
            kind = STATIC_FILES[name] + "; charset=utf-8"
            self._send(HTTPStatus.OK, kind, (STATIC_DIR / name).read_bytes())
        elif path == "/api/snapshot":
            self._api(lambda data: data.snapshot(settings.run_dir))
        elif match := TRIAL_ROUTE.fullmatch(path):
            trial_id = int(match.group(1))
            self._api(lambda data: data.trial_detail(settings.run_dir, trial_id), trial_id)
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"not found: {path[:200]}"})

    def _host_is_loopback(self) -> bool:
        name = urlsplit("//" + self.headers.get("Host", "")).hostname or ""
        if name in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def _api(self, call: Callable[[DataSource], Any], trial_id: int | None = None) -> None:
        try:
            result = call(self.server.source())
        except LookupError:  # KeyError included: trial_detail of an id the store lacks
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no trial {trial_id} in this run"})
            return
        except (NasforgeError, sqlite3.Error, OSError) as exc:
            # a store being created, replaced by a resume or damaged by a kill mid-write:
            # the page waits and asks again
            self._send_json(
                HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"waiting for the store: {exc}"}
            )
            return
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the live page
            log.exception("dashboard: %s failed", self.path)
            self._send_json(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"}
            )
            return
        self._send_json(HTTPStatus.OK, result)

    def _send_json(
        self, status: HTTPStatus, value: Any, extra: dict[str, str] | None = None
    ) -> None:
        self._send(status, "application/json", json_bytes(value), extra=extra)

    def _send(
        self,
        status: HTTPStatus,
        content_type: str,
        payload: bytes,
        *,
        cache: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        # the bundled plotly never changes while the server runs; the rest is live
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class DashboardServer(ThreadingHTTPServer):
    """The HTTP server of one run's dashboard (one thread per request, daemon threads)."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        settings: DashboardSettings,
        source: DataSource | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.settings = settings
        self._source = source
        self._plotly_path = plotly_js_path()
        self._plotly: bytes | None = None
        self._lock = threading.Lock()
        super().__init__(address, DashboardHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def source(self) -> DataSource:
        if self._source is None:
            import importlib

            # the data module is imported on the first API call: the CLI starts fast
            self._source = importlib.import_module("nasforge.dashboard.data")  # type: ignore[assignment]
        return self._source

    def page(self) -> bytes:
        # the poll interval is the one value the page takes from the command line
        html = PAGE_FILE.read_text(encoding="utf-8")
        return html.replace(REFRESH_TOKEN, str(round(self.settings.refresh_s * 1000))).encode()

    def plotly_js(self) -> bytes:
        with self._lock:  # read once (4-5 MB), then served from memory
            if self._plotly is None:
                self._plotly = self._plotly_path.read_bytes()
            return self._plotly


def make_server(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8050,
    *,
    refresh_s: float = 2.0,
    allow_remote: bool = False,
    source: DataSource | None = None,
) -> DashboardServer:
    """A bound (not yet serving) dashboard server for ``run_dir``.

    Raises:
        NasforgeError: the run directory or its ``trials.db`` is missing; ``host`` is not a
            loopback address and ``allow_remote`` is False; the port is in use; ``host``
            cannot be bound; plotly is not installed; ``refresh_s`` is not positive. Each
            message is one line naming the option or path.

    ``source`` defaults to :mod:`nasforge.dashboard.data` (imported at the first API call).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise NasforgeError(f"{run}: no such run directory")
    if not (run / "trials.db").is_file():
        raise NasforgeError(f"{run}: not a run directory (no trials.db)")
    if not (math.isfinite(refresh_s) and refresh_s > 0):
        raise NasforgeError(f"--refresh: must be a positive number of seconds, got {refresh_s}")
    if not 0 <= port <= 65535:
        raise NasforgeError(f"--port: must be 0-65535, got {port}")
    loopback = is_loopback_host(host)
    if not loopback and not allow_remote:
        raise NasforgeError(
            f"--host {host}: not a loopback address; the dashboard has no authentication, so "
            "serving it to the network needs --allow-remote"
        )
    settings = DashboardSettings(run.resolve(), refresh_s, loopback_only=loopback)
    try:
        return DashboardServer((host, port), settings, source)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise NasforgeError(
                f"--port {port}: already in use on {host} (choose another port)"
            ) from None
        raise NasforgeError(f"--host {host} --port {port}: cannot listen there ({exc})") from None


REMOTE_WARNING = (
    "warning: the dashboard listens on {host}, beyond this machine; it is read-only but has no "
    "authentication: anyone who can reach {url} can read this run"
)


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8050,
    *,
    refresh_s: float = 2.0,
    allow_remote: bool = False,
    say: Callable[[str], None] = print,
) -> None:
    """Serve the dashboard of ``run_dir`` until Ctrl-C (or SIGTERM), then close the socket.

    ``say`` prints the URL (and the warning for a non-loopback host) to the terminal. Errors
    are those of :func:`make_server`.
    """
    import signal

    server = make_server(run_dir, host, port, refresh_s=refresh_s, allow_remote=allow_remote)
    if not server.settings.loopback_only:
        say(REMOTE_WARNING.format(host=host, url=server.url))
    say(f"dashboard of {server.settings.run_dir}: {server.url} (Ctrl-C stops)")

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main else None
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        server.server_close()
    say("dashboard stopped")
