"""Who listens to a training run: the base class and the history file.

The console's progress is ``progress.ConsoleProgress``, the metrics ``metrics.PrometheusMetrics``.

The driver calls every observer in order; each is a small class with the same five methods.
``Observer`` is the do-nothing base (the no-op metrics implementation tests use).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from dtrain.service.errors import first_line
from dtrain.service.observe.stats import (
    EpochStats,
    JobInfo,
    MembershipChange,
    RunSummary,
    StepStats,
    WorkerSlowness,
)


class Observer:
    """Base class: every hook does nothing. Subclasses override what they need."""

    def on_start(self, info: JobInfo) -> None: ...

    def on_step(self, stats: StepStats) -> None: ...

    def on_epoch(self, stats: EpochStats) -> None: ...

    def on_checkpoint(self, path: Path, step: int) -> None: ...

    def on_health(self, workers_alive: int, restarts: int, failed_steps: int) -> None:
        """Called when actors start (workers_alive = their number) and when the driver
        rebuilds lost actors (workers_alive 0, restarts so far, failed_steps 1 for this loss).
        """

    def on_membership(self, change: MembershipChange) -> None:
        """An elastic run changed its number of workers (before the new ones start)."""

    def on_workers(self, parts: list[int]) -> None:
        """The workers just started: how many of a batch's parts each computes, by rank."""

    def on_slowness(self, verdicts: list[WorkerSlowness]) -> None:
        """Every window of steps: each worker's compute time against the others'."""

    def on_end(self, summary: RunSummary | None, error: BaseException | None) -> None: ...


class HistoryWriter(Observer):
    """Appends one JSON object per line to ``history.jsonl``: kind "step", "epoch",
    "membership" (an elastic run's change of size) or "end".

    The "end" record says how the run ended (``error`` is the one-line error, or null), so
    ``dtrain report`` of a failed run can say why it stopped.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        # After a lost actor the driver replays steps from its last snapshot (the same bits):
        # each step and epoch is written once.
        self._last_step = 0
        self._epochs: set[int] = set()

    def on_start(self, info: JobInfo) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Line-buffered: every step up to a checkpoint is on disk when the checkpoint is, so a
        # resume after a SIGKILL cuts the file back to that step and loses none before it.
        self._file = self.path.open("a", encoding="utf-8", buffering=1)

    def _write(self, kind: str, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"kind": kind, **record}) + "\n")

    def on_step(self, stats: StepStats) -> None:
        if stats.step <= self._last_step:
            return
        self._last_step = stats.step
        self._write("step", stats.to_dict())

    def on_epoch(self, stats: EpochStats) -> None:
        if stats.epoch in self._epochs:
            return
        self._epochs.add(stats.epoch)
        self._write("epoch", stats.to_dict())
        if self._file is not None:
            self._file.flush()

    def on_membership(self, change: MembershipChange) -> None:
        self._write("membership", change.to_dict())
        if self._file is not None:
            self._file.flush()

    def on_end(self, summary: RunSummary | None, error: BaseException | None) -> None:
        if self._file is not None:
            failed = error is not None or summary is None
            reason = (first_line(error) if error is not None else "no summary") if failed else None
            self._write("end", {"ok": not failed, "error": reason})
            self._file.close()
            self._file = None
