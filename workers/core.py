"""A worker's job without Ray: hold the training rows, compute gradients on its parts per step.

The Ray actor in ``workers.actor`` is a thin shell around ``WorkerCore``; tests drive this class
directly.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from dtrain.workers.device import to_host
from dtrain.workers.model import ModelSpec, Network
from dtrain.workers.rows import TrainRows
from dtrain.workers.sampling import epoch_permutation, step_rows


def ignore_float_overflow() -> None:
    """Called once by each actor process (worker or server) when it starts.

    A diverging step overflows to inf/nan; the server sees the non-finite gradient, never
    applies it, and the driver stops with one line naming the step. NumPy's RuntimeWarnings,
    printed by every actor process and forwarded by Ray to the user's terminal, would bury that
    line under dozens of others.

    ``np.seterr`` is per thread, and the step engine runs segments on an actor's thread pool
    (threaded actors: the driver polls progress meanwhile), so the process-wide warnings filter
    is what holds everywhere; ``seterr`` also spares the warning's cost on this thread.
    """
    np.seterr(over="ignore", invalid="ignore")
    warnings.filterwarnings(
        "ignore", message=r"(overflow|invalid value) encountered", category=RuntimeWarning
    )


@dataclass(frozen=True)
class GradStats:
    """What a worker reports with each gradient; sums, so the server can weight by count."""

    rank: int
    loss_sum: float
    correct: int
    count: int
    compute_seconds: float


class WorkerCore:
    """One worker: all the training rows, and the parts of each step's batch it computes.

    ``parts`` may be reassigned between steps (a membership change): the rows a step trains on
    depend only on (seed, epoch, step), never on who computes them (``workers.sampling``).
    """

    def __init__(
        self,
        *,
        rank: int,
        spec: ModelSpec,
        rows: TrainRows,
        batch_size: int,
        parts: tuple[int, int],
        seed: int,
        xp: ModuleType = np,
    ) -> None:
        self.rank = rank
        self.xp = xp
        self.net = Network(spec, xp)
        self.rows = rows
        self.num_samples = rows.num_rows
        self.batch_size = batch_size
        self.parts = parts
        self.seed = seed
        # A device worker moves the split to the device once; per step only the weights go in
        # and the gradient out. A CPU worker gathers each step's rows from the shards instead.
        self.x: Any = None if xp is np else xp.asarray(rows.all_features())
        self.y: Any = rows.labels if xp is np else xp.asarray(rows.labels)
        # Reused by every step: no span of a batch is longer than the batch.
        self._x = np.empty((batch_size if xp is np else 0, rows.width), np.float32)
        self._grad = xp.empty(spec.num_params, dtype=xp.float32)
        self._epoch = -1
        self._perm = np.arange(0)
        self._batch_key: tuple[int, int, tuple[int, int]] | None = None
        self._batch: tuple[Any, Any] = (None, None)

    def permutation(self, epoch: int) -> np.ndarray:
        """The seeded shuffle of all training rows for ``epoch``; the same on every worker."""
        if epoch != self._epoch:
            self._perm = epoch_permutation(self.seed, epoch, self.num_samples)
            self._epoch = epoch
        return self._perm

    def batch_indices(self, epoch: int, step: int) -> np.ndarray:
        """This worker's rows of step ``step`` of ``epoch``: its parts of the batch, sorted."""
        return step_rows(self.permutation(epoch), self.batch_size, step, self.parts)

    def prefetch(self, epoch: int, step: int) -> tuple[Any, Any]:
        """This worker's features and labels of step ``step`` of ``epoch``, gathered once: a
        worker that gathers the next step's rows while it waits for that step's weights takes
        the gather off the step's critical path."""
        key = (epoch, step, self.parts)
        if key != self._batch_key:
            idx = self.batch_indices(epoch, step)  # sorted: sequential reads of the shards
            if self.xp is np:
                self._batch = (self.rows.features(idx, self._x), self.y[idx])
            else:
                rows = self.xp.asarray(idx)
                self._batch = (self.x[rows], self.y[rows])
            self._batch_key = key
        return self._batch

    def compute_gradients(
        self, weights: np.ndarray, epoch: int, step: int, grad_out: np.ndarray | None = None
    ) -> tuple[np.ndarray, GradStats]:
        """Gradient of the summed loss over this worker's rows of step ``step`` of ``epoch``.

        Deterministic in (weights, epoch, step, parts), so a retried step gives the same bits.
        """
        start = time.perf_counter()
        xp = self.xp
        w = xp.asarray(weights)  # host -> device once per step (no copy on the CPU)
        x, y = self.prefetch(epoch, step)
        # On the CPU the gradient is written straight into ``grad_out`` (shared memory).
        buf = grad_out if grad_out is not None and xp is np else self._grad
        loss, correct, grad = self.net.loss_and_grad(w, x, y, buf)
        grad = to_host(grad)  # the server aggregates host arrays, whatever device sent them
        if grad_out is not None and grad is not grad_out:
            grad_out[...] = grad
        stats = GradStats(self.rank, loss, correct, len(y), time.perf_counter() - start)
        return grad, stats
