"""A live, read-only web dashboard of a run: ``nasforge dashboard RUN``.

``data`` turns a run directory into JSON-ready snapshots (read-only store access);
``server`` serves them with a page that polls and plots them (plotly, bundled for offline
use). Nothing in a request can change a run.
"""

from __future__ import annotations

from nasforge.dashboard.server import DashboardServer, DashboardSettings, make_server, serve

__all__ = ["DashboardServer", "DashboardSettings", "make_server", "serve"]
