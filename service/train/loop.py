"""The step loop: runs the steps on the actors and follows their stats, from the driver.

Two engines, picked by where the arrays live:

- Shared memory (one node): the driver starts *segments*, one ``run(first, last)`` call per
  actor; inside a segment the server and the workers step by themselves, signalling through
  pipes (``workers.steplink``), and the driver only follows the server's progress record every
  ``POLL_SECONDS``. A segment ends where the driver has work: a checkpoint, an epoch's end
  (evaluation), the last step. No Ray task and no driver work per step.
- Object store (several nodes): per step the driver *submits* work: the weights ref returned by
  the server's previous update goes to every worker, the workers' gradient refs go straight to
  the server; the driver waits on the small per-step stats, ``pipeline_depth`` steps behind.

Faults are not handled here: they surface as ``ActorLost`` from the ``ActorGroup`` and
``Trainer`` rebuilds from ``latest``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from dtrain.service.errors import DtrainError
from dtrain.service.observe.stats import EpochStats, StepStats
from dtrain.service.ps.server import ServerStats
from dtrain.service.train.actors import ActorGroup, ActorLost
from dtrain.service.train.recovery import CHECKPOINT_DIR, Checkpointer, Progress, Snapshot

# How often the driver looks at a running segment: the latency of live metrics and progress.
POLL_SECONDS = 0.5

# Test loss and accuracy of a weight vector.
Evaluate = Callable[[np.ndarray], tuple[float, float]]


class StepLoop:
    """Runs steps ``start.progress.step + 1 .. total_steps`` on one ``ActorGroup``."""

    def __init__(
        self,
        group: ActorGroup,
        *,
        steps_per_epoch: int,
        total_steps: int,
        emit: Callable[..., None],
        checkpointer: Checkpointer,
        evaluate: Evaluate | None,
    ) -> None:
        self.group = group
        self.config = group.config
        self.spe = steps_per_epoch
        self.total_steps = total_steps
        self.emit = emit
        self.checkpointer = checkpointer
        self.evaluate = evaluate
        self.progress = Progress()
        self.last_done = 0.0

    def run(self, start: Snapshot, on_snapshot: Callable[[Snapshot], None]) -> Snapshot:
        """Train to the end; ``on_snapshot`` hears of every whole snapshot written on the way."""
        c, server = self.config, self.group.server
        self.progress = start.progress.copy()
        if self.group.exchange_dir is not None:
            self._run_segments(on_snapshot)
        else:
            self._run_tasks(on_snapshot)
        state = self.group.get(server.state.remote(), c.step_timeout_seconds, "fetching weights")
        history = state["history"]
        return Snapshot(
            np.array(state["params"]),
            np.array(state["velocity"]),
            self.progress,
            None if history is None else np.array(history),
        )

    def _segment_end(self, first: int) -> int:
        """The last step of the segment starting at ``first``: the next step after which the
        driver has work (an epoch's end, a checkpoint), or the run's last."""

        def next_multiple(n: int) -> int:
            return -(-first // n) * n

        ends = [self.total_steps, next_multiple(self.spe)]
        if self.config.checkpoint_every:
            ends.append(next_multiple(self.config.checkpoint_every))
        return min(ends)

    def _run_segments(self, on_snapshot: Callable[[Snapshot], None]) -> None:
        c, server, workers = self.config, self.group.server, self.group.workers
        step = self.progress.step
        while step < self.total_steps:
            last = self._segment_end(step + 1)
            refs = [
                server.run.remote(step + 1, last),
                *[w.run.remote(step + 1, last, self.spe) for w in workers],
            ]
            self._follow(refs)
            step = last
            if c.checkpoint_every and step % c.checkpoint_every == 0 and step < self.total_steps:
                self._checkpoint(server.state.remote(), on_snapshot)
            if step % self.spe == 0 or step == self.total_steps:
                self._end_epoch((step - 1) // self.spe + 1, server.get_weights.remote())

    def _follow(self, refs: list[Any]) -> None:
        """Until every actor has finished its segment, feed the server's progress to the
        observers; a failed actor raises at once, a segment that stops moving after
        ``step_timeout`` seconds."""
        c, server = self.config, self.group.server
        pending = refs
        moved = time.monotonic()
        while True:
            what = f"step {self.progress.step + 1}"
            pending = self.group.wait(pending, POLL_SECONDS, what)
            steps = self.group.get(server.progress.remote(), c.step_timeout_seconds, what)
            for stats, seconds in steps:
                self._record(stats, seconds)
            if not pending:
                return
            now = time.monotonic()
            if steps:
                moved = now
            elif now - moved > c.step_timeout_seconds:
                raise ActorLost(f"{what} did not finish within {c.step_timeout_seconds:g}s")

    def _run_tasks(self, on_snapshot: Callable[[Snapshot], None]) -> None:
        c, server, workers = self.config, self.group.server, self.group.workers
        # ready[j]: a ref to the weights after update j. Step t computes on the weights after
        # update max(0, t - 1 - staleness).
        k = c.staleness
        first = self.progress.step
        ready = {j: server.weights_at.remote(j) for j in range(max(0, first - k), first + 1)}
        # (stats ref, state ref or None) per submitted step, oldest first
        pending: deque[tuple[Any, Any]] = deque()
        self.last_done = time.perf_counter()
        step = first
        while step < self.total_steps:
            step += 1
            epoch, s_in_epoch = divmod(step - 1, self.spe)
            epoch += 1
            j = max(0, step - 1 - k)
            outs = [
                w.compute_gradients.options(num_returns=2).remote(ready[j], epoch, s_in_epoch)
                for w in workers
            ]
            ready[step], stats_ref = server.apply_gradients.options(num_returns=2).remote(
                step, *[g for g, _ in outs], *[st for _, st in outs]
            )
            ready.pop(step - k - 1, None)  # no later step reads those weights
            wants_ckpt = c.checkpoint_every and step % c.checkpoint_every == 0
            state_ref = server.state.remote() if wants_ckpt and step < self.total_steps else None
            pending.append((stats_ref, state_ref))
            while pending and (
                len(pending) > c.pipeline_depth
                or s_in_epoch == self.spe - 1
                or step == self.total_steps
            ):
                self._consume(*pending.popleft(), on_snapshot)
            if s_in_epoch == self.spe - 1 or step == self.total_steps:
                self._end_epoch(epoch, ready[step])
                self.last_done = time.perf_counter()

    def _consume(
        self, stats_ref: Any, state_ref: Any, on_snapshot: Callable[[Snapshot], None]
    ) -> None:
        what = f"step {self.progress.step + 1}"
        s: ServerStats = self.group.get(stats_ref, self.config.step_timeout_seconds, what)
        now = time.perf_counter()
        self._record(s, now - self.last_done)
        self.last_done = now
        if state_ref is not None:
            self._checkpoint(state_ref, on_snapshot)
            self.last_done = time.perf_counter()

    def _record(self, s: ServerStats, seconds: float) -> None:
        """One applied step into the progress and to the observers."""
        c, progress = self.config, self.progress
        epoch = (s.step - 1) // self.spe + 1
        if not s.finite:
            raise DtrainError(
                f"training diverged at step {s.step} (epoch {epoch}): the loss or gradient "
                f"is not finite; lower --learning-rate (now {c.optimizer.learning_rate:g}); "
                f"the last good checkpoint is kept in {c.run_dir / CHECKPOINT_DIR}"
            )
        progress.step = s.step
        progress.epoch_loss += s.loss_sum
        progress.epoch_correct += s.correct
        progress.epoch_samples += s.samples
        progress.total_samples += s.samples
        progress.train_seconds += seconds
        progress.epoch_seconds += seconds
        self.emit(
            "on_step",
            StepStats(
                epoch=epoch,
                step=s.step,
                samples=s.samples,
                loss=s.loss_sum / max(s.samples, 1),
                accuracy=s.correct / max(s.samples, 1),
                learning_rate=s.learning_rate,
                grad_norm=s.grad_norm,
                update_norm=s.update_norm,
                step_seconds=seconds,
                worker_compute_seconds=s.worker_compute_seconds,
                aggregate_seconds=s.aggregate_seconds,
                update_seconds=s.update_seconds,
            ),
        )

    def _checkpoint(self, state_ref: Any, on_snapshot: Callable[[Snapshot], None]) -> None:
        """The server's state at the step just recorded, saved with the progress."""
        state = self.group.get(state_ref, self.config.step_timeout_seconds, "checkpoint")
        snap = Snapshot(state["params"], state["velocity"], self.progress.copy(), state["history"])
        self.checkpointer.save_periodic(snap)
        on_snapshot(snap)

    def _end_epoch(self, epoch: int, weights_ref: Any) -> None:
        c, progress = self.config, self.progress
        n = progress.epoch_samples
        if n == 0:
            return
        test_loss = test_acc = None
        if c.eval_every_epoch and self.evaluate is not None:
            params = self.group.get(weights_ref, c.step_timeout_seconds, "fetching weights")
            test_loss, test_acc = self.evaluate(params)
        seconds = progress.epoch_seconds
        record = EpochStats(
            epoch=epoch,
            steps=progress.step,
            train_loss=progress.epoch_loss / n,
            train_accuracy=progress.epoch_correct / n,
            test_loss=test_loss,
            test_accuracy=test_acc,
            seconds=seconds,
            samples_per_second=n / seconds if seconds > 0 else 0.0,
        )
        progress.history.append(record.to_dict())
        progress.epoch_loss, progress.epoch_correct, progress.epoch_samples = 0.0, 0, 0
        progress.epoch_seconds = 0.0
        self.emit("on_epoch", record)
