"""The parameter server: holds the weights and optimizer state, applies one update per step.

``ServerCore`` is plain Python; ``ParameterServer`` (built by ``server_actor``) is the Ray actor
shell around it, following the classic Ray parameter-server example: workers'
``compute_gradients(weights)`` results are passed straight into ``apply_gradients(*grads)``.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from dtrain.service.ps.optim import Optimizer, OptimizerConfig
from dtrain.service.ps.state import ServerState
from dtrain.workers import exchange, steplink
from dtrain.workers.core import GradStats, ignore_float_overflow
from dtrain.workers.model import ModelSpec
from dtrain.workers.steplink import ServerLink

if TYPE_CHECKING:
    from dtrain.service.ps.collector import PushCollector
    from dtrain.service.ps.statsring import StatsRing


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


_T = TypeVar("_T")

# Threads of a synchronous update on one node: the 2-core reference machine's cores.
SYNC_UPDATE_THREADS = 2


def squared_norm(v: np.ndarray) -> float:
    """Sum of squares through BLAS sdot, in float64 from there on (a metric's partial sum)."""
    return float(np.dot(v, v))


def norm(v: np.ndarray) -> float:
    """L2 norm through BLAS sdot: a metric, so float32 accumulation is precise enough."""
    return float(np.sqrt(np.dot(v, v)))


def check_params(spec: ModelSpec, params: np.ndarray) -> None:
    """The server's weights are one flat float32 vector of the model's size, nothing else."""
    if params.shape != (spec.num_params,) or params.dtype != np.float32:
        raise ValueError(f"params must be float32 of shape ({spec.num_params},)")


class ServerCore:
    """The update arithmetic over a ``ServerState``: in memory, or the shared one in the
    exchange directory. Without ``params`` it continues from the complete step ``state`` holds
    (a server that took over a dead one's state)."""

    def __init__(
        self,
        *,
        spec: ModelSpec,
        optimizer: OptimizerConfig,
        params: np.ndarray | None,
        total_steps: int,
        step: int = 0,
        velocity: np.ndarray | None = None,
        staleness: int = 0,
        history: np.ndarray | None = None,
        state: ServerState | None = None,
        update_threads: int = 1,
    ) -> None:
        self.spec = spec
        self.optimizer = Optimizer(optimizer, spec.num_params)
        self.total_steps = total_steps
        # Bounded staleness k: step t's gradients use the weights after update max(0, t-1-k),
        # so the last k weights before the current ones are part of the state.
        self.staleness = staleness
        self.state = state or ServerState.in_memory(spec.num_params, staleness)
        if params is None and self.state.step < 0:
            raise ValueError("a server needs params or a state with a complete step")
        if params is not None:
            check_params(spec, params)
            if staleness and history is not None and history.shape != (staleness, params.size):
                raise ValueError(f"history must have shape ({staleness}, {spec.num_params})")
            zeros = np.zeros_like(params)
            self.state.seed(params, zeros if velocity is None else velocity, step, history)
        self._sum = np.empty(spec.num_params, dtype=np.float32)
        self.staged: int | None = None  # an update written into its slots, not yet committed
        # Contiguous slices of the flat vectors, each summed and updated by its own thread
        # (NumPy releases the GIL in these loops); element by element the float operations are
        # the same, so the weights' bits are too (only the norms' partial sums regroup).
        edges = np.linspace(0, spec.num_params, max(1, update_threads) + 1).astype(int)
        self._slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]
        self._pool = ThreadPoolExecutor(len(self._slices) - 1) if update_threads > 1 else None

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def params(self) -> np.ndarray:
        """The weights after the last complete update."""
        return self.state.weights(self.state.step)

    @property
    def velocity(self) -> np.ndarray:
        return self.state.velocity(self.state.step)

    def apply_gradients(
        self, step: int, grads: list[np.ndarray], stats: list[GradStats]
    ) -> ServerStats:
        """Average the workers' summed gradients by sample count and take one optimizer step.

        ``step`` is the 1-based number this update will have; it must be the next one, so a
        replayed call cannot apply the same gradients twice.
        """
        result = self.stage(step, grads, stats)
        self.commit()
        return result

    def stage(
        self,
        step: int,
        grads: list[np.ndarray],
        stats: list[GradStats],
        *,
        spend: bool = False,
    ) -> ServerStats:
        """The first half of an update: write update ``step``'s weights and velocity into their
        slots, which nobody reads yet; ``commit`` makes them the current ones. A step that is
        not finite is never staged, so the weights stay at the last good values.

        ``spend``: the gradients are the caller's to overwrite (the workers' slots in shared
        memory, which a worker writes again only after this update): the sum is formed in the
        first one instead of a buffer of the server's, a vector's traffic less per step.
        """
        self.staged = None
        if step != self.step + 1:
            raise ValueError(f"expected step {self.step + 1}, got step {step}")
        count = sum(s.count for s in stats)
        total = grads[0] if spend else self._sum
        scale = np.float32(1.0 / count) if count else None
        lr = self.optimizer.config.learning_rate_at(self.step, self.total_steps)
        state = self.state
        before, after = state.weights(step - 1), state.weights(step)
        v_before, v_after = state.velocity(step - 1), state.velocity(step)
        # The caller's thread times its own slice's two phases (the others run alongside).
        phases = [0.0, 0.0]

        def sum_and_update(part: slice) -> tuple[float, float]:
            """One thread's slice of the whole update, sum then optimizer, in one visit while
            the slice is in this core's cache. The update is written before the gradient is
            known to be finite: into the slots of ``step``, which nobody reads until
            ``commit``, and a non-finite step is never committed."""
            start = time.perf_counter()
            t = total[part]
            # Fixed rank order: the float sum is the same on every replay. The first two are
            # added in one pass (the same float additions as copying the first, then adding).
            if len(grads) > 1:
                np.add(grads[0][part], grads[1][part], out=t)
            elif not spend:
                t[...] = grads[0][part]
            for g in grads[2:]:
                t += g[part]
            if scale is not None:
                t *= scale
            grad_sq = squared_norm(t)
            summed = time.perf_counter()
            update_sq = 0.0
            if count:
                # t is spent here: it holds lr * t afterwards.
                self.optimizer.step_into(
                    before[part], after[part], t, lr, v_before[part], v_after[part]
                )
                # The weights before are still in their slot: no copy for the metric; and the
                # mean gradient is spent, so its (cache-warm) buffer holds the change.
                update_sq = squared_norm(np.subtract(after[part], before[part], out=t))
            if part == self._slices[-1]:
                phases[:] = [summed - start, time.perf_counter() - summed]
            return grad_sq, update_sq

        squares = self._sliced(sum_and_update)
        grad_norm = math.sqrt(sum(g for g, _ in squares))
        finite = bool(np.isfinite(grad_norm))
        update_norm = 0.0
        loss_sum = sum(s.loss_sum for s in stats)
        if finite and count:
            update_norm = math.sqrt(sum(u for _, u in squares))
            self.staged = step
        return ServerStats(
            step=step,
            samples=count,
            loss_sum=loss_sum,
            correct=sum(s.correct for s in stats),
            learning_rate=lr,
            grad_norm=grad_norm,
            update_norm=update_norm,
            worker_compute_seconds=tuple(s.compute_seconds for s in stats),
            aggregate_seconds=phases[0],
            update_seconds=phases[1],
            finite=finite and bool(np.isfinite(loss_sum)),
        )

    def _sliced(self, work: Callable[[slice], _T]) -> list[_T]:
        """``work`` over every slice, the first ones on the pool, the last on this thread."""
        if self._pool is None:
            return [work(self._slices[0])]
        futures = [self._pool.submit(work, part) for part in self._slices[:-1]]
        last = work(self._slices[-1])
        return [f.result() for f in futures] + [last]

    def commit(self) -> None:
        """The second half: the staged update becomes the current one (nothing staged: no-op)."""
        if self.staged is not None:
            self.state.commit(self.staged)
            self.staged = None

    def weights_at(self, j: int) -> np.ndarray:
        """The weights after update ``j``, for one of the last ``staleness + 1`` updates."""
        back = self.step - j
        if not 0 <= back <= self.staleness:
            raise ValueError(f"weights after update {j} are not kept (now at {self.step})")
        return self.state.weights(j)

    def state_dict(self) -> dict[str, Any]:
        """Copies of the current state (the slots are rewritten by later updates)."""
        step = self.step
        return {
            "params": self.state.weights(step).copy(),
            "velocity": self.state.velocity(step).copy(),
            "step": step,
            "history": self.state.history(),
        }


