"""The per-step signals between the server and the workers on one node: named pipes.

The arrays already live in shared memory (``workers.exchange``); a step only needs two facts to
cross: "the weights after update t are written" (server -> each worker, an 8-byte token) and
"my gradient for step t is written" (worker -> server, one small record with the worker's
sums). A FIFO per direction and worker carries them: no Ray task, no driver. Writes of a few
bytes to a pipe are atomic, reads wait in ``poll`` with a deadline, so a dead or stopped peer
surfaces as ``PeerTimeout`` after ``timeout`` seconds instead of a hang.

Each end opens its FIFOs read-write: opening never blocks on the peer, and the pipe (with
anything buffered in it) lives as long as either process holds it.
"""

from __future__ import annotations

import os
import select
import struct
import time
from pathlib import Path

from dtrain.workers.core import GradStats

TOKEN = struct.Struct("<q")  # the update just applied
# step, loss_sum, correct, count, compute_seconds: 40 bytes, well under PIPE_BUF (atomic)
RECORD = struct.Struct("<qdqqd")


class PeerTimeout(Exception):
    """A peer sent nothing within the step timeout: it is dead, stopped or hung."""


def to_server(rank: int) -> str:
    return f"grad-ready-{rank:05d}.fifo"


def to_worker(rank: int) -> str:
    return f"weights-ready-{rank:05d}.fifo"


def make_fifos(directory: Path, num_workers: int) -> None:
    """Both pipes of every worker (the server does this, with the exchange files). Pipes of
    a server before are replaced: its killed peers may still hold them, and must not reach
    the new ones."""
    for rank in range(num_workers):
        for name in (to_server(rank), to_worker(rank)):
            (directory / name).unlink(missing_ok=True)
            os.mkfifo(directory / name, 0o600)


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)


def _read(fd: int, size: int, deadline: float, what: str) -> bytes:
    """Exactly ``size`` bytes from ``fd``, or ``PeerTimeout`` at ``deadline``."""
    data = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise PeerTimeout(what)
        try:
            data += os.read(fd, size - len(data))
        except BlockingIOError:  # woken, but another reader or a spurious wake-up: wait again
            continue
    return data


class WorkerLink:
    """A worker's end: wait for an update, announce a gradient."""

    def __init__(self, directory: Path, rank: int, timeout: float) -> None:
        self.rank = rank
        self.timeout = timeout
        self._tokens = _open(directory / to_worker(rank))
        self._grads = _open(directory / to_server(rank))
        self.known = -1  # the newest update this worker has heard of

    def start(self, applied: int) -> None:
        """A segment begins with the server at update ``applied`` (the driver saw it there)."""
        self.known = max(self.known, applied)

    def wait_update(self, j: int) -> None:
        deadline = time.monotonic() + self.timeout
        while self.known < j:
            what = f"worker {self.rank} heard of no update {j} within {self.timeout:g}s"
            data = _read(self._tokens, TOKEN.size, deadline, what)
            # Tokens arrive in order and only the newest matters: take all that are there.
            # Every write is one whole token and 4096 is a multiple of its size, so reads
            # stay aligned.
            while True:
                try:
                    more = os.read(self._tokens, 4096)
                except BlockingIOError:
                    break
                if not more:
                    break
                data = more
            # max: tokens left over from an earlier segment may be older than ``start``'s.
            self.known = max(self.known, TOKEN.unpack(data[-TOKEN.size :])[0])

    def send(self, step: int, stats: GradStats) -> None:
        record = RECORD.pack(
            step, stats.loss_sum, stats.correct, stats.count, stats.compute_seconds
        )
        os.write(self._grads, record)


class ServerLink:
    """The server's end: collect every worker's record for a step, announce an update."""

    def __init__(self, directory: Path, num_workers: int, timeout: float) -> None:
        self.timeout = timeout
        self._grads = [_open(directory / to_server(r)) for r in range(num_workers)]
        self._tokens = [_open(directory / to_worker(r)) for r in range(num_workers)]

    def receive(self, step: int) -> list[GradStats]:
        """Every worker's stats for ``step``, in rank order (the order of the gradient sum)."""
        deadline = time.monotonic() + self.timeout
        out = []
        for rank, fd in enumerate(self._grads):
            what = f"no gradient from worker {rank} for step {step} within {self.timeout:g}s"
            got, loss_sum, correct, count, seconds = RECORD.unpack(
                _read(fd, RECORD.size, deadline, what)
            )
            if got != step:
                raise RuntimeError(f"worker {rank} sent step {got}, expected step {step}")
            out.append(GradStats(rank, loss_sum, correct, count, seconds))
        return out

    def publish(self, step: int) -> None:
        token = TOKEN.pack(step)
        for fd in self._tokens:
            os.write(fd, token)
