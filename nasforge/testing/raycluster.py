"""A real multi-node Ray cluster on this machine, for tests and benchmarks.

:class:`LocalRayCluster` starts a head (``ray start --head --block``) on 127.0.0.1 (Ray names
it by the machine's address) and worker nodes (``ray start --block --address ...``) on
127.0.0.2, 127.0.0.3, ... (Linux routes the whole 127.0.0.0/8 to loopback), each a
subprocess in its own process group, so one node can be killed alone like a lost machine
(:meth:`LocalRayCluster.kill_node`). It never runs ``ray stop`` (which kills every Ray
process on the machine, other users' clusters too).

Token authentication is on, with a token of this cluster's own in its temp dir: a driver
(``ray.init(address=cluster.address)``) needs :attr:`LocalRayCluster.env` in its
environment: ``subprocess.run(..., env=cluster.driver_env())`` or, in-process,
``os.environ.update(cluster.env)`` before ``ray.init``.

Example::

    with LocalRayCluster(nodes=2) as cluster:
        subprocess.run([sys.executable, "-m", "nasforge", "search", "c.yaml"],
                       env=cluster.driver_env(), check=True)   # c.yaml: ray_address
        cluster.kill_node(1)                                   # a worker machine lost
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

#: prints the IPs of the alive nodes as JSON (run with the cluster's env: a short-lived GCS
#: client, so waiting for nodes needs no driver connected to the cluster)
_PROBE = """
import json, sys
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import GcsNodeInfo
nodes = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=10)
print(json.dumps(sorted(n.node_manager_address for n in nodes.values()
                        if n.state == GcsNodeInfo.ALIVE)))
