"""A sharded parameter server: K shards, each owning a contiguous slice of the flat parameters.

One server receives every worker's whole gradient each step, so its network link and its memory
bandwidth grow with the number of workers (see docs/performance.md). Sharding divides both by K:
shard k receives only ``grad[start_k:stop_k]`` from each worker and applies the optimizer to its
own slice. The optimizer is elementwise, so K shards give bitwise the weights of one
``ServerCore``; only the two norms need the other shards, and they combine from per-shard sums of
squares.

A step is two calls per shard. ``reduce`` sums and averages the gradient slices and reports this
slice's squared norm; ``apply`` takes every shard's reduce result and updates only if all of them
are finite, so that, as in ``ServerCore``, a non-finite step changes no weight on any shard. On
Ray the driver passes the reduce ObjectRefs straight into every shard's ``apply``: the shards wait
on each other's (small, inline) results, not on a driver round trip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dtrain.service.ps.optim import Optimizer, OptimizerConfig
from dtrain.service.ps.server import ServerStats, check_params
from dtrain.service.train.plan import split_evenly
from dtrain.workers.core import GradStats, ignore_float_overflow
from dtrain.workers.model import ModelSpec


@dataclass(frozen=True)
class ShardReduce:
    """One shard's averaged-gradient facts for one step; small, so it travels inline."""

    shard: int
    step: int
    samples: int
    sq_norm: float  # squared L2 norm of this shard's slice of the averaged gradient
    loss_sum: float  # the workers' stats, carried so any one reduce can report the step
    correct: int
    worker_compute_seconds: tuple[float, ...]
    aggregate_seconds: float


@dataclass(frozen=True)
class ShardUpdate:
    shard: int
    step: int
    applied: bool
    learning_rate: float
    update_sq_norm: float
    update_seconds: float


