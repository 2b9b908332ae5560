"""How an epoch is cut into synchronous steps, and which parts of each step's batch each worker
computes.

The sampling itself (one permutation of all training rows per epoch, fixed parts of every
batch) lives in ``workers.sampling``, where the workers draw their rows; this is the driver's
side: the steps of an epoch and the assignment of parts to the current workers. Call
``plan_epoch`` again with another worker count to reassign the parts at a step boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtrain.service.errors import DtrainError
from dtrain.workers.sampling import assign_parts, steps_per_epoch


def split_evenly(total: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of ``range(total)``, sizes differing by at most one."""
    base, extra = divmod(total, parts)
    ranges, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


@dataclass(frozen=True, kw_only=True)
class EpochPlan:
    """Each worker's block of parts of every batch, and the steps per epoch."""

    parts: list[tuple[int, int]]
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
    try:
        parts = assign_parts(num_workers)
    except ValueError as e:  # config validation bounds num_workers; callers may not have one
        raise DtrainError(str(e)) from None
    return EpochPlan(parts=parts, steps_per_epoch=steps_per_epoch(num_train, batch_size))