"""


class RayClusterError(RuntimeError):
    """The cluster did not start (the message carries the node logs' tails)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ray_command() -> str:
    """The ``ray`` CLI of this Python's environment (next to ``sys.executable``), or on PATH."""
    local = Path(sys.executable).parent / "ray"
    if local.is_file():
        return str(local)
    found = shutil.which("ray")
    if found is None:
        raise RayClusterError("the ray command is not installed (pip install 'nasforge[ray]')")
    return found


def session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` (Linux ``/proc``; elsewhere none: only the process
    group is killed)."""
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for name in entries:
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    pids.append(int(name))
            except OSError:  # gone meanwhile, or not ours
                pass
    return pids


class _Node:
    def __init__(self, ip: str, proc: subprocess.Popen, log_path: Path, log: IO[bytes]) -> None:
        self.ip, self.proc, self.log_path, self._log = ip, proc, log_path, log
        self.killed = False

    def kill(self) -> None:
        """SIGKILL every process of the node: its session (``ray start``, raylet, agents and
        the raylet's workers, which Ray puts in process groups of their own)."""
        if not self.killed:
            for _ in range(3):  # a process forked meanwhile is in the session too
                for pid in [self.proc.pid, *session_pids(self.proc.pid)]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(30)
            self.killed = True
        self._log.close()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(text)


class LocalRayCluster:
    """A head and ``nodes - 1`` worker nodes on loopback addresses (see the module doc).

    Args:
        nodes: how many nodes in all (the head counts; >= 1).
        cpus_per_node: ``--num-cpus`` of each node (what Ray schedules on; keep it small).
        object_store_mb: ``--object-store-memory`` of each node, in MB.
        tmp_dir: where the logs, the token and Ray's session dirs go (default: a new
            directory under ``/tmp``, removed by :meth:`stop`; Ray's unix sockets need a
            short path).
        start_timeout_s: how long :meth:`start` / :meth:`add_node` wait for the nodes.
    """

    def __init__(
        self,
        nodes: int = 2,
        cpus_per_node: float = 1,
        object_store_mb: int = 100,
        tmp_dir: str | Path | None = None,
        start_timeout_s: float = 90.0,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes: a cluster has at least the head (nodes >= 1)")
        self.nodes = nodes
        self.cpus_per_node = cpus_per_node
        self.object_store_mb = object_store_mb
        self.start_timeout_s = start_timeout_s
        self._own_tmp = tmp_dir is None
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.mkdtemp("", "nfray"))
        self.port: int | None = None
        self._nodes: list[_Node] = []
        self.env: dict[str, str] = {}

    # -- addresses -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: the head's GCS address (``search.ray_address``)."""
        if self.port is None:
            raise RayClusterError("the cluster is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def node_ips(self) -> list[str]:
        """The IPs of the nodes started and not killed, head first (the head's is this
        machine's address: Ray rewrites 127.0.0.1; workers' are 127.0.0.2, ...)."""
        return [n.ip for n in self._nodes if not n.killed]

    def driver_env(self) -> dict[str, str]:
        """``os.environ`` plus :attr:`env`: the environment of a driver subprocess."""
        return {**os.environ, **self.env}

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> LocalRayCluster:
        """Start the head and the worker nodes; wait until all are alive.

        Raises:
            RayClusterError: a node did not come up in ``start_timeout_s`` (with the logs'
                tails).
        """
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        token = self.tmp_dir / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.port = free_port()
        try:
            self._spawn(
                "127.0.0.1",
                ["--head", "--port", str(self.port), "--include-dashboard", "false"],
            )
            # Ray names the head by this machine's reachable address (it rewrites 127.0.0.1)
            self._nodes[0].ip = self._wait_alive(1)[0]
            for _ in range(self.nodes - 1):
                self._spawn(self._next_ip(), ["--address", self.address])
            self._wait_alive(self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self) -> str:
        """Start one more worker node and wait until it is alive; returns its IP."""
        ip = self._next_ip()
        self._spawn(ip, ["--address", self.address])
        self._wait_alive(len(self.node_ips))
        return ip

    def kill_node(self, i: int) -> str:
        """SIGKILL node ``i`` (0 is the head) with all its processes (its session: Ray puts
        the workers in process groups of their own): a lost machine. Returns its IP."""
        node = self._nodes[i]
        node.kill()
        return node.ip

    def alive_ips(self) -> list[str]:
        """The IPs of the nodes the cluster's GCS says are alive (asks the head)."""
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, self.address],
            env=self.driver_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RayClusterError(f"cannot read the cluster's nodes: {out.stderr.strip()[-500:]}")
        return list(json.loads(out.stdout.strip().splitlines()[-1]))

    def stop(self) -> None:
        """Kill every process this cluster started (its nodes' sessions; never ``ray stop``)."""
        for node in reversed(self._nodes):
            node.kill()
        self._nodes = []
        if self._own_tmp:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------
    def _next_ip(self) -> str:
        return f"127.0.0.{len(self._nodes) + 1}"

    def _spawn(self, ip: str, args: list[str]) -> None:
        i = len(self._nodes)
        log_path = self.tmp_dir / f"node{i}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed when the node is killed
        cmd = [
            ray_command(),
            "start",
            "--block",
            "--node-ip-address",
            ip,
            "--num-cpus",
            f"{self.cpus_per_node:g}",
            "--num-gpus",
            "0",
            "--object-store-memory",
            str(self.object_store_mb * 1024 * 1024),
            "--temp-dir",
            str(self.tmp_dir / f"n{i}"),
            "--disable-usage-stats",
            *args,
        ]
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.driver_env(),
            start_new_session=True,  # its own session: killed alone, never by a Ctrl-C
        )
        self._nodes.append(_Node(ip, proc, log_path, log))

    def _wait_alive(self, n: int) -> list[str]:
        deadline = time.monotonic() + self.start_timeout_s
        last = ""
        while time.monotonic() < deadline:
            dead = [x for x in self._nodes if not x.killed and x.proc.poll() is not None]
            if dead:
                raise RayClusterError(
                    f"ray node {dead[0].ip} exited with {dead[0].proc.returncode}; its log "
                    f"({dead[0].log_path}):\n{dead[0].tail()}"
                )
            try:
                alive = self.alive_ips()
            except (RayClusterError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
                last = str(exc)
            else:
                if len(alive) >= n:
                    return alive
                last = f"alive: {alive}"
            time.sleep(1.0)
        tails = "\n".join(f"--- {x.ip} ({x.log_path}):\n{x.tail()}" for x in self._nodes)
        raise RayClusterError(
            f"the Ray cluster did not have {n} alive node(s) within {self.start_timeout_s:g}s "
            f"({last}); node logs:\n{tails}"
        )