def shard_bounds(num_params: int, num_shards: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard's slice; sizes differ by at most one float."""
    if not 1 <= num_shards <= num_params:
        raise ValueError(f"num_shards must be in [1, {num_params}], got {num_shards}")
    return split_evenly(num_params, num_shards)


def _all_finite(reduces: Sequence[ShardReduce]) -> bool:
    return math.isfinite(sum(r.sq_norm for r in reduces))


class ServerShard:
    """Owns ``params[start:stop]`` and that slice's optimizer state."""

    def __init__(
        self,
        *,
        shard: int,
        bounds: tuple[int, int],
        optimizer: OptimizerConfig,
        params: np.ndarray,
        total_steps: int,
        step: int = 0,
        velocity: np.ndarray | None = None,
    ) -> None:
        start, stop = bounds
        if params.shape != (stop - start,) or params.dtype != np.float32:
            raise ValueError(f"shard {shard}: params must be float32 of shape ({stop - start},)")
        self.shard = shard
        self.bounds = (start, stop)
        self.params = np.array(params, dtype=np.float32)  # own, writable copy
        self.optimizer = Optimizer(optimizer, stop - start)
        if velocity is not None:
            self.optimizer.velocity[...] = velocity
        self.total_steps = total_steps
        self.step = step
        self._sum = np.empty_like(self.params)
        self._before = np.empty_like(self.params)
        self._reduced: ShardReduce | None = None

    def reduce(
        self, step: int, grads: Sequence[np.ndarray], stats: Sequence[GradStats]
    ) -> ShardReduce:
        """Sum the workers' gradient slices in rank order and divide by the global sample count.

        The same operations, in the same order, as ``ServerCore.apply_gradients`` on this slice,
        so every float comes out the same.
        """
        if step != self.step + 1:
            raise ValueError(f"shard {self.shard}: expected step {self.step + 1}, got step {step}")
        t0 = time.perf_counter()
        count = sum(s.count for s in stats)
        total = self._sum
        total[...] = grads[0]
        for g in grads[1:]:
            total += g
        if count:
            total *= np.float32(1.0 / count)
        # float32 norm like ServerCore's, squared into a Python float so the shards' parts add
        # without the float32 rounding a sum of float32 squares would bring.
        sq_norm = float(np.linalg.norm(total)) ** 2
        self._reduced = ShardReduce(
            shard=self.shard,
            step=step,
            samples=count,
            sq_norm=sq_norm,
            loss_sum=sum(s.loss_sum for s in stats),
            correct=sum(s.correct for s in stats),
            worker_compute_seconds=tuple(s.compute_seconds for s in stats),
            aggregate_seconds=time.perf_counter() - t0,
        )
        return self._reduced

    def apply(self, step: int, reduces: Sequence[ShardReduce]) -> ShardUpdate:
        """Take the optimizer step on this slice if every shard's gradient is finite."""
        mine = self._reduced
        if mine is None or mine.step != step:
            raise ValueError(f"shard {self.shard}: apply({step}) without its reduce")
        if any(r.step != step for r in reduces):
            raise ValueError(f"shard {self.shard}: reduce results of other steps in apply({step})")
        t0 = time.perf_counter()
        lr = self.optimizer.config.learning_rate_at(self.step, self.total_steps)
        applied = _all_finite(reduces) and mine.samples > 0
        update_sq_norm = 0.0
        if applied:
            np.copyto(self._before, self.params)
            self.optimizer.step(self.params, self._sum, lr)
            update_sq_norm = float(np.linalg.norm(self.params - self._before)) ** 2
            self.step = step
        self._reduced = None
        return ShardUpdate(
            shard=self.shard,
            step=step,
            applied=applied,
            learning_rate=lr,
            update_sq_norm=update_sq_norm,
            update_seconds=time.perf_counter() - t0,
        )


def combine_stats(reduces: Sequence[ShardReduce], updates: Sequence[ShardUpdate]) -> ServerStats:
    """The ``ServerStats`` one server would have reported for this step.

    Phases are the slowest shard's, since the shards run side by side. The norms equal one
    server's up to float rounding (a sum of per-shard squares, not one float32 dot product).
    """
    first = reduces[0]
    grad_norm = math.sqrt(sum(r.sq_norm for r in reduces))
    return ServerStats(
        step=first.step,
        samples=first.samples,
        loss_sum=first.loss_sum,
        correct=first.correct,
        learning_rate=updates[0].learning_rate,
        grad_norm=grad_norm,
        update_norm=math.sqrt(sum(u.update_sq_norm for u in updates)),
        worker_compute_seconds=first.worker_compute_seconds,
        aggregate_seconds=max(r.aggregate_seconds for r in reduces),
        update_seconds=max(u.update_seconds for u in updates),
        finite=math.isfinite(grad_norm) and math.isfinite(first.loss_sum),
    )


class ShardedServerCore:
    """K ``ServerShard`` driven in one process, with ``ServerCore``'s interface.

    The reference for the Ray shards (``ServerShardActor``) and what tests compare with one
    ``ServerCore``.
    """

    def __init__(
        self,
        *,
        spec: ModelSpec,
        optimizer: OptimizerConfig,
        params: np.ndarray,
        total_steps: int,
        num_shards: int,
    ) -> None:
        check_params(spec, params)
        self.spec = spec
        self.bounds = shard_bounds(spec.num_params, num_shards)
        self.shards = [
            ServerShard(
                shard=k,
                bounds=(a, b),
                optimizer=optimizer,
                params=params[a:b],
                total_steps=total_steps,
            )
            for k, (a, b) in enumerate(self.bounds)
        ]

    @property
    def params(self) -> np.ndarray:
        return np.concatenate([s.params for s in self.shards])

    @property
    def velocity(self) -> np.ndarray:
        return np.concatenate([s.optimizer.velocity for s in self.shards])

    @property
    def step(self) -> int:
        return self.shards[0].step

    def apply_gradients(
        self, step: int, grads: Sequence[np.ndarray], stats: Sequence[GradStats]
    ) -> ServerStats:
        reduces = [
            s.reduce(step, [g[a:b] for g in grads], stats)
            for s, (a, b) in zip(self.shards, self.bounds, strict=True)
        ]
        updates = [s.apply(step, reduces) for s in self.shards]
        return combine_stats(reduces, updates)


class ServerShardActor:
    """Ray actor shell for one ``ServerShard``.

    ``reduce(step, *grads, *stats)`` takes this shard's gradient slice from every worker, then
    every worker's stats, like ``ParameterServer.apply_gradients``; ``apply(step, *reduces)``
    takes all shards' reduce results and returns (this shard's new weights, its update).
    """

    def __init__(self, **kwargs: Any) -> None:
        ignore_float_overflow()
        self.core = ServerShard(**kwargs)

    def get_weights(self) -> np.ndarray:
        return self.core.params

    def reduce(self, step: int, *results: Any) -> ShardReduce:
        half = len(results) // 2
        return self.core.reduce(step, list(results[:half]), list(results[half:]))

    def apply(self, step: int, *reduces: ShardReduce) -> tuple[np.ndarray, ShardUpdate]:
        update = self.core.apply(step, list(reduces))
        return self.core.params, update
