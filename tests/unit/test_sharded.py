"""The sharded parameter server: K slices give one server's weights bit for bit."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dtrain.service.ps.optim import OptimizerConfig
from dtrain.service.ps.server import ServerCore
from dtrain.service.ps.sharded import ServerShard, ShardedServerCore, shard_bounds
from dtrain.workers.core import GradStats
from dtrain.workers.model import ModelSpec, init_params

SPEC = ModelSpec(input_size=30, hidden_sizes=(17,), num_classes=10)  # 707 params: uneven slices


def worker_results(
    step: int, num_workers: int, scale: float = 1.0
) -> tuple[list[np.ndarray], list[GradStats]]:
    rng = np.random.default_rng([7, step])
    grads = [
        (rng.standard_normal(SPEC.num_params) * scale).astype(np.float32)
        for _ in range(num_workers)
    ]
    # Unequal counts, as when workers own unequal row ranges.
    stats = [
        GradStats(rank=r, loss_sum=2.0 + r, correct=r, count=5 + r + step % 3, compute_seconds=0.01)
        for r in range(num_workers)
    ]
    return grads, stats


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov"])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 8])
def test_shards_give_one_servers_weights_bitwise(optimizer: str, num_shards: int) -> None:
    opt = OptimizerConfig(name=optimizer, learning_rate=0.05, schedule="cosine")
    params = init_params(SPEC, 1)
    one = ServerCore(spec=SPEC, optimizer=opt, params=params, total_steps=6)
    sharded = ShardedServerCore(
        spec=SPEC, optimizer=opt, params=params, total_steps=6, num_shards=num_shards
    )
    for step in range(1, 7):
        grads, stats = worker_results(step, num_workers=3)
        want = one.apply_gradients(step, grads, stats)
        got = sharded.apply_gradients(step, grads, stats)
        assert np.array_equal(sharded.params, one.params), f"weights differ after step {step}"
        assert np.array_equal(sharded.velocity, one.velocity)
        assert got.finite and got.step == want.step and got.samples == want.samples
        assert got.learning_rate == want.learning_rate and got.loss_sum == want.loss_sum
        assert math.isclose(got.grad_norm, want.grad_norm, rel_tol=1e-5)
        assert math.isclose(got.update_norm, want.update_norm, rel_tol=1e-5)
    assert sharded.step == one.step == 6


def test_a_non_finite_slice_stops_the_update_on_every_shard() -> None:
    opt = OptimizerConfig()
    params = init_params(SPEC, 2)
    sharded = ShardedServerCore(
        spec=SPEC, optimizer=opt, params=params, total_steps=4, num_shards=3
    )
    grads, stats = worker_results(1, num_workers=2)
    grads[1][-1] = np.inf  # only the last shard sees it
    out = sharded.apply_gradients(1, grads, stats)
    assert not out.finite
    assert np.array_equal(sharded.params, params) and not sharded.velocity.any()
    assert sharded.step == 0  # the same step may be sent again
    grads, stats = worker_results(1, num_workers=2)
    assert sharded.apply_gradients(1, grads, stats).finite and sharded.step == 1


def test_a_shard_refuses_replays_and_apply_without_reduce() -> None:
    shard = ServerShard(
        shard=0,
        bounds=(0, 4),
        optimizer=OptimizerConfig(),
        params=np.zeros(4, np.float32),
        total_steps=3,
    )
    stats = [GradStats(rank=0, loss_sum=1.0, correct=0, count=1, compute_seconds=0.0)]
    with pytest.raises(ValueError, match="without its reduce"):
        shard.apply(1, [])
    r = shard.reduce(1, [np.ones(4, np.float32)], stats)
    assert shard.apply(1, [r]).applied
    with pytest.raises(ValueError, match="expected step 2"):
        shard.reduce(1, [np.ones(4, np.float32)], stats)


def test_shard_bounds_tile_the_vector() -> None:
    bounds = shard_bounds(707, 3)
    assert bounds[0][0] == 0 and bounds[-1][1] == 707
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    with pytest.raises(ValueError, match="num_shards"):
        shard_bounds(5, 6)
