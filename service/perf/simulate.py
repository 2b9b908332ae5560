"""Driving parameter servers with fake workers: what aggregation costs as the workers grow.

A ``FakeWorker`` actor returns a precomputed gradient (no math), so a simulated step costs only
what the real step costs around the math: scheduling the tasks, moving the weights down and the
gradients up through the object store, summing, and the optimizer update. ``simulate`` runs that
step with the real ``ParameterServer`` or with K ``ServerShardActor`` shards, pipelined like the
training driver; ``server_capacity`` times the server's arithmetic alone, in this process.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from dtrain.service.ps.optim import OptimizerConfig
from dtrain.service.ps.server import ParameterServer, ServerCore, ServerStats
from dtrain.service.ps.sharded import ServerShardActor, combine_stats, shard_bounds
from dtrain.workers.core import GradStats
from dtrain.workers.model import ModelSpec, init_params

ServerKind = Literal["ps", "sharded"]
FLOAT32_BYTES = 4
# Small random gradients keep the simulated weights finite over thousands of steps.
FAKE_GRAD_SCALE = 1e-3
# Steps the simulated driver submits ahead of the one it awaits (the per-step design's default).
PIPELINE_DEPTH = 2
# A simulated step that takes this long means a lost actor, not a slow one.
SIM_TIMEOUT_SECONDS = 120.0


class FakeWorker:
    """Returns slices of one precomputed gradient: a worker with the math taken out."""

    def __init__(self, *, rank: int, num_params: int, batch_slice: int, seed: int = 0) -> None:
        rng = np.random.default_rng([seed, rank])
        self.rank = rank
        self.grad = (rng.standard_normal(num_params) * FAKE_GRAD_SCALE).astype(np.float32)
        self.batch_slice = batch_slice
        self._slices: dict[tuple[int, int], list[np.ndarray]] = {}

    def ready(self) -> int:
        return self.rank

    def compute(self, num_params: int, num_shards: int, *weights: Any) -> tuple[Any, ...]:
        """``num_shards`` gradient slices of the first ``num_params`` floats, then the stats.

        ``weights`` (the shards' refs) are only received: a real worker reads them zero-copy
        from the object store too, and the math that would read them is what is left out.
        """
        del weights
        key = (num_params, num_shards)
        if key not in self._slices:
            self._slices[key] = [self.grad[a:b] for a, b in shard_bounds(num_params, num_shards)]
        stats = GradStats(
            rank=self.rank,
            loss_sum=2.3 * self.batch_slice,  # ln(10): an untrained 10-class network's loss
            correct=0,
            count=self.batch_slice,
            compute_seconds=0.0,
        )
        return (*self._slices[key], stats)


@dataclass(frozen=True, kw_only=True)
class SimResult:
    server: ServerKind
    num_workers: int
    num_shards: int
    num_params: int
    steps: int  # measured steps, after the warm-up
    step_seconds: float  # mean time between completed steps, as the driver sees them
    updates_per_second: float
    gradient_bytes_per_step: int  # into the server(s), all workers together
    gradient_gb_per_second: float  # of gradients through the whole pipelined step
    aggregate_seconds: float  # mean; the slowest shard's when sharded
    update_seconds: float
    server_gb_per_second: float  # gradient bytes over the server's own summing time
    submit_seconds: float  # mean driver time to submit one step's tasks
    # Of the final weights: the gradients are fixed, so every server layout must end the same.
    weights_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def start_fake_workers(num: int, num_params: int, batch_slice: int = 64) -> list[Any]:
    """``num`` fake worker actors holding ``num_params``-float gradients; ready on return."""
    import ray

    cls = ray.remote(FakeWorker).options(num_cpus=0)
    # Ray types a handle's methods as plain callables (no .remote): handles are Any here.
    fakes: list[Any] = [
        cls.remote(rank=r, num_params=num_params, batch_slice=batch_slice) for r in range(num)
    ]
    ray.get([f.ready.remote() for f in fakes], timeout=SIM_TIMEOUT_SECONDS)
    return fakes


def simulate(
    fakes: list[Any],
    *,
    spec: ModelSpec,
    server: ServerKind = "ps",
    num_shards: int = 1,
    steps: int = 50,
    warmup_steps: int = 5,
    pipeline_depth: int = PIPELINE_DEPTH,
) -> SimResult:
    """Run ``warmup_steps + steps`` synchronous steps of ``fakes`` against fresh server actors.

    ``server="ps"`` is the training driver's ``ParameterServer``; ``"sharded"`` is
    ``num_shards`` ``ServerShardActor``\\s, each fed its slice of every gradient.
    """
    import ray

    if server == "ps" and num_shards != 1:
        raise ValueError("the single parameter server has exactly one shard")
    num_params = spec.num_params
    optimizer = OptimizerConfig(schedule="constant")
    total = warmup_steps + steps
    params = init_params(spec, 0)
    if server == "ps":
        actors: list[Any] = [
            ray.remote(ParameterServer)
            .options(num_cpus=0)
            .remote(spec=spec, optimizer=optimizer, params=params, total_steps=total)
        ]
    else:
        bounds = shard_bounds(num_params, num_shards)
        shard_cls = ray.remote(ServerShardActor).options(num_cpus=0)
        actors = [
            shard_cls.remote(
                shard=k, bounds=(a, b), optimizer=optimizer, params=params[a:b], total_steps=total
            )
            for k, (a, b) in enumerate(bounds)
        ]
    weights = [a.get_weights.remote() for a in actors]
    ray.get(weights, timeout=SIM_TIMEOUT_SECONDS)
    pending: deque[Any] = deque()
    done_at: list[float] = []
    records: list[ServerStats] = []
    submit: list[float] = []

    def consume(item: Any) -> None:
        if server == "ps":
            s = ray.get(item, timeout=SIM_TIMEOUT_SECONDS)
        else:
            reduces, updates = item
            got = ray.get([*reduces, *updates], timeout=SIM_TIMEOUT_SECONDS)
            s = combine_stats(got[: len(reduces)], got[len(reduces) :])
        if not s.finite:
            raise RuntimeError(f"simulated step {s.step} was not finite")
        records.append(s)
        done_at.append(time.perf_counter())

    try:
        for step in range(1, total + 1):
            t0 = time.perf_counter()
            outs = [
                f.compute.options(num_returns=num_shards + 1).remote(
                    num_params, num_shards, *weights
                )
                for f in fakes
            ]
            stats_refs = [o[num_shards] for o in outs]
            if server == "ps":
                weights_ref, item = (
                    actors[0]
                    .apply_gradients.options(num_returns=2)
                    .remote(step, *[o[0] for o in outs], *stats_refs)
                )
                weights = [weights_ref]
            else:
                reduces = [
                    a.reduce.remote(step, *[o[k] for o in outs], *stats_refs)
                    for k, a in enumerate(actors)
                ]
                applied = [a.apply.options(num_returns=2).remote(step, *reduces) for a in actors]
                weights = [w for w, _ in applied]
                item = (reduces, [u for _, u in applied])
            submit.append(time.perf_counter() - t0)
            pending.append(item)
            while len(pending) > pipeline_depth:
                consume(pending.popleft())
        while pending:
            consume(pending.popleft())
        final = np.concatenate(ray.get(weights, timeout=SIM_TIMEOUT_SECONDS))
    finally:
        for a in actors:
            ray.kill(a)
    # Steady state: from the last warm-up step's completion to the last step's.
    measured = records[warmup_steps:]
    span = done_at[-1] - done_at[warmup_steps - 1] if warmup_steps else done_at[-1] - done_at[0]
    n = len(measured) if warmup_steps else len(measured) - 1
    step_seconds = span / max(n, 1)
    grad_bytes = len(fakes) * num_params * FLOAT32_BYTES
    aggregate = statistics.fmean(s.aggregate_seconds for s in measured)
    return SimResult(
        server=server,
        num_workers=len(fakes),
        num_shards=num_shards,
        num_params=num_params,
        steps=len(measured),
        step_seconds=step_seconds,
        updates_per_second=1.0 / step_seconds,
        gradient_bytes_per_step=grad_bytes,
        gradient_gb_per_second=grad_bytes / step_seconds / 1e9,
        aggregate_seconds=aggregate,
        update_seconds=statistics.fmean(s.update_seconds for s in measured),
        server_gb_per_second=grad_bytes / aggregate / 1e9 if aggregate > 0 else 0.0,
        submit_seconds=statistics.fmean(submit[warmup_steps:] or submit),
        weights_sha256=hashlib.sha256(final.tobytes()).hexdigest(),
    )


@dataclass(frozen=True, kw_only=True)
class CapacityResult:
    """``ServerCore.apply_gradients`` in one process: the server's arithmetic, nothing else."""

    num_workers: int
    num_params: int
    aggregate_seconds: float  # summing num_workers gradients, averaging, the norm
    update_seconds: float  # the optimizer step and the update norm
    aggregate_gb_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def server_capacity(spec: ModelSpec, num_workers: int, steps: int = 20) -> CapacityResult:
    """Median phase times of ``steps`` in-process server updates with ``num_workers`` grads."""
    rng = np.random.default_rng(0)
    grads = [
        (rng.standard_normal(spec.num_params) * FAKE_GRAD_SCALE).astype(np.float32)
        for _ in range(num_workers)
    ]
    stats = [GradStats(r, 1.0, 0, 64, 0.0) for r in range(num_workers)]
    core = ServerCore(
        spec=spec,
        optimizer=OptimizerConfig(schedule="constant"),
        params=init_params(spec, 0),
        total_steps=steps,
    )
    results = [core.apply_gradients(step, grads, stats) for step in range(1, steps + 1)]
    aggregate = statistics.median(r.aggregate_seconds for r in results)
    return CapacityResult(
        num_workers=num_workers,
        num_params=spec.num_params,
        aggregate_seconds=aggregate,
        update_seconds=statistics.median(r.update_seconds for r in results),
        aggregate_gb_per_second=num_workers * spec.num_params * FLOAT32_BYTES / aggregate / 1e9,
    )


@dataclass(frozen=True, kw_only=True)
class SimulationReport:
    sims: list[SimResult]
    capacity: list[CapacityResult]

    def to_dict(self) -> dict[str, Any]:
        return {
            "simulation": [s.to_dict() for s in self.sims],
            "server_capacity": [c.to_dict() for c in self.capacity],
        }


# (server kind, shards): today's server, then the sharded design with one and two shards.
SIM_SERVERS: tuple[tuple[ServerKind, int], ...] = (("ps", 1), ("sharded", 1), ("sharded", 2))


def run_simulation(
    *,
    spec: ModelSpec | None = None,
    worker_counts: tuple[int, ...] = (1, 2, 4, 8, 16),
    servers: tuple[tuple[ServerKind, int], ...] = SIM_SERVERS,
    steps: int = 60,
    warmup_steps: int = 5,
    progress: Any = None,
) -> SimulationReport:
    """Every (server, shards) x worker count; Ray must be initialised by the caller."""
    import ray

    spec = spec or ModelSpec()
    fakes = start_fake_workers(max(worker_counts), spec.num_params)
    sims: list[SimResult] = []
    try:
        for m in worker_counts:
            for kind, k in servers:
                if progress:
                    progress(f"simulate: {m} fake workers, {kind} x{k}")
                sims.append(
                    simulate(
                        fakes[:m],
                        spec=spec,
                        server=kind,
                        num_shards=k,
                        steps=steps,
                        warmup_steps=warmup_steps,
                    )
                )
    finally:
        for f in fakes:
            ray.kill(f)
    capacity = [server_capacity(spec, m) for m in worker_counts]
    return SimulationReport(sims=sims, capacity=capacity)


def format_simulation(report: SimulationReport) -> str:
    lines = [
        "Aggregation with fake workers (no math): pipelined steps through Ray",
        f"{'server':<10}{'shards':>7}{'workers':>8}{'step ms':>10}{'updates/s':>11}"
        f"{'grad GB/s':>11}{'sum ms':>9}{'update ms':>10}{'submit ms':>10}",
    ]
    for s in report.sims:
        lines.append(
            f"{s.server:<10}{s.num_shards:>7}{s.num_workers:>8}{s.step_seconds * 1e3:>10.2f}"
            f"{s.updates_per_second:>11.1f}{s.gradient_gb_per_second:>11.3f}"
            f"{s.aggregate_seconds * 1e3:>9.2f}{s.update_seconds * 1e3:>10.2f}"
            f"{s.submit_seconds * 1e3:>10.2f}"
        )
    lines += [
        "",
        "Server arithmetic alone (ServerCore in one process, median)",
        f"{'workers':>8}{'sum ms':>9}{'update ms':>10}{'sum GB/s':>10}",
    ]
    for c in report.capacity:
        lines.append(
            f"{c.num_workers:>8}{c.aggregate_seconds * 1e3:>9.3f}{c.update_seconds * 1e3:>10.3f}"
            f"{c.aggregate_gb_per_second:>10.2f}"
        )
    return "\n".join(lines)
