"""Peak resident memory of the driver and of a local Ray's actor processes, read from /proc."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# Ray titles an actor's process ``ray::<Class>`` (``ray::<Class>.<method>`` while it runs one).
ACTOR_TITLE = re.compile(r"^ray::(Worker|ParameterServer)(\.|$)")
PROC = Path("/proc")


def _ppid(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and ")", so split after the last ")".
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> set[int]:
    """Every process below ``root``: a local Ray's raylet, and so its actors, descend from the
    driver that started it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            parent = _ppid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def process_title(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """The process's peak resident set (VmHWM), or None where /proc does not say."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Restart this process's VmHWM from its current RSS (Linux >= 4.0: clear_refs "5")."""
    try:
        (PROC / "self" / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


class JobMemory:
    """Peak RSS of this driver and of the run's actor processes.

    The actors' processes are found by their title among ``candidates()``: by default this
    process's descendants, which holds when this process started the local Ray; on a cluster it
    did not start, that cluster's processes. Processes already titled so before the run (a
    previous run's, being killed) are left out. Shared object-store pages count once per process
    that touched them, so the sum is an upper bound.
    """

    def __init__(self, candidates: Callable[[], Iterable[int]] | None = None) -> None:
        self._candidates = candidates or (lambda: descendants(os.getpid()))
        self._before: set[int] = set()
        self.actors: dict[int, tuple[str, int]] = {}
        self.driver: int | None = None
        self.driver_reset = False

    def actor_pids(self) -> list[int]:
        """The run's actor processes (not those there before ``start``)."""
        return [pid for pid in self._actor_pids() if pid not in self._before]

    def _actor_pids(self) -> dict[int, str]:
        if not PROC.is_dir():
            return {}
        out = {}
        for pid in self._candidates():
            title = process_title(pid)
            if ACTOR_TITLE.match(title):
                out[pid] = title.split(".", 1)[0].removeprefix("ray::")
        return out

    def start(self) -> None:
        self._before = set(self._actor_pids())
        self.driver_reset = reset_peak_rss()

    def sample_actors(self) -> None:
        for pid, role in self._actor_pids().items():
            if pid in self._before:
                continue
            peak = peak_rss_bytes(pid)
            if peak is not None:
                self.actors[pid] = (role, max(peak, self.actors.get(pid, (role, 0))[1]))

    def sample_driver(self) -> None:
        self.driver = peak_rss_bytes()

    @property
    def total_bytes(self) -> int | None:
        if self.driver is None or not self.actors:
            return None
        return self.driver + sum(peak for _, peak in self.actors.values())

    def processes(self) -> list[dict[str, Any]]:
        rows = [{"role": "driver", "pid": os.getpid(), "peak_rss_bytes": self.driver}]
        rows += [
            {"role": role, "pid": pid, "peak_rss_bytes": peak}
            for pid, (role, peak) in sorted(self.actors.items())
        ]
        return rows
