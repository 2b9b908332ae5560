"""TensorBoard event files of a run, written by the driver (``--tensorboard DIR``).

One subdirectory per run (``DIR/<run id>``, as ``SummaryWriter``'s ``./runs/<name>``), so that
``tensorboard --logdir DIR`` shows runs side by side. Per step: loss, accuracy, learning rate,
gradient and update norms, step time by phase; per epoch (step = the epoch): train and test loss
and accuracy. Written with tensorboardX, the framework-free writer (``pip install
'dtrain[tensorboard]'``), from a ``Background`` thread: the step loop only enqueues.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dtrain.service.errors import first_line
from dtrain.service.observe.background import Background
from dtrain.service.observe.observers import Observer
from dtrain.service.observe.stats import EpochStats, JobInfo, RunSummary, StepStats
from dtrain.service.observe.trackers import require
from dtrain.service.paths import check_dir


class TensorBoardWriter(Observer):
    def __init__(self, logdir: Path, run_id: str) -> None:
        # Imported now, before Ray starts: a missing package costs the user no waiting.
        self._tbx = require("tensorboardX", "--tensorboard", "tensorboard")
        self.path = Path(logdir) / run_id
        # Also before Ray starts: a file where the log folder should be is one line, not
        # tensorboardX's traceback once the actors are up.
        check_dir(self.path, "--tensorboard events in")
        self._writer: Any = None
        self._bg: Background | None = None

    def on_start(self, info: JobInfo) -> None:
        self._writer = self._tbx.SummaryWriter(logdir=str(self.path), max_queue=1000)
        facts = "\n".join(f"- {k}: {v}" for k, v in vars(info).items())
        self._writer.add_text("config", facts, 0)
        self._bg = Background("dtrain-tensorboard")

    def on_step(self, s: StepStats) -> None:
        if self._bg is not None:
            self._bg.submit(self._write_step, s)

    def on_epoch(self, e: EpochStats) -> None:
        if self._bg is not None:
            self._bg.submit(self._write_epoch, e)

    def _write_step(self, s: StepStats) -> None:
        add, step = self._writer.add_scalar, s.step
        add("train/loss", s.loss, step)
        add("train/accuracy", s.accuracy, step)
        add("optimizer/learning_rate", s.learning_rate, step)
        add("optimizer/gradient_norm", s.grad_norm, step)
        add("optimizer/update_norm", s.update_norm, step)
        add("step_seconds/total", s.step_seconds, step)
        for phase, seconds in s.phase_seconds().items():
            add(f"step_seconds/{phase}", seconds, step)

    def _write_epoch(self, e: EpochStats) -> None:
        add = self._writer.add_scalar
        add("epoch/train_loss", e.train_loss, e.epoch)
        add("epoch/train_accuracy", e.train_accuracy, e.epoch)
        if e.test_loss is not None and e.test_accuracy is not None:
            add("epoch/test_loss", e.test_loss, e.epoch)
            add("epoch/test_accuracy", e.test_accuracy, e.epoch)
        add("epoch/samples_per_second", e.samples_per_second, e.epoch)
        self._writer.flush()

    def on_end(self, summary: RunSummary | None, error: BaseException | None) -> None:
        if self._bg is None:
            return
        self._bg.submit(self._writer.close)  # waits for the queued events to reach the file
        failed = self._bg.close()
        self._bg = self._writer = None
        if failed is not None:
            # The run's outcome stands; the tracker's failure is one line.
            print(
                f"dtrain: TensorBoard events in {self.path}: {first_line(failed)}", file=sys.stderr
            )
