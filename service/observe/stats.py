"""What a training run reports as it goes: the records the driver hands to metrics and history.

Plain dataclasses so that the metrics exporter, the history file and the CLI all read the same
fields. Times are seconds, rates are per second, ratios are 0..1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class JobInfo:
    """Static facts of a run, known before the first step."""

    version: str
    run_dir: str
    num_workers: int
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float
    epochs: int
    steps_per_epoch: int
    hidden_sizes: tuple[int, ...]
    num_params: int
    num_train_samples: int
    num_test_samples: int
    # Updates the run will make: fewer than epochs x steps_per_epoch under --max-steps.
    total_steps: int | None = None


# Why an elastic run changed its size: the label values of dtrain_membership_changes_total.
LOST = "worker_lost"  # died or hung with no restart left
UNPLACEABLE = "unplaceable"  # the cluster cannot place it any more (its node is gone)
GREW = "capacity"  # the cluster has room for more workers than at the last decision
STRAGGLER = "straggler"  # same workers, parts moved from a straggler to faster ones
MEMBERSHIP_REASONS = (LOST, UNPLACEABLE, GREW, STRAGGLER)


@dataclass(frozen=True, kw_only=True)
class MembershipChange:
    """From step ``step`` on (1-based, the first step the new members compute), an elastic run
    has ``after`` workers instead of ``before``; ``reason`` is one of a small fixed set
    (``MEMBERSHIP_REASONS``)."""

    step: int
    before: int
    after: int
    reason: str
    # Parts of every batch per worker from ``step`` on, by rank (64 in all); empty: an even split.
    parts: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkerSlowness:
    """A worker's mean compute time over a window of steps, over the other workers' median."""

    rank: int
    node: str  # Ray node id (hex)
    ratio: float
    straggler: bool  # persistently slow (service.train.stragglers)
    new: bool  # became a straggler at this window: say so once, not every window


@dataclass(frozen=True, kw_only=True)
class StepStats:
    """One synchronous step: every worker's gradient, one parameter-server update."""

    epoch: int  # 1-based
    step: int  # global, 1-based: number of updates applied so far
    samples: int  # samples in this step's global batch
    loss: float  # mean cross-entropy over the global batch, before the update
    accuracy: float  # fraction of the global batch predicted right, before the update
    learning_rate: float
    grad_norm: float  # L2 norm of the averaged gradient
    update_norm: float  # L2 norm of the change applied to the weights
    step_seconds: float  # wall time of the step as the driver saw it (pipelined steps overlap)
    # Phases, each in seconds: max over workers of compute; the server's wait for the slowest
    # gradient after the first arrived plus the sum; the optimizer step.
    worker_compute_seconds: tuple[float, ...] = ()
    aggregate_seconds: float = 0.0
    update_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def phase_seconds(self) -> dict[str, float]:
        """The step's time by phase; "wait" is the rest (transfer, scheduling, the driver)."""
        compute = max(self.worker_compute_seconds, default=0.0)
        known = compute + self.aggregate_seconds + self.update_seconds
        return {
            "compute": compute,
            "aggregate": self.aggregate_seconds,
            "update": self.update_seconds,
            "wait": max(self.step_seconds - known, 0.0),
        }


@dataclass(frozen=True, kw_only=True)
class EpochStats:
    epoch: int  # 1-based
    steps: int  # global step count at the end of the epoch
    train_loss: float  # mean over the epoch's samples, measured during training
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    seconds: float
    samples_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(kw_only=True)
class RunSummary:
    """The final JSON object of ``dtrain train --json``."""

    test_accuracy: float
    test_loss: float
    train_accuracy: float
    train_loss: float
    epochs: int
    steps: int
    num_workers: int
    batch_size: int
    learning_rate: float
    optimizer: str
    wall_seconds: float
    train_seconds: float
    samples_per_second: float
    checkpoint: str
    run_dir: str
    restarts: int = 0
    # How the training rows reached the workers: local, filesystem or object-store.
    data_transport: str = ""
    # The Ray node id (hex) each worker ran on, by rank (the last placement after rebuilds).
    worker_nodes: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
