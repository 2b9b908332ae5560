"""Which training rows a step trains on, and which of them one worker computes.

The samples of a step do not depend on how many workers there are, so the workers can change
at any step boundary (issue 12, elastic membership) and every epoch still visits every training
row exactly once:

- Epoch ``e`` (1-based) shuffles ALL training rows once:
  ``np.random.default_rng([seed, e]).permutation(num_train)``.
- Step ``s`` of the epoch (0-based) trains on ``perm[s*B : (s+1)*B]``, ``B`` the global batch;
  the epoch's last step is short. ``steps_per_epoch = ceil(num_train / B)``.
- That batch is cut into ``NUM_PARTITIONS`` parts, contiguous positions whose sizes differ by at
  most one: part ``p`` holds positions ``[p*n // P, (p+1)*n // P)`` of an ``n``-row batch.
- ``W`` workers own contiguous blocks of parts, worker ``i`` parts ``[i*P // W, (i+1)*P // W)``,
  so its rows for a step are one contiguous span of the batch's positions.

Pure NumPy and no Ray: the driver plans with it, each worker draws its rows with it.
"""

from __future__ import annotations

import math

import numpy as np

# Fixed, not a user knob: the parts are the unit that moves between workers when membership
# changes, so their number must not change with it, and it caps the worker count (a worker
# with no part would idle). 64 is far above the cores of the machines dtrain targets, and a
# step's batch (128 by default) still gives every part a row or two.
NUM_PARTITIONS = 64
MAX_WORKERS = NUM_PARTITIONS


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    return math.ceil(num_train / batch_size)


def epoch_permutation(seed: int, epoch: int, num_train: int) -> np.ndarray:
    """The order of every training row in ``epoch``; the same for any number of workers."""
    return np.random.default_rng([seed, epoch]).permutation(num_train)


def step_bounds(num_train: int, batch_size: int, step: int) -> tuple[int, int]:
    """Positions ``[start, stop)`` of the epoch's permutation that step ``step`` trains on."""
    start = step * batch_size
    return start, min(start + batch_size, num_train)


def worker_parts(num_workers: int, rank: int) -> tuple[int, int]:
    """The block of parts ``[first, stop)`` that worker ``rank`` of ``num_workers`` owns."""
    if not 1 <= num_workers <= NUM_PARTITIONS:
        raise ValueError(f"num_workers must be in 1..{NUM_PARTITIONS}, got {num_workers}")
    if not 0 <= rank < num_workers:
        raise ValueError(f"rank must be in 0..{num_workers - 1}, got {rank}")
    return rank * NUM_PARTITIONS // num_workers, (rank + 1) * NUM_PARTITIONS // num_workers


def assign_parts(num_workers: int) -> list[tuple[int, int]]:
    """Every worker's block of parts; together they tile ``range(NUM_PARTITIONS)``."""
    return [worker_parts(num_workers, rank) for rank in range(num_workers)]


def blocks(counts: list[int]) -> list[tuple[int, int]]:
    """Contiguous blocks of parts of the given sizes, by rank (an uneven assignment: a
    straggler's share moved to faster workers)."""
    if sum(counts) != NUM_PARTITIONS or any(c < 1 for c in counts):
        raise ValueError(f"part counts must be >= 1 and sum to {NUM_PARTITIONS}, got {counts}")
    out, first = [], 0
    for count in counts:
        out.append((first, first + count))
        first += count
    return out


def counts_by_speed(counts: list[int], seconds: list[float]) -> list[int]:
    """New part counts proportional to each worker's speed, ``counts[i] / seconds[i]`` (parts
    per second of compute), by largest remainder; every worker keeps at least one part."""
    speeds = [c / max(s, 1e-12) for c, s in zip(counts, seconds, strict=True)]
    exact = [NUM_PARTITIONS * v / sum(speeds) for v in speeds]
    out = [max(1, math.floor(e)) for e in exact]
    by_remainder = sorted(range(len(out)), key=lambda i: exact[i] - out[i], reverse=True)
    for i in by_remainder[: max(0, NUM_PARTITIONS - sum(out))]:
        out[i] += 1
    while sum(out) > NUM_PARTITIONS:  # the floor of 1 can overshoot: trim the largest
        out[out.index(max(out))] -= 1
    return out


def parts_span(batch_len: int, parts: tuple[int, int]) -> tuple[int, int]:
    """Positions ``[lo, hi)`` of an ``batch_len``-row batch that the parts ``parts`` hold.

    Part boundaries at ``p * n // P`` (rather than the first parts taking the remainder) spread
    a small batch over all the workers: 32 rows on 2 workers are 16 + 16, not 32 + 0.
    """
    first, stop = parts
    return first * batch_len // NUM_PARTITIONS, stop * batch_len // NUM_PARTITIONS


def step_rows(perm: np.ndarray, batch_size: int, step: int, parts: tuple[int, int]) -> np.ndarray:
    """The training rows that the owner of ``parts`` computes in step ``step`` of the epoch
    shuffled as ``perm``, sorted: a fixed order whatever the owner, and sequential reads."""
    start, stop = step_bounds(len(perm), batch_size, step)
    lo, hi = parts_span(stop - start, parts)
    return np.sort(perm[start + lo : start + hi])
