"""The recent steps' ``ServerStats`` in a shared-memory ring, so a dead server's last ones survive.

The driver learns of applied steps by draining the server actor's progress record twice a
second. A server killed between two drains takes the stats of the steps it applied in between
with it, yet their weights are in the shared state (``service.ps.state``): without those stats
the epoch's sample counts and the history would miss steps. So the server also writes each
step's stats here, into entry ``step % capacity``, before it commits the step; the entry's step
field is written last, so a torn entry still names an older step and is not taken. The driver
reads the entries after its last recorded step once the server is gone (``read``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dtrain.service.ps.server import ServerStats
from dtrain.workers import exchange

RING_NAME = "stats.ring"
# Two seconds of 0.5 ms steps: far more than one driver poll interval (0.5 s) can leave behind.
CAPACITY = 4096
MAGIC = 0x64747261696E5231  # "dtrainR1"
HEADER = np.dtype([("magic", "<i8"), ("capacity", "<i8"), ("num_workers", "<i8")])
SCALARS = [
    ("step", "<i8"),
    ("samples", "<i8"),
    ("correct", "<i8"),
    ("finite", "<i8"),
    ("loss_sum", "<f8"),
    ("learning_rate", "<f8"),
    ("grad_norm", "<f8"),
    ("update_norm", "<f8"),
    ("aggregate_seconds", "<f8"),
    ("update_seconds", "<f8"),
    ("step_seconds", "<f8"),  # wall seconds since the update before ended
]


def entry_dtype(num_workers: int) -> np.dtype:
    return np.dtype([*SCALARS, ("worker_compute_seconds", "<f8", (num_workers,))])


class StatsRing:
    def __init__(self, entries: np.ndarray) -> None:
        self.entries = entries

    @classmethod
    def create(cls, directory: Path, num_workers: int, capacity: int = CAPACITY) -> StatsRing:
        """A fresh ring (entries at step -1), replacing the one there: read that first."""
        dtype = entry_dtype(num_workers)
        raw = exchange.map_array(
            directory / RING_NAME,
            np.dtype(np.uint8),
            HEADER.itemsize + capacity * dtype.itemsize,
            create=True,
        )
        raw[: HEADER.itemsize].view(HEADER)[0] = (MAGIC, capacity, num_workers)
        ring = cls(raw[HEADER.itemsize :].view(dtype))
        ring.entries["step"] = -1
        return ring

    @classmethod
    def open(cls, directory: Path) -> StatsRing:
        path = directory / RING_NAME
        size = path.stat().st_size
        raw = exchange.map_array(path, np.dtype(np.uint8), size, create=False)
        magic, capacity, num_workers = (int(v) for v in raw[: HEADER.itemsize].view(HEADER)[0])
        dtype = entry_dtype(num_workers)
        if magic != MAGIC or size != HEADER.itemsize + capacity * dtype.itemsize:
            raise ValueError(f"{path} is not a dtrain stats ring")
        return cls(raw[HEADER.itemsize :].view(dtype))

    def write(self, s: ServerStats, seconds: float) -> None:
        e = self.entries[s.step % len(self.entries)]
        e["step"] = -1  # torn from here until the last store below
        for name in ("samples", "correct", "loss_sum", "learning_rate", "grad_norm"):
            e[name] = getattr(s, name)
        for name in ("update_norm", "aggregate_seconds", "update_seconds"):
            e[name] = getattr(s, name)
        e["finite"] = s.finite
        e["step_seconds"] = seconds
        e["worker_compute_seconds"] = s.worker_compute_seconds
        e["step"] = s.step

    def read(self, after: int, upto: int) -> list[tuple[ServerStats, float]] | None:
        """The stats of steps ``after + 1 .. upto`` with their seconds, oldest first; None when
        the ring no longer holds every one of them."""
        out = []
        for step in range(after + 1, upto + 1):
            e = self.entries[step % len(self.entries)]
            if int(e["step"]) != step:
                return None
            stats = ServerStats(
                step=step,
                samples=int(e["samples"]),
                loss_sum=float(e["loss_sum"]),
                correct=int(e["correct"]),
                learning_rate=float(e["learning_rate"]),
                grad_norm=float(e["grad_norm"]),
                update_norm=float(e["update_norm"]),
                worker_compute_seconds=tuple(float(x) for x in e["worker_compute_seconds"]),
                aggregate_seconds=float(e["aggregate_seconds"]),
                update_seconds=float(e["update_seconds"]),
                finite=bool(e["finite"]),
            )
            out.append((stats, float(e["step_seconds"])))
        return out
