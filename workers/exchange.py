"""Step data through shared memory when the server and every worker share one node.

Returning a 1.6 MB array from an actor through Ray's object store costs about 3 ms here
(docs/performance.md), and a synchronous step does that twice in sequence. On one node the
weights and one gradient buffer per worker can instead live in files under /dev/shm that every
actor maps: the server writes each update's weights into the next slot, each worker writes its
gradient in place, and two small facts per step go through pipes (``workers.steplink``).

The server's whole state lives here too (``service.ps.state``), so that a server killed
mid-run leaves its last complete step for the next one to continue from; the server holds
``LOCK_NAME`` for life, so the next one knows when the one before is gone.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def weights_name(slot: int) -> str:
    return f"weights-{slot:03d}.f32"


def exchange_root() -> Path:
    """tmpfs where there is one (pages never hit a disk), else the temp directory."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def new_exchange_dir() -> Path:
    """A fresh directory name, tagged with the driver's pid so a later run can clean up after a
    driver that was killed before it could (tmpfs pages are memory)."""
    sweep_stale()
    return exchange_root() / f"dtrain-{os.getpid()}-{secrets.token_hex(4)}"


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Remove exchange directories whose driver process no longer exists; returns them."""
    removed = []
    for path in (root or exchange_root()).glob("dtrain-*-*"):
        pid = path.name.split("-")[1]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def grad_name(rank: int, slot: int = 0) -> str:
    return f"grad-{rank:05d}-{slot:03d}.f32"


def map_array(path: Path, dtype: np.dtype, count: int, create: bool) -> np.ndarray:
    """``count`` items of ``dtype`` backed by ``path``; the mapping outlives the closed
    descriptor. ``create`` replaces any file there with a zeroed one: a process that still maps
    the old one (a killed group's actor not yet gone) keeps writing into the old pages only."""
    nbytes = count * dtype.itemsize
    if create:
        path.unlink(missing_ok=True)
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.ftruncate(fd, nbytes)
        elif os.fstat(fd).st_size != nbytes:
            raise ValueError(f"{path} holds {os.fstat(fd).st_size} bytes, expected {nbytes}")
        buf = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    return np.frombuffer(buf, dtype=dtype)


def _map(path: Path, num_params: int, create: bool) -> np.ndarray:
    return map_array(path, np.dtype(np.float32), num_params, create)


def num_weight_slots(staleness: int) -> int:
    """Weight slot ``j % (k + 2)`` holds the weights after update ``j``: the k + 1 that steps
    still read, and one more that update t writes while every other slot stays whole, so a
    server killed mid-update leaves the last complete step and the k before it intact."""
    return staleness + 2


def create_grads(directory: Path, num_params: int, num_workers: int, num_slots: int) -> None:
    """Fresh gradient files for every worker (the server does this at every start)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for rank in range(num_workers):
        for slot in range(num_slots):
            _map(directory / grad_name(rank, slot), num_params, create=True)


LOCK_NAME = "server.lock"


def lock(directory: Path, timeout: float) -> int:
    """Hold the exchange directory's server lock; returns its descriptor, held until the
    process exits. The kernel drops a killed process's lock, so holding it proves the server
    before is gone and writes nothing more into the state."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise TimeoutError(
                    f"the server before still holds {directory / LOCK_NAME} after {timeout:g}s"
                ) from None
            time.sleep(0.01)


def wait_unlocked(directory: Path, timeout: float) -> None:
    """Until no process holds the server lock (the killed server has exited)."""
    os.close(lock(directory, timeout))


def create(
    directory: Path, num_params: int, num_workers: int, num_slots: int = 1
) -> list[np.ndarray]:
    """Make the weight slots and gradient files (the server does this); returns the slots.

    One slot for synchronous training; ``staleness + 1`` for bounded staleness, where weight slot
    ``j % num_slots`` holds the weights after update ``j`` and gradient slot ``t % num_slots``
    a worker's gradient for step ``t`` (it may run ahead of the update reading the last one).
    """
    create_grads(directory, num_params, num_workers, num_slots)
    return [_map(directory / weights_name(i), num_params, create=True) for i in range(num_slots)]


def open_weights(directory: Path, num_params: int, num_slots: int = 1) -> list[np.ndarray]:
    return [_map(directory / weights_name(i), num_params, create=False) for i in range(num_slots)]


def open_grads(directory: Path, rank: int, num_params: int, num_slots: int = 1) -> list[np.ndarray]:
    return [
        _map(directory / grad_name(rank, slot), num_params, create=False)
        for slot in range(num_slots)
    ]
