"""Workers and the parameter server without Ray: the distributed step equals the plain one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dtrain.service.ps.optim import Optimizer, OptimizerConfig
from dtrain.service.ps.server import ServerCore
from dtrain.service.train.plan import plan_epoch, split_evenly
from dtrain.workers.core import WorkerCore
from dtrain.workers.model import ModelSpec, Network, init_params
from dtrain.workers.rows import TrainRows

SPEC = ModelSpec(input_size=20, hidden_sizes=(16,), num_classes=10)


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 20), dtype=np.float32), rng.integers(0, 10, size=n).astype(np.uint8)


def test_split_evenly_covers_everything_once() -> None:
    assert split_evenly(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_evenly(2, 2) == [(0, 1), (1, 2)]


def test_mnist_default_plan_matches_keras_steps() -> None:
    plan = plan_epoch(60000, 2, 128)
    assert plan.steps_per_epoch == 469  # ceil(60000/128)
    assert plan.parts == [(0, 32), (32, 64)]


def make_workers(x: np.ndarray, y: np.ndarray, num: int, batch: int) -> list[WorkerCore]:
    rows = TrainRows.of(x, y)
    return [
        WorkerCore(rank=r, spec=SPEC, rows=rows, batch_size=batch, parts=parts, seed=3)
        for r, parts in enumerate(plan_epoch(len(x), num, batch).parts)
    ]


def test_sharded_step_equals_one_process_step_on_the_same_samples() -> None:
    x, y = data(101)
    workers = make_workers(x, y, 3, 16)
    params = init_params(SPEC, 0)
    results = [w.compute_gradients(params, epoch=1, step=2) for w in workers]
    # The same samples, gathered in one process, averaged the plain way.
    idx = np.concatenate([w.batch_indices(1, 2) for w in workers])
    _, _, g = Network(SPEC).loss_and_grad(params, x[idx], y[idx].astype(np.int64))
    expected = g / len(idx)
    server = ServerCore(
        spec=SPEC,
        optimizer=OptimizerConfig(name="sgd", schedule="constant"),
        params=params,
        total_steps=10,
    )
    stats = server.apply_gradients(1, [r[0] for r in results], [r[1] for r in results])
    assert stats.samples == len(idx) == 16
    np.testing.assert_allclose(
        server.params, params - np.float32(0.1) * expected, rtol=1e-5, atol=1e-6
    )
    assert stats.grad_norm == pytest.approx(float(np.linalg.norm(expected)), rel=1e-4)


def test_every_sample_is_visited_once_per_epoch_and_reshuffled() -> None:
    x, y = data(50)
    (w,) = make_workers(x, y, 1, 8)
    seen = np.concatenate(
        [w.batch_indices(1, s) for s in range(plan_epoch(50, 1, 8).steps_per_epoch)]
    )
    assert sorted(seen.tolist()) == list(range(50))
    assert not np.array_equal(w.permutation(1), w.permutation(2))


def test_uint8_shards_give_the_gradient_of_the_rows_converted_up_front() -> None:
    """Gathering a step's rows across shards and converting them then gives the bits of
    converting the whole split first (what workers did before they held every row)."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(90, 20), dtype=np.uint8)
    y = rng.integers(0, 10, size=90).astype(np.uint8)
    cuts = [0, 7, 40, 41, 90]  # shards of unequal size, one of a single row
    shards = TrainRows(
        [pixels[a:b] for a, b in itertools.pairwise(cuts)],
        [y[a:b] for a, b in itertools.pairwise(cuts)],
    )
    whole = (pixels.astype(np.float32) / np.float32(255.0), y)
    params = init_params(SPEC, 0)
    kwargs = {"rank": 0, "spec": SPEC, "batch_size": 32, "parts": (0, 64), "seed": 1}
    a = WorkerCore(rows=shards, **kwargs)
    b = WorkerCore(rows=TrainRows.of(*whole), **kwargs)
    assert np.unique(np.searchsorted(cuts, a.batch_indices(1, 1), side="right")).size > 1
    ga, sa = a.compute_gradients(params, 1, 1)
    gb, sb = b.compute_gradients(params, 1, 1)
    np.testing.assert_array_equal(ga, gb)
    assert (sa.loss_sum, sa.correct, sa.count) == (sb.loss_sum, sb.correct, 32)


