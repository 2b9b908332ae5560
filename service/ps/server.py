"""The parameter server: holds the weights and optimizer state, applies one update per step.

``ServerCore`` is plain Python; ``ParameterServer`` (built by ``server_actor``) is the Ray actor
shell around it, following the classic Ray parameter-server example: workers'
``compute_gradients(weights)`` results are passed straight into ``apply_gradients(*grads)``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dtrain.service.ps.optim import Optimizer, OptimizerConfig
from dtrain.workers import exchange, steplink
from dtrain.workers.core import GradStats, ignore_float_overflow
from dtrain.workers.model import ModelSpec
from dtrain.workers.steplink import ServerLink

if TYPE_CHECKING:
    from dtrain.service.ps.collector import PushCollector


@dataclass(frozen=True)
class ServerStats:
    """What one update reports back to the driver (small: travels inline, not via plasma)."""

    step: int
    samples: int
    loss_sum: float
    correct: int
    learning_rate: float
    grad_norm: float
    update_norm: float
    worker_compute_seconds: tuple[float, ...]
    aggregate_seconds: float
    update_seconds: float
    finite: bool


def norm(v: np.ndarray) -> float:
    """L2 norm through BLAS sdot: a metric, so float32 accumulation is precise enough."""
    return float(np.sqrt(np.dot(v, v)))


def check_params(spec: ModelSpec, params: np.ndarray) -> None:
    """The server's weights are one flat float32 vector of the model's size, nothing else."""
    if params.shape != (spec.num_params,) or params.dtype != np.float32:
        raise ValueError(f"params must be float32 of shape ({spec.num_params},)")


class ServerCore:
    def __init__(
        self,
        *,
        spec: ModelSpec,
        optimizer: OptimizerConfig,
        params: np.ndarray,
        total_steps: int,
        step: int = 0,
        velocity: np.ndarray | None = None,
        buffer: np.ndarray | None = None,
        staleness: int = 0,
        history: np.ndarray | None = None,
    ) -> None:
        check_params(spec, params)
        self.spec = spec
        # Own, writable weights: a copy, or the shared-memory buffer the workers read.
        if buffer is None:
            self.params = np.array(params, dtype=np.float32)
        else:
            buffer[...] = params
            self.params = buffer
        self.optimizer = Optimizer(optimizer, spec.num_params)
        if velocity is not None:
            self.optimizer.velocity[...] = velocity
        self.total_steps = total_steps
        self.step = step
        # Bounded staleness k: step t's gradients use the weights after update max(0, t-1-k),
        # so the last k weights before the current ones are part of the state.
        self.staleness = staleness
        if staleness and history is not None and history.shape != (staleness, spec.num_params):
            raise ValueError(f"history must have shape ({staleness}, {spec.num_params})")
        older = list(history) if staleness and history is not None else [params] * staleness
        self.recent: deque[np.ndarray] = deque(
            [np.array(w, dtype=np.float32) for w in older], maxlen=staleness or None
        )
        self._sum = np.empty_like(self.params)
        self._before = np.empty_like(self.params)

    def apply_gradients(
        self, step: int, grads: list[np.ndarray], stats: list[GradStats]
    ) -> ServerStats:
        """Average the workers' summed gradients by sample count and take one optimizer step.

        ``step`` is the 1-based number this update will have; it must be the next one, so a
        replayed call cannot apply the same gradients twice.
        """
        if step != self.step + 1:
            raise ValueError(f"expected step {self.step + 1}, got step {step}")
        t0 = time.perf_counter()
        count = sum(s.count for s in stats)
        total = self._sum
        total[...] = grads[0]
        for g in grads[1:]:  # fixed rank order: the float sum is the same on every replay
            total += g
        if count:
            total *= np.float32(1.0 / count)
        grad_norm = norm(total)
        t1 = time.perf_counter()
        finite = bool(np.isfinite(grad_norm))
        lr = self.optimizer.config.learning_rate_at(self.step, self.total_steps)
        update_norm = 0.0
        if finite and count:
            # Never apply a non-finite update: the weights stay at the last good values.
            np.copyto(self._before, self.params)
            if self.staleness:
                self.recent.append(self._before.copy())
            self.optimizer.step(self.params, total, lr)
            update_norm = norm(np.subtract(self.params, self._before, out=self._before))
            self.step = step
        loss_sum = sum(s.loss_sum for s in stats)
        return ServerStats(
            step=step,
            samples=count,
            loss_sum=loss_sum,
            correct=sum(s.correct for s in stats),
            learning_rate=lr,
            grad_norm=grad_norm,
            update_norm=update_norm,
            worker_compute_seconds=tuple(s.compute_seconds for s in stats),
            aggregate_seconds=t1 - t0,
            update_seconds=time.perf_counter() - t1,
            finite=finite and bool(np.isfinite(loss_sum)),
        )

    def weights_at(self, j: int) -> np.ndarray:
        """The weights after update ``j``, for one of the last ``staleness + 1`` updates."""
        back = self.step - j
        if not 0 <= back <= self.staleness:
            raise ValueError(f"weights after update {j} are not kept (now at {self.step})")
        return self.params if back == 0 else self.recent[-back]

    def state(self) -> dict[str, Any]:
        history = np.stack(list(self.recent)) if self.staleness else None
        return {
            "params": self.params,
            "velocity": self.optimizer.velocity,
            "step": self.step,
            "history": history,
        }


class ParameterServer:
    """Ray actor shell: unpacks ``*args`` (gradients then their stats) for ``ServerCore``.

    Training runs in segments of steps that the driver starts with ``run(first, last)`` and
    follows with ``progress``; the actor is threaded for that. With ``exchange_dir`` set, the
    weights and gradients live in shared memory (``workers.exchange``) and ``run`` steps by
    itself, told by the workers through ``workers.steplink`` when their gradients are written.
    Without, the workers ``push`` their gradients and pull ``weights`` through Ray
    (``service.ps.collector``) and ``run`` waits for the segment's last update.
    """

    def __init__(
        self,
        *,
        exchange_dir: str | None = None,
        num_workers: int = 0,
        step_timeout: float = 120.0,
        **kwargs: Any,
    ) -> None:
        ignore_float_overflow()
        self.grads: list[list[np.ndarray]] = []
        self.slots: list[np.ndarray] = []
        self.link: ServerLink | None = None
        # (stats, seconds since the previous update ended) per step not yet fetched by the
        # driver; at most a segment's worth, since the driver drains it at every boundary.
        self.record: deque[tuple[ServerStats, float]] = deque()
        staleness = kwargs.get("staleness", 0)
        if exchange_dir is not None:
            spec = kwargs["spec"]
            directory = Path(exchange_dir)
            self.slots = exchange.create(directory, spec.num_params, num_workers, staleness + 1)
            steplink.make_fifos(directory, num_workers)
            self.link = ServerLink(directory, num_workers, step_timeout)
            if not staleness:
                kwargs["buffer"] = self.slots[0]  # synchronous: update the shared weights in place
            # grads[slot][rank]
            per_rank = [
                exchange.open_grads(directory, r, spec.num_params, staleness + 1)
                for r in range(num_workers)
            ]
            self.grads = [list(g) for g in zip(*per_rank, strict=True)]
        self.core = ServerCore(**kwargs)
        from dtrain.service.ps.collector import PushCollector  # it builds on ServerCore

        self.collector: PushCollector | None = (
            PushCollector(self.core, num_workers, self.record, step_timeout)
            if exchange_dir is None and num_workers
            else None
        )
        if staleness and self.slots:
            core = self.core
            for j in range(max(0, core.step - staleness), core.step + 1):
                self.slots[j % len(self.slots)][...] = core.weights_at(j)

    def ready(self) -> int:
        return self.core.step

    def run(self, first: int, last: int) -> int:
        """Apply updates ``first..last`` as the workers' gradients arrive; returns the last
        update applied (short of ``last`` only when a step was not finite)."""
        if self.collector is not None:
            return self.collector.wait_until(first, last)
        assert self.link is not None, "started without an exchange directory or workers"
        before = time.perf_counter()
        for step in range(first, last + 1):
            stats = self.link.receive(step)
            result = self.core.apply_gradients(step, self.grads[step % len(self.grads)], stats)
            if result.finite and self.core.staleness:
                # Safe to overwrite: this slot's old weights were read only by this step's
                # workers, whose gradients are in.
                self.slots[step % len(self.slots)][...] = self.core.params
            now = time.perf_counter()
            self.record.append((result, now - before))
            before = now
            if not result.finite:
                return step - 1  # the driver stops the run; the workers wait for nothing more
            self.link.publish(step)
        return last

    def progress(self) -> list[tuple[ServerStats, float]]:
        """The steps applied since the last call, oldest first, with their wall seconds."""
        out = []
        while self.record:
            out.append(self.record.popleft())
        return out

    def push(self, step: int, rank: int, grad: np.ndarray, stats: GradStats) -> None:
        assert self.collector is not None, "started with an exchange directory"
        self.collector.push(step, rank, grad, stats)

    def weights(self, j: int) -> np.ndarray | None:
        """The weights after update ``j``, once applied (None: a step failed, stop)."""
        assert self.collector is not None, "started with an exchange directory"
        return self.collector.weights(j)

    def applied(self) -> int:
        return self.core.step

    def get_weights(self) -> np.ndarray:
        return self.core.params

    def apply_gradients(self, step: int, *results: Any) -> tuple[np.ndarray, ServerStats]:
        half = len(results) // 2
        stats = self.core.apply_gradients(step, list(results[:half]), list(results[half:]))
        return self.core.params, stats

    def state(self) -> dict[str, Any]:
        return self.core.state()

    def pid(self) -> int:
        return os.getpid()
