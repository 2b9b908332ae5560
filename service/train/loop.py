"""The step loop: submits each step's work to the actors and follows its stats.

Per step the driver only *submits* work: the weights ref returned by the server's previous
update goes to every worker, the workers' gradient refs go straight to the server. The driver
waits on the small per-step stats, ``pipeline_depth`` steps behind, so the actors never idle
waiting for it and gradients never pass through it. Faults are not handled here: they surface
as ``ActorLost`` from the ``ActorGroup`` and ``Trainer`` rebuilds from ``latest``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from dtrain.service.observe.stats import EpochStats, StepStats
from dtrain.service.ps.server import ServerStats
from dtrain.service.train import stopping
from dtrain.service.train.actors import ActorGroup
from dtrain.service.train.recovery import Checkpointer, Progress, Snapshot, diverged

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
        # (stats ref, epoch, state ref or None) per submitted step, oldest first
        self.pending: deque[tuple[Any, int, Any]] = deque()
        self.progress = Progress()
        self.last_done = 0.0

    def run(self, start: Snapshot, on_snapshot: Callable[[Snapshot], None]) -> Snapshot:
        """Train to the end; ``on_snapshot`` hears of every whole snapshot written on the way."""
        c, server, workers = self.config, self.group.server, self.group.workers
        self.progress = start.progress.copy()
        # ready[j]: a ref that completes once the weights after update j exist. Object store:
        # those weights themselves. Shared memory: that update's stats (the weights are in
        # place). Step t computes on the weights after update max(0, t - 1 - staleness).
        k = c.staleness
        first = start.progress.step
        shared = self.group.exchange_dir is not None
        if shared:
            marker = server.ready.remote()
            ready = {j: marker for j in range(max(0, first - k), first + 1)}
        else:
            ready = {j: server.weights_at.remote(j) for j in range(max(0, first - k), first + 1)}
        self.last_done = time.perf_counter()
        if first and first % self.spe == 0 and self.progress.epoch_samples:
            # A snapshot taken at an epoch's last step precedes that epoch's record: write it
            # now, or the continued run would fold that epoch into the next one.
            self._end_epoch(
                first // self.spe, server.get_weights.remote() if shared else ready[first]
            )

        step = self.progress.step
        while step < self.total_steps:
            if stopping.requested() is not None:
                break  # a stop signal: the submitted steps drain below, the trainer saves them
            step += 1
            epoch, s_in_epoch = divmod(step - 1, self.spe)
            epoch += 1
            j = max(0, step - 1 - k)
            if shared:
                # Arrays stay in shared memory; the refs passed along only order the tasks.
                slot = j % (k + 1)
                stats = [
                    w.compute_shared.remote(ready[j], epoch, s_in_epoch, slot, step % (k + 1))
                    for w in workers
                ]
                ready[step] = stats_ref = server.apply_shared.remote(step, *stats)
            else:
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
            self.pending.append((stats_ref, epoch, state_ref))
            while len(self.pending) > c.pipeline_depth:
                self._consume(*self.pending.popleft(), on_snapshot)
            if s_in_epoch == self.spe - 1 or step == self.total_steps:
                self._drain(on_snapshot)
                self._end_epoch(epoch, server.get_weights.remote() if shared else ready[step])
                self.last_done = time.perf_counter()
        self._drain(on_snapshot)
        state = self.group.get(server.state.remote(), c.step_timeout_seconds, "fetching weights")
        history = state["history"]
        return Snapshot(
            np.array(state["params"]),
            np.array(state["velocity"]),
            self.progress,
            None if history is None else np.array(history),
        )

    def _drain(self, on_snapshot: Callable[[Snapshot], None]) -> None:
        while self.pending:
            self._consume(*self.pending.popleft(), on_snapshot)

    def _consume(
        self, stats_ref: Any, epoch: int, state_ref: Any, on_snapshot: Callable[[Snapshot], None]
    ) -> None:
        c, progress = self.config, self.progress
        what = f"step {progress.step + 1}"
        s: ServerStats = self.group.get(stats_ref, c.step_timeout_seconds, what)
        now = time.perf_counter()
        if not s.finite:
            raise diverged(c, s.step, epoch, s.loss_sum / max(s.samples, 1))
        progress.step = s.step
        progress.epoch_loss += s.loss_sum
        progress.epoch_correct += s.correct
        progress.epoch_samples += s.samples
        progress.total_samples += s.samples
        progress.train_seconds += now - self.last_done
        progress.epoch_seconds += now - self.last_done
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
                step_seconds=now - self.last_done,
                worker_compute_seconds=s.worker_compute_seconds,
                aggregate_seconds=s.aggregate_seconds,
                update_seconds=s.update_seconds,
            ),
        )
        self.last_done = now
        if state_ref is not None:
            state = self.group.get(state_ref, c.step_timeout_seconds, "checkpoint")
            snap = Snapshot(state["params"], state["velocity"], progress.copy(), state["history"])
            self.checkpointer.save_periodic(snap)
            on_snapshot(snap)
            self.last_done = time.perf_counter()

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