class ParameterServer:
    """Ray actor shell: unpacks ``*args`` (gradients then their stats) for ``ServerCore``.

    Training runs in segments of steps that the driver starts with ``run(first, last)`` and
    follows with ``progress``; the actor is threaded for that. With ``exchange_dir`` set, the
    weights and gradients live in shared memory (``workers.exchange``) and ``run`` steps by
    itself, told by the workers through ``workers.steplink`` when their gradients are written;
    the server's whole state lives there too (``service.ps.state``, each step's stats in
    ``service.ps.statsring``), so that with ``take_over`` a new server continues from the last
    complete step of one that was killed.
    Without, the workers ``push`` their gradients and pull ``weights`` through Ray
    (``service.ps.collector``) and ``run`` waits for the segment's last update.
    """

    def __init__(
        self,
        *,
        exchange_dir: str | None = None,
        num_workers: int = 0,
        step_timeout: float = 120.0,
        take_over: bool = False,
        **kwargs: Any,
    ) -> None:
        ignore_float_overflow()
        self.grads: list[list[np.ndarray]] = []
        self.link: ServerLink | None = None
        self.ring: StatsRing | None = None
        # (stats, seconds since the previous update ended) per step not yet fetched by the
        # driver; at most a segment's worth, since the driver drains it at every boundary.
        self.record: deque[tuple[ServerStats, float]] = deque()
        staleness = kwargs.get("staleness", 0)
        if exchange_dir is not None:
            from dtrain.service.ps.statsring import StatsRing  # it builds on ServerStats

            n = kwargs["spec"].num_params
            directory = Path(exchange_dir)
            # Held for life: a server before this one (killed) is gone once it is ours.
            self._lock = exchange.lock(directory, step_timeout)
            if take_over:  # continue from the complete step a killed server left
                kwargs["state"] = ServerState.open(directory, n, staleness)
                kwargs["params"] = None
            else:
                kwargs["state"] = ServerState.create(directory, n, staleness)
            # Per worker, so made anew at every start: the worker count may differ.
            exchange.create_grads(directory, n, num_workers, staleness + 1)
            steplink.make_fifos(directory, num_workers)
            self.link = ServerLink(directory, num_workers, step_timeout)
            self.ring = StatsRing.create(directory, num_workers)
            # grads[slot][rank]
            per_rank = [
                exchange.open_grads(directory, r, n, staleness + 1) for r in range(num_workers)
            ]
            self.grads = [list(g) for g in zip(*per_rank, strict=True)]
            if not staleness:
                # Synchronous: the workers wait while the server updates, so their cores are
                # free for the update's slices.
                kwargs["update_threads"] = SYNC_UPDATE_THREADS
        self.core = ServerCore(**kwargs)
        from dtrain.service.ps.collector import PushCollector  # it builds on ServerCore

        self.collector: PushCollector | None = (
            PushCollector(self.core, num_workers, self.record, step_timeout)
            if exchange_dir is None and num_workers
            else None
        )

    def ready(self) -> int:
        return self.core.step

    def run(self, first: int, last: int) -> int:
        """Apply updates ``first..last`` as the workers' gradients arrive; returns the last
        update applied (short of ``last`` only when a step was not finite)."""
        if self.collector is not None:
            return self.collector.wait_until(first, last)
        assert self.link is not None and self.ring is not None, "started without workers"
        before = time.perf_counter()
        for step in range(first, last + 1):
            stats = self.link.receive(step)
            grads = self.grads[step % len(self.grads)]
            result = self.core.stage(step, grads, stats, spend=True)
            now = time.perf_counter()
            if self.core.staged is not None:
                # Its stats before its weights count: a kill between the two leaves a ring
                # entry of a step that the state does not have, which the driver ignores.
                self.ring.write(result, now - before)
                self.core.commit()
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
        if self.collector is not None:
            return self.collector.state()
        return self.core.state_dict()

    def drain_state(self) -> tuple[list[tuple[ServerStats, float]], dict[str, Any]]:
        """Through Ray: the steps not yet fetched and the state at the last of them, taken
        together (no update in between), for a driver that lost a worker."""
        assert self.collector is not None, "started with an exchange directory"
        return self.collector.drain_state()

    def pid(self) -> int:
        return os.getpid()
