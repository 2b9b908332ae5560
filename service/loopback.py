"""A real multi-node Ray cluster on this machine: `ray start --head` plus `ray start --address`.

Used by the cluster tests and by ``dtrain bench --two-node``. Each node gets its own temp dir
and ports (two Ray nodes on one machine otherwise fight over the dashboard agent's port), token
authentication with a token made for this cluster alone, and the venv on its PATH as a cluster
image would have dtrain installed.

Loopback. Ray binds its GCS, raylets, workers and agents to loopback only when the node IP is
127.0.0.1, and keeps a node IP of 127.0.0.1 only in its single-machine mode
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; see service/train/localray.py), where ``ray start``
refuses to add a second node. Every node here runs in that mode, and the second node's
``ray start`` has that one refusal lifted (``JOIN_CODE``), so both nodes are 127.0.0.1 and
nothing listens on another interface.

Teardown ends only this cluster's processes (each node's session, and those that carry its
marker in their environment), never `ray stop`, which would stop every Ray here.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
MARKER = "DTRAIN_LOOPBACK_CLUSTER"
LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
START_TIMEOUT_SECONDS = 180.0
# `ray start --address` with Ray's refusal of a second node in single-machine mode lifted: only
# the CLI's own check sees the cluster switch on; the node IP is still resolved with it off.
JOIN_CODE = (
    "import sys, types; from ray._private import ray_constants; from ray.scripts import scripts; "
    "scripts.ray_constants = types.SimpleNamespace("
    "**{**vars(ray_constants), 'ENABLE_RAY_CLUSTER': True}); "
    "sys.argv[0] = 'ray'; scripts.main()"
)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held together while chosen, so all differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def session_id(pid: int) -> int | None:
    """The session of a live process; None for one gone or a zombie (nothing left to end)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[3])  # state, ppid, pgrp, session


def in_sessions(sessions: set[int]) -> set[int]:
    """The live processes of these sessions."""
    return {int(e) for e in os.listdir("/proc") if e.isdigit() and session_id(int(e)) in sessions}


def end(find: Callable[[], set[int]], term_grace: float) -> None:
    """SIGTERM what ``find`` finds, then SIGKILL what is left after ``term_grace`` seconds."""
    for sig, grace in ((signal.SIGTERM, term_grace), (signal.SIGKILL, 5.0)):
        for pid in find():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while find() and time.monotonic() < deadline:
            time.sleep(0.2)


@dataclass
class LoopbackCluster:
    """``num_nodes`` Ray nodes of ``cpus_per_node`` CPUs each, on 127.0.0.1, under ``root``
    (keep it short and under /tmp: Ray's unix socket paths must stay below ~107 characters)."""

    root: Path
    num_nodes: int = 2
    cpus_per_node: int = 2
    # More environment for the nodes and the clients (the tests' data and runs directories).
    extra_env: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    gcs_address: str = ""
    dashboard_url: str = ""
    # Each node's `ray start` runs in a session of its own, which its daemons and workers keep.
    sessions: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The nodes' environment, and the clients': the same token, no other cluster's address."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH")
        }
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            RAY_USAGE_STATS_ENABLED="0",
        )
        env[LOOPBACK_VARIABLE] = "0"
        env.update(self.extra_env)
        # Inherited by every process a node starts, workers included: what teardown looks for.
        env[MARKER] = str(self.root)
        return env

    def start(self) -> None:
        """Start every node and wait until all are alive; on failure, stop what started."""
        try:
            self._start_node(head=True)
            for _ in range(self.num_nodes - 1):
                self._start_node(head=False)
            self._wait_for_nodes(self.num_nodes)
        except BaseException:
            self.stop()
            raise

    def _start_node(self, head: bool) -> None:
        ports = free_ports(9)
        # Worker ports outside Ray's default range (10002-19999) that local Rays use.
        base = random.randrange(20000, 32000, 100)
        name = "head" if head else f"node{len(self.sessions)}"
        args = [
            "start",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus_per_node}",
            f"--object-store-memory={256 * 2**20}",
            f"--temp-dir={self.root / name}",
            f"--node-manager-port={ports[0]}",
            f"--object-manager-port={ports[1]}",
            f"--metrics-export-port={ports[2]}",
            f"--dashboard-agent-listen-port={ports[3]}",
            f"--dashboard-agent-grpc-port={ports[4]}",
            f"--runtime-env-agent-port={ports[5]}",
            f"--min-worker-port={base}",
            f"--max-worker-port={base + 99}",
            "--disable-usage-stats",
        ]
        if head:
            self.gcs_address = f"127.0.0.1:{ports[6]}"
            self.dashboard_url = f"http://127.0.0.1:{ports[7]}"
            cmd = [str(BIN / "ray"), *args]
            cmd += [
                "--head",
                f"--port={ports[6]}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={ports[7]}",
                f"--ray-client-server-port={ports[8]}",
            ]
        else:
            cmd = [sys.executable, "-c", JOIN_CODE, *args, f"--address={self.gcs_address}"]
        proc = subprocess.Popen(
            cmd,
            env=self.env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.sessions.append(proc.pid)
        try:
            out, _ = proc.communicate(timeout=START_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(
                f"ray start ({name}) did not finish in {START_TIMEOUT_SECONDS:g}s"
            ) from None
        if proc.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed with {proc.returncode}:\n{out[-3000:]}")

    def add_node(self) -> None:
        """One more node, joined to the running head; returns when the cluster counts it."""
        self._start_node(head=False)
        self._wait_for_nodes(len(self.sessions))

    def stop_node(self, index: int) -> None:
        """Stop node ``index`` (not the head) the way ``ray stop`` does: SIGTERM, which lets
        its raylet tell the head it is leaving, then SIGKILL what is left after a grace."""
        if index == 0:
            raise ValueError("stopping the head stops the cluster: use stop()")
        session = self.sessions[index]
        # Ten seconds: a raylet's orderly exit tells the head before the run notices the node.
        end(lambda: in_sessions({session}), term_grace=10.0)

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def node_ids(self) -> set[str]:
        summary = self.api("/nodes?view=summary")["data"]["summary"]
        return {n["raylet"]["nodeId"] for n in summary if n["raylet"]["state"] == "ALIVE"}

    def _wait_for_nodes(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if len(self.node_ids()) == n:
                    return
            except OSError:
                pass  # the dashboard is still starting
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach {n} live nodes in {timeout:g}s")
            time.sleep(0.5)

    def marked(self) -> list[int]:
        needle = f"{MARKER}={self.root}\0".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if needle in (proc / "environ").read_bytes():
                        pids.append(int(proc.name))
                except OSError:
                    continue  # gone, or not ours to read
        return pids

    def processes(self) -> set[int]:
        """Every live process of this cluster: in a node's session, or carrying its marker
        (Ray's setproctitle can overwrite the environment /proc shows; the session stays)."""
        return set(self.marked()) | in_sessions(set(self.sessions))

    def stop(self) -> None:
        end(self.processes, term_grace=5.0)
        shutil.rmtree(self.root, ignore_errors=True)
