"""Worker-independent sampling: what a step trains on depends on (seed, epoch, step) alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dtrain.service.errors import DtrainError
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.plan import plan_epoch
from dtrain.workers.sampling import (
    NUM_PARTITIONS,
    epoch_permutation,
    parts_span,
    step_rows,
    steps_per_epoch,
)

# Not a multiple of the batch (a short last step), nor of 3 or 7.
NUM_TRAIN, BATCH, SEED = 1001, 48, 7


def epoch_rows(epoch: int, workers_at: dict[int, int]) -> list[np.ndarray]:
    """Every (step, worker) piece of an epoch; ``workers_at[s]``: the worker count from step s."""
    perm = epoch_permutation(SEED, epoch, NUM_TRAIN)
    pieces, num = [], workers_at[0]
    for step in range(steps_per_epoch(NUM_TRAIN, BATCH)):
        num = workers_at.get(step, num)
        for parts in plan_epoch(NUM_TRAIN, num, BATCH).parts:
            pieces.append(step_rows(perm, BATCH, step, parts))
    return pieces


def assert_every_row_once(pieces: list[np.ndarray]) -> None:
    rows = np.concatenate(pieces)
    assert len(rows) == NUM_TRAIN
    np.testing.assert_array_equal(np.sort(rows), np.arange(NUM_TRAIN))


@pytest.mark.parametrize("num_workers", [1, 2, 3, 7])
def test_every_epoch_covers_every_training_row_once(num_workers: int) -> None:
    for epoch in (1, 2):
        assert_every_row_once(epoch_rows(epoch, {0: num_workers}))


@pytest.mark.parametrize("change_at", [1, 9, steps_per_epoch(NUM_TRAIN, BATCH) - 1])
def test_a_membership_change_mid_epoch_still_covers_every_row_once(change_at: int) -> None:
    # Steps 0..change_at-1 on 2 workers, the rest on 1 (a worker lost), and back up to 3.
    assert_every_row_once(epoch_rows(1, {0: 2, change_at: 1}))
    assert_every_row_once(epoch_rows(1, {0: 1, change_at: 3}))


def test_a_steps_rows_are_the_same_set_whatever_the_worker_count() -> None:
    perm = epoch_permutation(SEED, 3, NUM_TRAIN)
    last = steps_per_epoch(NUM_TRAIN, BATCH) - 1
    for step in (0, 5, last):
        sets = {
            num: np.sort(
                np.concatenate(
                    [
                        step_rows(perm, BATCH, step, p)
                        for p in plan_epoch(NUM_TRAIN, num, BATCH).parts
                    ]
                )
            )
            for num in (1, 2, 3, 7, NUM_PARTITIONS)
        }
        expected = np.sort(perm[step * BATCH : (step + 1) * BATCH])
        assert len(expected) == (NUM_TRAIN - last * BATCH if step == last else BATCH)
        for rows in sets.values():
            np.testing.assert_array_equal(rows, expected)


def test_a_workers_rows_are_deterministic_sorted_and_one_span_of_the_batch() -> None:
    parts = plan_epoch(NUM_TRAIN, 3, BATCH).parts[1]
    a = step_rows(epoch_permutation(SEED, 2, NUM_TRAIN), BATCH, 4, parts)
    b = step_rows(epoch_permutation(SEED, 2, NUM_TRAIN), BATCH, 4, parts)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(a) > 0)
    lo, hi = parts_span(BATCH, parts)
    perm = epoch_permutation(SEED, 2, NUM_TRAIN)
    np.testing.assert_array_equal(a, np.sort(perm[4 * BATCH + lo : 4 * BATCH + hi]))
    # Another epoch or seed is another shuffle.
    assert not np.array_equal(a, step_rows(epoch_permutation(SEED, 3, NUM_TRAIN), BATCH, 4, parts))
    assert not np.array_equal(a, step_rows(epoch_permutation(8, 2, NUM_TRAIN), BATCH, 4, parts))


def test_the_permutation_is_the_documented_one() -> None:
    expected = np.random.default_rng([SEED, 1]).permutation(NUM_TRAIN)
    np.testing.assert_array_equal(epoch_permutation(SEED, 1, NUM_TRAIN), expected)


@pytest.mark.parametrize("num_workers", [1, 2, 3, 7, 64])
def test_parts_tile_the_partitions_and_spans_tile_the_batch(num_workers: int) -> None:
    parts = plan_epoch(NUM_TRAIN, num_workers, BATCH * 2).parts
    assert parts[0][0] == 0 and parts[-1][1] == NUM_PARTITIONS
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    for n in (1, 63, 64, 96, 128):
        spans = [parts_span(n, p) for p in parts]
        assert spans[0][0] == 0 and spans[-1][1] == n
        sizes = [hi - lo for lo, hi in spans]
        # Balanced: a worker's share is within one part's worth of rows of its parts' share.
        for (first, stop), size in zip(parts, sizes, strict=True):
            assert abs(size - n * (stop - first) / NUM_PARTITIONS) < 1


def test_small_batches_are_spread_over_all_workers() -> None:
    assert [parts_span(32, p) for p in plan_epoch(NUM_TRAIN, 2, 32).parts] == [(0, 16), (16, 32)]


def test_more_workers_than_partitions_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"num_workers must be an integer in 1\.\.64, got 65"):
        TrainConfig(data_dir=".", run_dir=".", num_workers=NUM_PARTITIONS + 1, batch_size=128)
    TrainConfig(data_dir=".", run_dir=".", num_workers=NUM_PARTITIONS, batch_size=128)
    with pytest.raises(DtrainError, match=r"num_workers must be in 1\.\.64"):
        plan_epoch(10_000, NUM_PARTITIONS + 1, 128)


def test_uneven_blocks_tile_the_parts_and_follow_speed() -> None:
    from dtrain.workers.sampling import NUM_PARTITIONS, blocks, counts_by_speed

    assert blocks([40, 24]) == [(0, 40), (40, NUM_PARTITIONS)]
    with pytest.raises(ValueError, match="sum to 64"):
        blocks([40, 23])
    # Worker 1 takes twice as long for the same parts: it gets half as many.
    assert counts_by_speed([32, 32], [0.002, 0.004]) == [43, 21]
    assert counts_by_speed([32, 32], [0.002, 0.002]) == [32, 32]
    # Never below one part, always 64 in all.
    extreme = counts_by_speed([21, 21, 22], [0.001, 0.001, 10.0])
    assert sum(extreme) == NUM_PARTITIONS and min(extreme) == 1
