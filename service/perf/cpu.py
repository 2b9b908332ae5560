"""The driver's share of the job's CPU time over the measured steps, read from /proc.

The step engine's promise is that the driver does no per-step work; this is how the bench
checks it: CPU seconds (user + system, all threads) of the driver against those of the driver
and the run's actor processes together, between two samples.
"""

from __future__ import annotations

import os

from dtrain.service.perf.memory import PROC, JobMemory

# Below this much job CPU between the samples (a handful of steps inside one poll of the
# driver) the share says nothing: no figure rather than a wrong one.
MIN_JOB_CPU_SECONDS = 0.2


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU seconds of a process so far, or None where /proc does not say."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ..." : utime and stime are fields 14 and 15, counted after the ")".
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuShare:
    """Two samples of the driver's and the actors' CPU seconds; ``driver_ratio`` between them."""

    def __init__(self, memory: JobMemory) -> None:
        self.memory = memory  # finds the run's actor processes
        self._first: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None

    def _sample(self) -> tuple[float, float]:
        actors = sum(cpu_seconds(pid) or 0.0 for pid in self.memory.actor_pids())
        return cpu_seconds() or 0.0, actors

    def first(self) -> None:
        self._first = self._sample()

    def last(self) -> None:
        self._last = self._sample()

    @property
    def driver_ratio(self) -> float | None:
        if self._first is None or self._last is None:
            return None
        driver = self._last[0] - self._first[0]
        actors = self._last[1] - self._first[1]
        if driver + actors < MIN_JOB_CPU_SECONDS:
            return None
        return driver / (driver + actors)
