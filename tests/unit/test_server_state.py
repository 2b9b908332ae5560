"""The server's state in shared memory: a kill anywhere in an update leaves the last whole step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dtrain.service.ps.optim import OptimizerConfig
from dtrain.service.ps.server import ServerCore, ServerStats
from dtrain.service.ps.state import ServerState
from dtrain.service.ps.statsring import StatsRing
from dtrain.workers.core import GradStats
from dtrain.workers.model import ModelSpec, init_params

SPEC = ModelSpec(input_size=20, hidden_sizes=(16,), num_classes=10)
STATS = [GradStats(0, 1.0, 3, 8, 0.0), GradStats(1, 2.0, 4, 8, 0.0)]


def grads(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(step)
    return [rng.normal(size=SPEC.num_params).astype(np.float32) for _ in range(2)]


def core(state: ServerState | None = None, staleness: int = 1) -> ServerCore:
    return ServerCore(
        spec=SPEC,
        optimizer=OptimizerConfig(),
        params=init_params(SPEC, 0),
        total_steps=10,
        staleness=staleness,
        state=state,
    )


@pytest.mark.parametrize("staleness", [0, 1, 3])
def test_a_kill_between_the_slot_write_and_the_header_leaves_the_step_before(
    tmp_path: Path, staleness: int
) -> None:
    clean = core(staleness=staleness)
    live = core(ServerState.create(tmp_path, SPEC.num_params, staleness), staleness)
    for step in range(1, 6):
        clean.apply_gradients(step, grads(step), STATS)
        live.apply_gradients(step, grads(step), STATS)
    whole = clean.state_dict()
    # Update 6 written into its slots, then "killed": the header is never written.
    live.stage(6, grads(6), STATS)
    assert live.staged == 6
    reopened = ServerState.open(tmp_path, SPEC.num_params, staleness)
    assert reopened.step == 5
    np.testing.assert_array_equal(reopened.weights(5), whole["params"])
    np.testing.assert_array_equal(reopened.velocity(5), whole["velocity"])
    if staleness:  # the older weights steps 6..5+k read are whole as well
        np.testing.assert_array_equal(reopened.history(), whole["history"])
    # A new server continues from there: update 6 again, then on, with the clean run's bits.
    taken_over = ServerCore(
        spec=SPEC,
        optimizer=OptimizerConfig(),
        params=None,
        total_steps=10,
        staleness=staleness,
        state=reopened,
    )
    for step in range(6, 9):
        a = clean.apply_gradients(step, grads(step), STATS)
        b = taken_over.apply_gradients(step, grads(step), STATS)
        assert a.update_norm == b.update_norm and a.grad_norm == b.grad_norm
    np.testing.assert_array_equal(taken_over.params, clean.params)
    np.testing.assert_array_equal(taken_over.velocity, clean.velocity)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov"])
@pytest.mark.parametrize("update_threads", [1, 2])
@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_an_update_that_spends_the_gradients_has_the_bits_of_one_that_keeps_them(
    optimizer: str, update_threads: int, num_workers: int
) -> None:
    """``stage(spend=True)`` (shared memory) sums into the first gradient and lets the
    optimizer overwrite it; without ``spend`` (Ray's read-only arrays) nothing is written."""

    def server() -> ServerCore:
        return ServerCore(
            spec=SPEC,
            optimizer=OptimizerConfig(name=optimizer),
            params=init_params(SPEC, 0),
            total_steps=10,
            update_threads=update_threads,
        )

    kept, spent = server(), server()
    stats = [GradStats(r, 1.0, 3, 8, 0.0) for r in range(num_workers)]
    for step in range(1, 5):
        rng = np.random.default_rng(step)
        read_only = [rng.normal(size=SPEC.num_params).astype(np.float32) for _ in stats]
        scratch = [g.copy() for g in read_only]
        for g in read_only:
            g.flags.writeable = False
        a = kept.apply_gradients(step, read_only, stats)
        b = spent.stage(step, scratch, stats, spend=True)
        spent.commit()
        assert (a.grad_norm, a.update_norm) == (b.grad_norm, b.update_norm)
        assert not np.array_equal(scratch[0], read_only[0])  # spent indeed
    np.testing.assert_array_equal(spent.params, kept.params)
    np.testing.assert_array_equal(spent.velocity, kept.velocity)


def test_the_update_norm_is_the_norm_of_the_change(tmp_path: Path) -> None:
    server = core(staleness=0)
    before = server.params.copy()
    stats = server.apply_gradients(1, grads(1), STATS)
    change = server.params.astype(np.float64) - before
    assert stats.update_norm == pytest.approx(float(np.linalg.norm(change)), rel=1e-5)
    assert stats.update_norm > 0


def test_a_state_of_another_shape_or_without_a_step_is_refused(tmp_path: Path) -> None:
    ServerState.create(tmp_path, SPEC.num_params, 1)
    with pytest.raises(ValueError, match="holds no complete step"):
        ServerState.open(tmp_path, SPEC.num_params, 1)
    core(ServerState.create(tmp_path, SPEC.num_params, 1))
    with pytest.raises(ValueError, match=r"staleness 1, expected \d+ and 2"):
        ServerState.open(tmp_path, SPEC.num_params, 2)


def stats(step: int) -> ServerStats:
    return ServerStats(
        step=step,
        samples=16,
        loss_sum=step * 1.5,
        correct=step,
        learning_rate=0.1,
        grad_norm=2.0,
        update_norm=0.5,
        worker_compute_seconds=(0.25, 0.5),
        aggregate_seconds=0.001,
        update_seconds=0.002,
        finite=True,
    )


def test_the_ring_gives_back_the_missed_steps_once_and_refuses_torn_or_lost_ones(
    tmp_path: Path,
) -> None:
    ring = StatsRing.create(tmp_path, num_workers=2, capacity=8)
    for step in range(1, 12):
        ring.write(stats(step), seconds=step / 100)
    got = StatsRing.open(tmp_path).read(7, 11)
    assert got is not None
    assert [(s, sec) for s, sec in got] == [(stats(t), t / 100) for t in range(8, 12)]
    assert StatsRing.open(tmp_path).read(11, 11) == []
    assert StatsRing.open(tmp_path).read(2, 11) is None  # steps 3 and 4 were overwritten
    # A write killed before its last store names no step: not taken.
    ring.entries[12 % 8]["step"] = -1
    assert ring.read(10, 12) is None
