"""Around the step loop: what happens when an actor is lost, and when an elastic run resizes.

Ray Train's shape, small: one owner of the actors (``ActorGroup``), a failure policy
(``RestartPolicy``), a membership policy (``membership.Membership``), and the step loop apart
from all three. This module is where they meet:

- an actor lost -> the newest state (``livestate``: the step reached, else the newest
  checkpoint), then either a restart with the same workers (counted against
  ``--max-restarts``), or, for an elastic run whose lost workers have no restart left, the
  survivors going on from that same step; below MIN, a checkpoint and one line;
- an elastic run with more room at a segment boundary -> the live state, and more workers.

A change of size is recorded in the progress (so in every later checkpoint), written as a
checkpoint at once (a resumed run continues with that size), and told to the observers.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from dtrain.service.observe.stats import WorkerSlowness
from dtrain.service.train import livestate, session
from dtrain.service.train.actors import ActorGroup, ActorLost
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.loop import Evaluate, Regroup, StepLoop
from dtrain.service.train.membership import (
    GREW,
    LOST,
    STRAGGLER,
    UNPLACEABLE,
    BelowMinimum,
    Membership,
)
from dtrain.service.train.plan import plan_epoch
from dtrain.service.train.recovery import Checkpointer, RestartPolicy, Snapshot
from dtrain.workers.sampling import blocks, counts_by_speed


class Supervisor:
    """Trains ``group`` from a snapshot to the last step, through faults and resizes."""

    def __init__(
        self,
        group: ActorGroup,
        members: Membership,
        *,
        num_train: int,
        steps_per_epoch: int,
        total_steps: int,
        checkpointer: Checkpointer,
        emit: Callable[..., None],
        evaluate: Evaluate,
    ) -> None:
        self.group = group
        self.config: TrainConfig = group.config
        self.members = members
        self.num_train = num_train
        self.spe = steps_per_epoch
        self.total_steps = total_steps
        self.checkpointer = checkpointer
        self.emit = emit
        self.evaluate = evaluate
        self.policy = RestartPolicy(self.config.max_restarts)

    def run(self, start: Snapshot) -> Snapshot:
        group = self.group
        start.progress.num_workers = self.members.size  # what a resumed run starts with
        saved = start.progress.step  # a resumed run's checkpoint, or nothing (step 0)
        take_over: Path | None = None
        try:
            while True:
                latest = start
                loop: StepLoop | None = None

                def keep(snap: Snapshot) -> None:
                    nonlocal latest, saved
                    latest, saved = snap, snap.progress.step

                try:
                    self._place(self.members.size)
                    group.start(start, take_over)
                    self.emit("on_health", len(group.workers), start.progress.restarts, 0)
                    self.emit("on_workers", [stop - first for first, stop in group.parts])
                    loop = StepLoop(
                        group,
                        steps_per_epoch=self.spe,
                        total_steps=self.total_steps,
                        emit=self.emit,
                        checkpointer=self.checkpointer,
                        evaluate=self.evaluate,
                        regroup=self._regroup if self.config.elastic else None,
                    )
                    return loop.run(start, on_snapshot=keep, saved_step=saved)
                except Regroup as r:
                    assert loop is not None  # raised by the loop
                    # Between segments: every actor idle, the server at the driver's step.
                    state = group.get(
                        group.server.state.remote(), self.config.step_timeout_seconds, "resizing"
                    )
                    group.kill()
                    take_over = None
                    idle = Snapshot.of_server(state, loop.progress.copy())
                    reason = GREW if r.counts is None else STRAGGLER
                    start = self._resize(idle, r.size, reason, r.counts)
                    saved = start.progress.step
                except ActorLost as e:
                    lost = group.lost_workers()
                    newest, take_over = self._newest(loop)
                    start, resized = self._after_loss(newest or latest, e, lost, newest is not None)
                    if resized:
                        saved = start.progress.step
                        if take_over is not None:  # the new size opens a fresh exchange
                            shutil.rmtree(take_over, ignore_errors=True)
                            take_over = None
                    self.emit("on_health", 0, start.progress.restarts, 1)
        finally:
            group.kill()

    def _place(self, size: int) -> None:
        """Give the group ``size`` workers' parts, and the exchange the cluster allows now."""
        group, c, counts = self.group, self.config, self.members.parts
        parts = blocks(counts) if counts else plan_epoch(self.num_train, size, c.batch_size).parts
        if group.parts != parts:
            resized = group.num_workers != size
            group.parts = parts
            if resized:
                group.num_gpu_workers = min(group.num_gpu_workers, size)
                group.shared_memory = session.use_shared_memory(c)

    def _regroup(self, verdicts: list[WorkerSlowness] | None) -> Regroup | None:
        """At a segment boundary: grow onto new room, else move parts off a new straggler."""
        size = self.members.grown(session.worker_capacity(self.config))
        if size is not None:
            return Regroup(size)
        if not (verdicts and self.config.rebalance_stragglers and any(v.new for v in verdicts)):
            return None
        now = [stop - first for first, stop in self.group.parts]
        counts = counts_by_speed(now, [v.ratio for v in verdicts])
        return Regroup(self.members.size, counts) if counts != now else None

    def _newest(self, loop: StepLoop | None) -> tuple[Snapshot | None, Path | None]:
        """Kill the group; the live state to continue from (None: the newest checkpoint), and
        the exchange directory the next server takes over with it (shared memory)."""
        group = self.group
        directory = group.exchange_dir
        if directory is None:
            live = livestate.from_server(group, loop) if loop is not None else None
            group.kill()
            return live, None
        group.kill(keep_exchange=True)
        live = livestate.from_shared_memory(directory, group, loop)
        if live is None:
            shutil.rmtree(directory, ignore_errors=True)
            return None, None
        return live, directory

    def _after_loss(
        self, newest: Snapshot, error: ActorLost, lost: list[int], live: bool
    ) -> tuple[Snapshot, bool]:
        """The snapshot to go on from after ``error`` (``lost``: the workers that did not
        answer), and whether the run changed size; raises what ends the run."""
        c, members = self.config, self.members
        step = newest.progress.step + 1
        capacity = session.worker_capacity(c)
        has_restart = newest.progress.restarts < self.policy.max_restarts
        # A lost server or a hang without a silent worker is a restart of the same workers; so is
        # every loss of a fixed-size run, and of an elastic one with restarts left.
        restart = not lost or has_restart or not c.elastic
        try:
            size = members.after_loss(
                num_lost=len(lost), restart=restart, capacity=capacity, step=step
            )
        except BelowMinimum as e:
            if restart and not has_restart:
                self.policy.next_start(newest, error, live)  # the restart policy's own words
            self._save(newest)
            raise BelowMinimum(
                f"{e}: stopping at step {newest.progress.step}, which is checkpointed "
                f"(resume with dtrain train --resume {c.run_dir})"
            ) from error
        if restart:
            newest = self.policy.next_start(newest, error, live)
        else:
            ranks = ", ".join(map(str, lost))
            print(
                f"dtrain: {error}; worker {ranks} lost with no restart left: going on from "
                f"step {newest.progress.step} with {size} of {members.most} workers",
                file=sys.stderr,
            )
        if size == members.size:
            return newest, False
        return self._resize(newest, size, UNPLACEABLE if restart else LOST), True

    def _resize(
        self, snap: Snapshot, size: int, reason: str, counts: list[int] | None = None
    ) -> Snapshot:
        """Record the change to ``size`` workers (computing ``counts`` parts of each batch;
        None: an even split) from the step after ``snap``, and checkpoint it."""
        change = self.members.change(size, snap.progress.step + 1, reason, counts)
        if change is None:
            return snap
        progress = snap.progress.copy()
        progress.num_workers = size
        progress.parts = list(change.parts)
        progress.membership.append(change.to_dict())
        resized = Snapshot(snap.params, snap.velocity, progress, snap.history)
        self.emit("on_membership", change)
        self._save(resized)
        return resized

    def _save(self, snap: Snapshot) -> None:
        if snap.progress.step:  # step 0 is the seed's weights: nothing to keep
            self.checkpointer.save_periodic(snap)


def first_size(config: TrainConfig, wanted: int, parts: list[int] | None = None) -> Membership:
    """The membership a run starts with: ``wanted`` workers (MAX, or what a resumed run had,
    with its ``parts``) as far as the cluster can place them."""
    return Membership.start(
        fewest=config.fewest_workers,
        most=config.num_workers,
        wanted=wanted,
        capacity=session.worker_capacity(config),
        parts=parts,
    )
