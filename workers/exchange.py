"""Step data through shared memory when the server and every worker share one node.

Returning a 1.6 MB array from an actor through Ray's object store costs about 3 ms here
(docs/performance.md), and a synchronous step does that twice in sequence. On one node the
weights and one gradient buffer per worker can instead live in files under /dev/shm that every
actor maps: the server updates the weights in place, each worker writes its gradient in place,
and Ray carries only the small per-step stats, whose ObjectRefs still order the steps.

Ordering makes single buffers safe: a worker's step-s task takes the server's step s-1 stats as
an argument, so it starts after that update wrote the weights; the server's step-s update takes
every worker's step-s stats, so it starts after every worker has finished reading the weights
and writing its gradient.
"""

from __future__ import annotations

import mmap
import os
import secrets
import shutil
import tempfile
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


def _map(path: Path, num_params: int, create: bool) -> np.ndarray:
    """A float32 vector backed by ``path``; the mapping outlives the closed descriptor."""
    nbytes = num_params * 4
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    fd = os.open(path, flags, 0o600)
    try:
        if create:
            os.ftruncate(fd, nbytes)
        elif os.fstat(fd).st_size != nbytes:
            raise ValueError(f"{path} holds {os.fstat(fd).st_size} bytes, expected {nbytes}")
        buf = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    return np.frombuffer(buf, dtype=np.float32)


def create(
    directory: Path, num_params: int, num_workers: int, num_slots: int = 1
) -> list[np.ndarray]:
    """Make the weight slots and gradient files (the server does this); returns the slots.

    One slot for synchronous training; ``staleness + 1`` for bounded staleness, where weight slot
    ``j % num_slots`` holds the weights after update ``j`` and gradient slot ``t % num_slots``
    a worker's gradient for step ``t`` (it may run ahead of the update reading the last one).
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for rank in range(num_workers):
        for slot in range(num_slots):
            _map(directory / grad_name(rank, slot), num_params, create=True)
    return [_map(directory / weights_name(i), num_params, create=True) for i in range(num_slots)]


def open_weights(directory: Path, num_params: int, num_slots: int = 1) -> list[np.ndarray]:
    return [_map(directory / weights_name(i), num_params, create=False) for i in range(num_slots)]


def open_grads(directory: Path, rank: int, num_params: int, num_slots: int = 1) -> list[np.ndarray]:
    return [
        _map(directory / grad_name(rank, slot), num_params, create=False)
        for slot in range(num_slots)
    ]
