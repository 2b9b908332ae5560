"""How an epoch is cut into synchronous steps across workers that own unequal amounts of data.

Each worker takes a fixed slice of every global batch, proportional to the samples it owns, so
every worker does about the same work per step (unequal work deadlocks or stalls a sync step)
and every sample is visited exactly once per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dtrain.service.errors import DtrainError


def split_evenly(total: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of ``range(total)``, sizes differing by at most one."""
    base, extra = divmod(total, parts)
    ranges, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


def worker_batch_sizes(batch_size: int, counts: list[int]) -> list[int]:
    """Each worker's share of a global batch, by largest remainder so the shares sum exactly."""
    total = sum(counts)
    exact = [batch_size * c / total for c in counts]
    sizes = [max(1, math.floor(e)) for e in exact]
    order = sorted(range(len(counts)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    for i in order:
        if sum(sizes) >= batch_size:
            break
        sizes[i] += 1
    # Raising tiny shares to 1 can overshoot: take the excess back from the largest shares.
    while sum(sizes) > batch_size:
        sizes[sizes.index(max(sizes))] -= 1
    return sizes


def steps_per_epoch(counts: list[int], sizes: list[int]) -> int:
    """Enough steps for the slowest worker to visit all of its samples once."""
    return max(math.ceil(n / b) for n, b in zip(counts, sizes, strict=True))


@dataclass(frozen=True, kw_only=True)
class EpochPlan:
    """Who owns which training rows, each worker's slice of a batch, and the steps per epoch."""

    ranges: list[tuple[int, int]]
    slices: list[int]
    steps_per_epoch: int


def plan_epoch(num_train: int, num_workers: int, batch_size: int) -> EpochPlan:
    if num_workers > num_train:
        raise DtrainError(
            f"num_workers ({num_workers}) is more than the {num_train} training samples"
        )
    if batch_size > num_train:
        # It would run full-batch while the summary reports the size asked for.
        raise DtrainError(
            f"--batch-size {batch_size} is more than the {num_train} training samples"
        )
    ranges = split_evenly(num_train, num_workers)
    counts = [stop - start for start, stop in ranges]
    slices = worker_batch_sizes(batch_size, counts)
    return EpochPlan(ranges=ranges, slices=slices, steps_per_epoch=steps_per_epoch(counts, slices))
