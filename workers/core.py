"""A worker's job without Ray: own some training rows, compute gradients on one slice per step.

The Ray actor in ``workers.actor`` is a thin shell around ``WorkerCore``; tests drive this class
directly.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from dtrain.workers.device import to_host
from dtrain.workers.model import ModelSpec, Network


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
    def __init__(
        self,
        *,
        rank: int,
        spec: ModelSpec,
        images: np.ndarray,
        labels: np.ndarray,
        batch_slice: int,
        seed: int,
        xp: ModuleType = np,
    ) -> None:
        self.rank = rank
        self.xp = xp
        self.net = Network(spec, xp)
        # Rows move to the device once; per step only the weights go in and the gradient out.
        self.x = xp.asarray(images)  # (n, 784) float32 in [0, 1]
        self.y = xp.asarray(labels.astype(np.int64))  # (n,)
        self.num_samples = int(images.shape[0])
        self.batch_slice = batch_slice
        self.seed = seed
        self._grad = xp.empty(spec.num_params, dtype=xp.float32)
        self._epoch = -1
        self._perm = np.arange(0)

    def permutation(self, epoch: int) -> np.ndarray:
        """This worker's seeded shuffle of its own rows for ``epoch``; the same on every retry."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch, self.rank])
            self._perm = rng.permutation(self.num_samples)
            self._epoch = epoch
        return self._perm

    def batch_indices(self, epoch: int, step: int) -> np.ndarray:
        b = self.batch_slice
        return self.permutation(epoch)[step * b : (step + 1) * b]

    def compute_gradients(
        self, weights: np.ndarray, epoch: int, step: int, grad_out: np.ndarray | None = None
    ) -> tuple[np.ndarray, GradStats]:
        """Gradient of the summed loss over this worker's slice of step ``step`` of ``epoch``.

        Deterministic in (weights, epoch, step), so a retried step gives the same bits.
        """
        start = time.perf_counter()
        idx = np.sort(self.batch_indices(epoch, step))  # sorted: sequential reads of self.x
        xp = self.xp
        w = xp.asarray(weights)  # host -> device once per step (no copy on the CPU)
        rows = idx if xp is np else xp.asarray(idx)
        # On the CPU the gradient is written straight into ``grad_out`` (shared memory).
        buf = grad_out if grad_out is not None and xp is np else self._grad
        loss, correct, grad = self.net.loss_and_grad(w, self.x[rows], self.y[rows], buf)
        grad = to_host(grad)  # the server aggregates host arrays, whatever device sent them
        if grad_out is not None and grad is not grad_out:
            grad_out[...] = grad
        stats = GradStats(self.rank, loss, correct, len(idx), time.perf_counter() - start)
        return grad, stats