def test_a_replayed_step_gives_the_same_bits() -> None:
    x, y = data(64)
    w1, w2 = make_workers(x, y, 1, 16)[0], make_workers(x, y, 1, 16)[0]
    params = init_params(SPEC, 0)
    g1 = w1.compute_gradients(params, 2, 1)[0].copy()
    w1.compute_gradients(params, 2, 3)  # other work in between
    np.testing.assert_array_equal(g1, w1.compute_gradients(params, 2, 1)[0])
    np.testing.assert_array_equal(g1, w2.compute_gradients(params, 2, 1)[0])


def test_rows_gathered_ahead_are_those_of_the_step_computed() -> None:
    """A worker gathers the next step's rows while it waits for that step's weights; whatever
    was gathered before (another step, other parts), the gradient is that step's own."""
    x, y = data(64)
    params = init_params(SPEC, 0)
    fresh = make_workers(x, y, 1, 32)[0]
    expected = fresh.compute_gradients(params, 2, 1)[0].copy()
    ahead = make_workers(x, y, 1, 32)[0]
    ahead.prefetch(2, 1)
    np.testing.assert_array_equal(ahead.compute_gradients(params, 2, 1)[0], expected)
    ahead.prefetch(2, 0)  # a step other than the one computed next
    np.testing.assert_array_equal(ahead.compute_gradients(params, 2, 1)[0], expected)
    ahead.prefetch(2, 1)
    ahead.parts = (0, 32)  # a membership change between the gather and the step
    half = make_workers(x, y, 1, 32)[0]
    half.parts = (0, 32)
    np.testing.assert_array_equal(
        ahead.compute_gradients(params, 2, 1)[0], half.compute_gradients(params, 2, 1)[0]
    )


def test_a_worker_without_rows_in_a_step_sends_a_zero_gradient() -> None:
    """The last, short step of an epoch can leave a worker no row; it still answers."""
    x, y = data(65)
    workers = make_workers(x, y, 2, 64)  # step 1 of the epoch holds 1 row
    params = init_params(SPEC, 0)
    (g0, s0), (g1, s1) = (w.compute_gradients(params, 1, 1) for w in workers)
    assert (s0.count, s1.count) == (0, 1)
    assert not g0.any() and g1.any()


def test_server_refuses_out_of_order_steps_and_never_applies_nan() -> None:
    params = init_params(SPEC, 0)
    server = ServerCore(spec=SPEC, optimizer=OptimizerConfig(), params=params, total_steps=5)
    x, y = data(8)
    (w,) = make_workers(x, y, 1, 8)
    g, s = w.compute_gradients(params, 1, 0)
    with pytest.raises(ValueError, match="expected step 1"):
        server.apply_gradients(2, [g], [s])
    bad = g.copy()
    bad[0] = np.nan
    stats = server.apply_gradients(1, [bad], [s])
    assert not stats.finite and server.step == 0
    np.testing.assert_array_equal(server.params, params)
    assert server.apply_gradients(1, [g], [s]).finite and server.step == 1


def test_server_and_workers_train_a_small_problem() -> None:
    """End to end without Ray: loss falls on a learnable toy problem."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=400).astype(np.uint8)
    x = rng.random((400, 20), dtype=np.float32) * 0.5
    x[np.arange(400), y] += 1.0  # the label is written into the features: learnable
    workers = make_workers(x, y, 2, 32)
    server = ServerCore(
        spec=SPEC,
        optimizer=OptimizerConfig(learning_rate=0.5),
        params=init_params(SPEC, 0),
        total_steps=13 * 30,
    )
    losses = []
    step = 0
    for epoch in range(1, 31):
        total = 0.0
        for s in range(13):
            step += 1
            res = [w.compute_gradients(server.params, epoch, s) for w in workers]
            st = server.apply_gradients(step, [r[0] for r in res], [r[1] for r in res])
            total += st.loss_sum
        losses.append(total / 400)
    assert losses[-1] < 0.5 * losses[0]


def test_plain_optimizer_and_server_agree_bitwise() -> None:
    params = init_params(SPEC, 0)
    g = np.random.default_rng(1).normal(size=params.size).astype(np.float32)
    cfg = OptimizerConfig(schedule="constant")
    expected = params.copy()
    Optimizer(cfg, params.size).step(expected, g)
    from dtrain.workers.core import GradStats

    server = ServerCore(spec=SPEC, optimizer=cfg, params=params, total_steps=1)
    server.apply_gradients(1, [g], [GradStats(0, 0.0, 0, 1, 0.0)])
    np.testing.assert_array_equal(server.params, expected)
