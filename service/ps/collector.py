"""The server's step engine across nodes: workers push gradients to it and pull weights from it.

Without shared memory the arrays travel through Ray, but still without the driver: each worker
calls the server actor itself (``Worker.run`` with the server's handle), ``weights(j)`` then
``push(step, rank, grad, stats)``, and the server applies a step as soon as every rank's push
for it is in, summing in rank order whatever order they arrived in. The actor is threaded, so
the workers' blocking ``weights`` calls wait on one condition while pushes come in.

A push for a step already applied is dropped: a worker that Ray restarted re-runs its segment
from the server's current step, so a replay changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

from dtrain.service.ps.server import ServerCore, ServerStats
from dtrain.workers.core import GradStats
from dtrain.workers.steplink import PeerTimeout


class PushCollector:
    def __init__(
        self,
        core: ServerCore,
        num_workers: int,
        record: deque[tuple[ServerStats, float]],
        timeout: float,
    ) -> None:
        self.core = core
        self.num_workers = num_workers
        self.record = record  # shared with the actor's ``progress``
        self.timeout = timeout
        self.failed = False  # a step was not finite: nothing more is applied
        self._cond = threading.Condition()
        self._pending: dict[int, dict[int, tuple[np.ndarray, GradStats]]] = {}
        self._last_done = time.perf_counter()

    def push(self, step: int, rank: int, grad: np.ndarray, stats: GradStats) -> None:
        with self._cond:
            if step <= self.core.step or self.failed:
                return
            self._pending.setdefault(step, {})[rank] = (grad, stats)
            while not self.failed:
                ready = self._pending.get(self.core.step + 1, {})
                if len(ready) < self.num_workers:
                    break
                nxt = self.core.step + 1
                del self._pending[nxt]
                ranks = [ready[r] for r in range(self.num_workers)]  # the order of the sum
                result = self.core.apply_gradients(
                    nxt, [g for g, _ in ranks], [s for _, s in ranks]
                )
                now = time.perf_counter()
                self.record.append((result, now - self._last_done))
                self._last_done = now
                self.failed = not result.finite
            self._cond.notify_all()

    def weights(self, j: int) -> np.ndarray | None:
        """The weights after update ``j`` once it is applied; None once a step failed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.failed or self.core.step >= j, self.timeout):
                raise PeerTimeout(f"update {j} was not applied within {self.timeout:g}s")
            if self.failed:
                return None
            # No copy: updates write other slots, and the one that rewrites this one (j+k+2)
            # needs this worker's gradient of a step that reads it.
            return self.core.weights_at(j)

    def drain_state(self) -> tuple[list[tuple[ServerStats, float]], dict[str, Any]]:
        with self._cond:
            steps = list(self.record)
            self.record.clear()
            return steps, self.core.state_dict()

    def state(self) -> dict[str, Any]:
        """The state at a whole step: never in the middle of an update another push runs."""
        with self._cond:
            return self.core.state_dict()

    def wait_until(self, first: int, last: int) -> int:
        """Until update ``last`` is applied (or a step failed); ``PeerTimeout`` when no update
        comes for ``timeout`` seconds. Updates ``first..last`` are one segment."""
        with self._cond:
            if self.core.step < first:  # time the first step from the segment's start
                self._last_done = time.perf_counter()
            seen, deadline = self.core.step, time.monotonic() + self.timeout
            while not self.failed and self.core.step < last:
                if self.core.step > seen:  # the timeout is per update, not per segment
                    seen, deadline = self.core.step, time.monotonic() + self.timeout
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerTimeout(f"no gradients for step {seen + 1} within {self.timeout:g}s")
                self._cond.wait(left)
            return self.core.step
