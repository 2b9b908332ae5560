"""The step loop: the driver starts segments of steps on the actors and follows their stats.

The driver starts a *segment* with one ``run(first, last)`` call per actor; inside it the
server and the workers step by themselves, and the driver only follows the server's progress
record every ``POLL_SECONDS``. A segment ends where the driver has work: a checkpoint, an
epoch's end (evaluation), the last step. No Ray task and no driver work per step:

- shared memory (one node): the arrays stay in /dev/shm and the two per-step facts ("weights
  after update j written", "gradient t written") go through pipes (``workers.steplink``);
- through Ray (several nodes): each worker pulls the weights from the server actor and pushes
  its gradient to it (``service.ps.collector``).

Faults are not handled here: they surface as ``ActorLost`` from the ``ActorGroup`` and
``Trainer`` rebuilds from the newest state (``service.train.livestate``), after which a run may
start at a step where the driver still has a boundary's work to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from dtrain.service.errors import DtrainError
from dtrain.service.observe.stats import EpochStats, StepStats, WorkerSlowness
from dtrain.service.ps.server import ServerStats
from dtrain.service.train import stopping
from dtrain.service.train.actors import ActorGroup, ActorLost
from dtrain.service.train.recovery import Checkpointer, Progress, Snapshot, diverged
from dtrain.service.train.stragglers import StragglerWatch

# How often the driver looks at a running segment: the latency of live metrics and progress.
POLL_SECONDS = 0.5

# Test loss and accuracy of a weight vector.
Evaluate = Callable[[np.ndarray], tuple[float, float]]


class Regroup(Exception):
    """The loop stopped at a segment boundary for the run to continue with ``size`` workers
    (computing ``counts`` parts of each batch, by rank; None: an even split); every actor is
    alive and idle, the server at the driver's step."""

    def __init__(self, size: int, counts: list[int] | None = None) -> None:
        super().__init__(f"regroup to {size} workers")
        self.size = size
        self.counts = counts


# Asked at every segment boundary with the newest straggler verdicts (None: no window ended
# since the last boundary): a ``Regroup`` to raise there, or None to go on.
Regrouper = Callable[[list[WorkerSlowness] | None], Regroup | None]


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
        regroup: Regrouper | None = None,
    ) -> None:
        """``regroup``: asked at every segment boundary whether the loop ends there with a
        ``Regroup`` (an elastic run grows, or moves parts away from a straggler)."""
        self.group = group
        self.regroup = regroup
        self.config = group.config
        self.spe = steps_per_epoch
        self.total_steps = total_steps
        self.emit = emit
        self.checkpointer = checkpointer
        self.evaluate = evaluate
        self.progress = Progress()
        self.stragglers = StragglerWatch(list(group.worker_nodes))
        self.slowness: list[WorkerSlowness] | None = None

    def run(
        self, start: Snapshot, on_snapshot: Callable[[Snapshot], None], saved_step: int = 0
    ) -> Snapshot:
        """Train to the end; ``on_snapshot`` hears of every whole snapshot written on the way.
        ``saved_step``: the step of the newest checkpoint written (not to be written again)."""
        c, server = self.config, self.group.server
        self.progress = start.progress.copy()
        first = start.progress.step
        ce = c.checkpoint_every
        if first > saved_step and ce and first % ce == 0 and first < self.total_steps:
            # A live state taken at a checkpoint's step, before the driver wrote it.
            self._checkpoint(server.state.remote(), on_snapshot)
        at_end = first % self.spe == 0 or first == self.total_steps
        if first and at_end and self.progress.epoch_samples:
            # A snapshot taken at an epoch's last step precedes that epoch's record: write it
            # now, or the continued run would fold that epoch into the next one.
            self._end_epoch((first - 1) // self.spe + 1, server.get_weights.remote())
        self._run_segments(on_snapshot)
        state = self.group.get(server.state.remote(), c.step_timeout_seconds, "fetching weights")
        return Snapshot.of_server(state, self.progress)

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
        # Through Ray (no shared memory) the workers call the server themselves.
        direct = server if self.group.exchange_dir is None else None
        step = self.progress.step
        while step < self.total_steps:
            if stopping.requested() is not None:
                # A stop signal takes effect at a segment boundary (the actors run a segment
                # on their own); the trainer checkpoints the step reached.
                break
            last = self._segment_end(step + 1)
            refs = [
                server.run.remote(step + 1, last),
                *[w.run.remote(step + 1, last, self.spe, direct) for w in workers],
            ]
            self._follow(refs)
            if self.progress.step != last:  # every actor returned, yet steps are missing
                raise DtrainError(f"the segment to step {last} ended at step {self.progress.step}")
            step = last
            if c.checkpoint_every and step % c.checkpoint_every == 0 and step < self.total_steps:
                self._checkpoint(server.state.remote(), on_snapshot)
            if step % self.spe == 0 or step == self.total_steps:
                self._end_epoch((step - 1) // self.spe + 1, server.get_weights.remote())
            if self.regroup is not None and step < self.total_steps:
                verdicts, self.slowness = self.slowness, None
                regroup = self.regroup(verdicts)
                if regroup is not None:
                    raise regroup

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
                self.record(stats, seconds)
            if not pending:
                return
            now = time.monotonic()
            if steps:
                moved = now
            elif now - moved > c.step_timeout_seconds:
                raise ActorLost(f"{what} did not finish within {c.step_timeout_seconds:g}s")

    def record(self, s: ServerStats, seconds: float) -> None:
        """One applied step into the progress and to the observers, once: every step comes
        once, in order (a step the driver has already recorded is an error)."""
        c, progress = self.config, self.progress
        epoch = (s.step - 1) // self.spe + 1
        if s.step != progress.step + 1:
            raise DtrainError(f"the server reported step {s.step} after step {progress.step}")
        if not s.finite:
            raise diverged(c, s.step, epoch, s.loss_sum / max(s.samples, 1))
        progress.step = s.step
        progress.epoch_loss += s.loss_sum
        progress.epoch_correct += s.correct
        progress.epoch_samples += s.samples
        progress.total_samples += s.samples
        progress.train_seconds += seconds
        progress.epoch_seconds += seconds
        slowness = self.stragglers.add(s.worker_compute_seconds)
        if slowness is not None:
            self.slowness = slowness
            self.emit("on_slowness", slowness)
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
        snap = Snapshot.of_server(state, self.progress.copy())
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
