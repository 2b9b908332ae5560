"""What the Jobs API reports of one job, as ``jobs list`` and ``jobs status`` show it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


@dataclass(frozen=True)
class JobRecord:
    """What ``jobs list`` and ``jobs status`` show of one submitted job."""

    submission_id: str
    status: str
    entrypoint: str
    message: str = ""
    start_time: float | None = None  # seconds since the epoch (Ray reports milliseconds)
    end_time: float | None = None
    driver_exit_code: int | None = None
    error_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # A dtrain job's run, from its logs (service/jobs/results.py); None for other jobs.
    run_dir: str | None = None
    test_accuracy: float | None = None
    epoch: str | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.start_time is None:
            return None
        return (self.end_time or time.time()) - self.start_time

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration_seconds"] = self.duration_seconds
        return d

    @classmethod
    def from_details(cls, job: Any) -> JobRecord:
        def seconds(ms: int | None) -> float | None:
            return None if not ms else ms / 1000.0

        return cls(
            submission_id=str(job.submission_id),
            status=str(job.status),
            entrypoint=job.entrypoint,
            message=job.message or "",
            start_time=seconds(job.start_time),
            end_time=seconds(job.end_time),
            driver_exit_code=getattr(job, "driver_exit_code", None),
            error_type=str(job.error_type) if job.error_type else None,
            metadata=dict(job.metadata or {}),
        )
