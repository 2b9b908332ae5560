"""What a person watching a run sees on stderr, as Keras ``fit`` shows it.

On a terminal, a live tqdm bar per epoch (steps, samples/s, the epoch's running loss and
accuracy, ETA), replaced by the epoch's line when the epoch ends. Anywhere else (a submitted
job's log, a pipe, a file) no carriage return is ever written: one line per epoch, and inside a
long epoch at most one progress line every ``progress_interval`` seconds, so a job's log shows
it is alive. ``--quiet`` prints none of it (errors and warnings still go to stderr).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from dtrain.service.observe.observers import Observer
from dtrain.service.observe.stats import (
    EpochStats,
    JobInfo,
    MembershipChange,
    RunSummary,
    StepStats,
    WorkerSlowness,
)


@dataclass(frozen=True, kw_only=True)
class ProgressConfig:
    """How much ``dtrain train`` prints. Each field's ``metadata`` is its option."""

    quiet: bool = field(
        default=False,
        metadata={"help": "Print no progress, epoch lines or summary on stderr; errors still."},
    )
    progress_interval: float = field(
        default=10.0,
        metadata={
            "help": "When stderr is not a terminal (a job's log), seconds between progress "
            "lines inside an epoch; a terminal gets a live bar instead.",
            "min": 0,
            "min_open": True,
        },
    )

    def build(self, stream: IO[str] | None = None) -> Observer:
        if self.quiet:
            return Observer()
        return ConsoleProgress(stream, interval=self.progress_interval)


class _Epoch:
    """Running totals of the epoch in progress, for the bar and the interval lines."""

    def __init__(self, epoch: int, first_step: int) -> None:
        self.epoch = epoch
        self.first_step = first_step  # steps of this epoch done before this process saw it
        self.started = time.monotonic()
        self.steps = 0
        self.samples = 0
        self.loss_sum = 0.0
        self.correct = 0.0

    def add(self, s: StepStats) -> None:
        self.steps += 1
        self.samples += s.samples
        self.loss_sum += s.loss * s.samples
        self.correct += s.accuracy * s.samples

    def rates(self) -> tuple[float, float, float]:
        """Running loss, running accuracy and samples/s of the epoch so far."""
        n = max(self.samples, 1)
        elapsed = time.monotonic() - self.started
        return self.loss_sum / n, self.correct / n, self.samples / elapsed if elapsed > 0 else 0.0


class ConsoleProgress(Observer):
    """A live bar per epoch on a terminal, else plain lines; the header and summary lines."""

    def __init__(
        self, stream: IO[str] | None = None, *, interval: float = 10.0, live: bool | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval = interval
        self._info: JobInfo | None = None
        self._epoch: _Epoch | None = None
        self._bar: Any = None
        self._last_line = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_start(self, info: JobInfo) -> None:
        self._info = info
        steps = f"{info.epochs} {_plural(info.epochs, 'epoch')} x {info.steps_per_epoch} steps"
        if info.total_steps is not None and info.total_steps < info.epochs * info.steps_per_epoch:
            steps = f"{info.total_steps} steps (--max-steps) of {steps}"
        self._print(
            f"dtrain: {info.num_workers} workers, batch {info.batch_size}, {steps}, "
            f"{info.optimizer} lr {info.learning_rate:g}, {info.num_params:,} parameters; "
            f"run dir {info.run_dir}"
        )

    def on_step(self, stats: StepStats) -> None:
        info = self._info
        if info is None:
            return
        first = (stats.epoch - 1) * info.steps_per_epoch
        in_epoch = stats.step - first
        # The steps this epoch will have: fewer in the last one when --max-steps stops early.
        spe = info.steps_per_epoch
        if info.total_steps is not None:
            spe = max(min(spe, info.total_steps - first), in_epoch)
        if self._epoch is None or self._epoch.epoch != stats.epoch:
            self._close_bar()
            self._epoch = _Epoch(stats.epoch, in_epoch - 1)
            self._last_line = time.monotonic()
            if self.live:
                self._bar = tqdm(
                    total=spe,
                    initial=in_epoch - 1,
                    desc=f"epoch {stats.epoch}/{info.epochs}",
                    unit="step",
                    file=self.stream,
                    leave=False,
                    dynamic_ncols=True,
                    mininterval=0.2,
                )
        ep = self._epoch
        ep.add(stats)
        loss, acc, rate = ep.rates()
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"loss {loss:.4f}, acc {acc:.4f}, {rate:,.0f} samples/s", refresh=False
            )
            self._bar.update(1)
            return
        now = time.monotonic()
        if now - self._last_line < self.interval or in_epoch >= spe:
            return
        self._last_line = now
        per_step = (now - ep.started) / ep.steps
        eta = tqdm.format_interval((spe - in_epoch) * per_step)
        self._print(
            f"epoch {stats.epoch}/{info.epochs}  step {in_epoch}/{spe} "
            f"({100 * in_epoch / spe:.0f}%)  loss {loss:.4f} acc {acc:.4f}  "
            f"{rate:,.0f} samples/s  ETA {eta}"
        )

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()  # leave=False: the bar's line is cleared for the epoch's line
            self._bar = None

    def on_epoch(self, stats: EpochStats) -> None:
        self._close_bar()
        self._epoch = None
        total = self._info.epochs if self._info else "?"
        test = (
            f"  test loss {stats.test_loss:.4f} acc {stats.test_accuracy:.4f}"
            if stats.test_accuracy is not None
            else ""
        )
        self._print(
            f"epoch {stats.epoch}/{total}  loss {stats.train_loss:.4f} "
            f"acc {stats.train_accuracy:.4f}{test}  {stats.samples_per_second:,.0f} samples/s  "
            f"{stats.seconds:.1f}s"
        )

    def on_checkpoint(self, path: Path, step: int) -> None:
        pass

    def on_slowness(self, verdicts: list[WorkerSlowness]) -> None:
        for v in verdicts:
            if v.new:
                self._print(
                    f"dtrain: warning: worker {v.rank} (node {v.node[:12]}) is a straggler: "
                    f"its steps take {v.ratio:.1f}x the others' median; every synchronous "
                    "step waits for it"
                )

    def on_membership(self, change: MembershipChange) -> None:
        self._print(
            f"dtrain: from step {change.step} on, {change.after} "
            f"{_plural(change.after, 'worker')} instead of {change.before} "
            f"({change.reason.replace('_', ' ')})"
        )

    def on_end(self, summary: RunSummary | None, error: BaseException | None) -> None:
        self._close_bar()
        if summary is None:
            return
        self._print(
            f"done: test accuracy {summary.test_accuracy:.4f} (loss {summary.test_loss:.4f}), "
            f"{summary.steps} {_plural(summary.steps, 'step')} in {summary.train_seconds:.1f}s "
            f"({summary.samples_per_second:,.0f} samples/s), wall {summary.wall_seconds:.1f}s; "
            f"checkpoint {summary.checkpoint}"
        )


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"
