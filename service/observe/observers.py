"""Who listens to a training run: metrics exporters, the history file, the console.

The driver calls every observer in order; each is a small class with the same five methods.
``Observer`` is the do-nothing base (the no-op metrics implementation tests use).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from dtrain.service.observe.stats import EpochStats, JobInfo, RunSummary, StepStats


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

    def on_end(self, summary: RunSummary | None, error: BaseException | None) -> None: ...


class HistoryWriter(Observer):
    """Appends one JSON object per line to ``history.jsonl``: kind "step" or "epoch"."""

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

    def on_end(self, summary: RunSummary | None, error: BaseException | None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ConsoleProgress(Observer):
    """A line per epoch on stderr, and a live step counter when stderr is a terminal."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._info: JobInfo | None = None
        self._last_draw = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_start(self, info: JobInfo) -> None:
        self._info = info
        steps = f"{info.epochs} epochs x {info.steps_per_epoch} steps"
        if info.total_steps is not None and info.total_steps < info.epochs * info.steps_per_epoch:
            steps = f"{info.total_steps} steps (--max-steps) of {steps}"
        self._print(
            f"dtrain: {info.num_workers} workers, batch {info.batch_size}, {steps}, "
            f"{info.optimizer} lr {info.learning_rate:g}, {info.num_params:,} parameters; "
            f"run dir {info.run_dir}"
        )

    def on_step(self, stats: StepStats) -> None:
        now = time.monotonic()
        if not self.live or self._info is None or now - self._last_draw < 0.2:
            return
        self._last_draw = now
        in_epoch = stats.step - (stats.epoch - 1) * self._info.steps_per_epoch
        self.stream.write(
            f"\repoch {stats.epoch}/{self._info.epochs}  step {in_epoch}/"
            f"{self._info.steps_per_epoch}  loss {stats.loss:.4f}  "
        )
        self.stream.flush()

    def on_epoch(self, stats: EpochStats) -> None:
        total = self._info.epochs if self._info else "?"
        test = (
            f"  test loss {stats.test_loss:.4f} acc {stats.test_accuracy:.4f}"
            if stats.test_accuracy is not None
            else ""
        )
        clear = "\r\033[K" if self.live else ""
        self._print(
            f"{clear}epoch {stats.epoch}/{total}  loss {stats.train_loss:.4f} "
            f"acc {stats.train_accuracy:.4f}{test}  {stats.samples_per_second:,.0f} samples/s  "
            f"{stats.seconds:.1f}s"
        )

    def on_checkpoint(self, path: Path, step: int) -> None:
        pass

    def on_end(self, summary: RunSummary | None, error: BaseException | None) -> None:
        if summary is None:
            return
        self._print(
            f"done: test accuracy {summary.test_accuracy:.4f} (loss {summary.test_loss:.4f}), "
            f"{summary.steps} steps in {summary.train_seconds:.1f}s "
            f"({summary.samples_per_second:,.0f} samples/s), wall {summary.wall_seconds:.1f}s; "
            f"checkpoint {summary.checkpoint}"
        )
