"""Elastic membership: how many workers a run computes with, and when that number changes.

``--num-workers MIN:MAX`` bounds it. The run starts with as many workers as the cluster can
place, up to MAX. It shrinks when a worker is gone for good (it died with no restart left, or
the cluster can no longer place it: its node is gone), and grows back towards MAX when the
cluster has more room than at the last decision (a node joined, CPUs were freed). Below MIN it
stops. Every change happens at a step boundary and is recorded (``MembershipChange``) in the
progress, so a checkpoint, the history and the metrics say at which step the run changed and
why; the same changes at the same steps give the same bits (``plan`` assigns the data by
worker count alone).

The policy is plain Python: the trainer asks it, with the cluster's capacity measured by
``session.worker_capacity``.
"""

from __future__ import annotations

from dtrain.service.errors import DtrainError
from dtrain.service.observe.stats import GREW, LOST, STRAGGLER, UNPLACEABLE, MembershipChange

__all__ = [
    "GREW",
    "LOST",
    "STRAGGLER",
    "UNPLACEABLE",
    "BelowMinimum",
    "Membership",
    "MembershipChange",
]


class BelowMinimum(DtrainError):
    """Fewer workers than MIN can run: the run stops (after a checkpoint)."""


class Membership:
    """The run's current worker count and the rules that change it."""

    def __init__(
        self, *, fewest: int, most: int, size: int, capacity: int, parts: list[int] | None = None
    ) -> None:
        self.fewest = fewest
        self.most = most
        self.size = size
        # Parts of a batch per worker after a straggler's were moved; empty: an even split.
        self.parts = list(parts or [])
        # Capacity when the size was last decided: only more room than this grows the run, so
        # a worker lost for good is not replaced by one on the same CPUs.
        self.capacity_seen = capacity

    @classmethod
    def start(
        cls, *, fewest: int, most: int, wanted: int, capacity: int, parts: list[int] | None = None
    ) -> Membership:
        """The starting size: ``wanted`` (MAX, or a resumed run's size, with its ``parts``) as
        far as the cluster can place it; fewer than ``fewest`` is an error."""
        size = min(wanted, most, capacity)
        if size < fewest:
            raise BelowMinimum(_below(fewest, capacity, "the cluster can place"))
        kept = parts if parts and len(parts) == size else None
        return cls(fewest=fewest, most=most, size=size, capacity=capacity, parts=kept)

    def after_loss(self, *, num_lost: int, restart: bool, capacity: int, step: int) -> int:
        """The size to rebuild with after losing ``num_lost`` workers at ``step`` (the first
        step not applied). ``restart``: the restart policy brings them back (same size) rather
        than giving them up."""
        wanted = self.size if restart else self.size - num_lost
        size = min(wanted, capacity)
        if size < self.fewest:
            why = (
                f"{num_lost} of {self.size} workers were lost with no restart left, leaving "
                f"{wanted}, fewer than the minimum {self.fewest} (--num-workers MIN:MAX)"
                if not restart and wanted < self.fewest
                else ""
            )
            raise BelowMinimum(why or _below(self.fewest, capacity, "the cluster can now place"))
        self.capacity_seen = capacity
        return size

    def grown(self, capacity: int) -> int | None:
        """The larger size the run should take now, or None to stay as it is."""
        if self.size >= self.most or capacity <= self.capacity_seen or capacity <= self.size:
            self.capacity_seen = min(self.capacity_seen, capacity)
            return None
        self.capacity_seen = capacity
        return min(self.most, capacity)

    def change(
        self, size: int, step: int, reason: str, parts: list[int] | None = None
    ) -> MembershipChange | None:
        """Take ``size`` workers (computing ``parts`` of each batch; None: an even split) from
        ``step`` on; the record of the change, or None if it is none."""
        kept = list(parts or [])
        if size == self.size and kept == self.parts:
            return None
        before, self.size, self.parts = self.size, size, kept
        return MembershipChange(step=step, before=before, after=size, reason=reason, parts=kept)


def _below(fewest: int, capacity: int, what: str) -> str:
    return (
        f"{what} {capacity} worker{'s' if capacity != 1 else ''}, fewer than the minimum "
        f"{fewest} (--num-workers MIN:MAX)"
    )
