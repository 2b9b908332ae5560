"""Workers and the parameter server without Ray: the distributed step equals the plain one."""

from __future__ import annotations

import numpy as np
import pytest

from dtrain.service.ps.optim import Optimizer, OptimizerConfig
from dtrain.service.ps.server import ServerCore
from dtrain.service.train.plan import split_evenly, steps_per_epoch, worker_batch_sizes
from dtrain.workers.core import WorkerCore
from dtrain.workers.model import ModelSpec, Network, init_params

SPEC = ModelSpec(input_size=20, hidden_sizes=(16,), num_classes=10)


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 20), dtype=np.float32), rng.integers(0, 10, size=n).astype(np.uint8)


def test_split_evenly_covers_everything_once() -> None:
    assert split_evenly(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_evenly(2, 2) == [(0, 1), (1, 2)]


@pytest.mark.parametrize(
    ("batch", "counts"),
    [(128, [30000, 30000]), (128, [20000] * 3), (7, [5, 100, 1]), (3, [1, 1, 1])],
)
def test_worker_batch_sizes_sum_to_the_batch_and_visit_every_sample(
    batch: int, counts: list[int]
) -> None:
    sizes = worker_batch_sizes(batch, counts)
    assert sum(sizes) == batch and min(sizes) >= 1
    spe = steps_per_epoch(counts, sizes)
    assert all(spe * b >= n for n, b in zip(counts, sizes, strict=True))


def test_mnist_default_plan_matches_keras_steps() -> None:
    counts = [30000, 30000]
    sizes = worker_batch_sizes(128, counts)
    assert sizes == [64, 64] and steps_per_epoch(counts, sizes) == 469  # ceil(60000/128)


def make_workers(x: np.ndarray, y: np.ndarray, num: int, batch: int) -> list[WorkerCore]:
    ranges = split_evenly(len(x), num)
    sizes = worker_batch_sizes(batch, [b - a for a, b in ranges])
    return [
        WorkerCore(rank=r, spec=SPEC, images=x[a:b], labels=y[a:b], batch_slice=sizes[r], seed=3)
        for r, (a, b) in enumerate(ranges)
    ]


def test_sharded_step_equals_one_process_step_on_the_same_samples() -> None:
    x, y = data(101)
    workers = make_workers(x, y, 3, 16)
    params = init_params(SPEC, 0)
    results = [w.compute_gradients(params, epoch=1, step=2) for w in workers]
    # The same samples, gathered in one process, averaged the plain way.
    idx = np.concatenate(
        [w.batch_indices(1, 2) + off for w, off in zip(workers, [0, 34, 68], strict=True)]
    )
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


def test_every_worker_sample_is_visited_once_per_epoch_and_reshuffled() -> None:
    x, y = data(50)
    (w,) = make_workers(x, y, 1, 8)
    seen = np.concatenate([w.batch_indices(1, s) for s in range(steps_per_epoch([50], [8]))])
    assert sorted(seen.tolist()) == list(range(50))
    assert not np.array_equal(w.permutation(1), w.permutation(2))


def test_a_replayed_step_gives_the_same_bits() -> None:
    x, y = data(64)
    w1, w2 = make_workers(x, y, 1, 16)[0], make_workers(x, y, 1, 16)[0]
    params = init_params(SPEC, 0)
    g1 = w1.compute_gradients(params, 2, 1)[0].copy()
    w1.compute_gradients(params, 2, 3)  # other work in between
    np.testing.assert_array_equal(g1, w1.compute_gradients(params, 2, 1)[0])
    np.testing.assert_array_equal(g1, w2.compute_gradients(params, 2, 1)[0])


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
