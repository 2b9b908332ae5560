"""The newest state after a lost actor: what a run continues from, instead of a checkpoint.

A lost worker or server used to cost every step since the newest checkpoint (up to
``--checkpoint-every`` of them). The state at the last applied step survives in two cases:

- shared memory (one node): the server's whole state is in the exchange directory at its last
  complete step (``service.ps.state``), alive or not, and the stats of the steps the driver had
  not yet heard of are in its stats ring (``service.ps.statsring``). Once the killed server's
  process is gone (its lock is free) the driver records those steps, and the next server takes
  the directory over;
- through Ray with the server alive (a worker is lost for good): the server's unfetched steps
  and its state, taken together.

Otherwise (the server died and its state went with it) there is none: the newest checkpoint.
Either way the snapshot is the driver's progress and the server's arrays at the same step, and
depends on nothing of the lost group but the staleness: more or fewer workers can go on from it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dtrain.service.errors import DtrainError
from dtrain.service.ps.state import ServerState
from dtrain.service.ps.statsring import StatsRing
from dtrain.service.train.actors import ActorGroup
from dtrain.service.train.loop import StepLoop
from dtrain.service.train.recovery import Snapshot
from dtrain.workers import exchange

# A killed actor's process exits within moments; this bounds a wait for one that does not.
GONE_TIMEOUT_SECONDS = 60.0


def from_server(group: ActorGroup, loop: StepLoop) -> Snapshot | None:
    """Through Ray: the live server's steps and state, or None when it does not answer."""
    c = group.config
    try:
        steps, state = group.get(
            group.server.drain_state.remote(), c.step_timeout_seconds, "reading the server"
        )
        for stats, seconds in steps:
            loop.record(stats, seconds)
    except DtrainError as e:
        print(f"dtrain: the server's state is lost ({e})", file=sys.stderr)
        return None
    if state["step"] != loop.progress.step:
        return None
    return Snapshot.of_server(state, loop.progress.copy())


def from_shared_memory(
    directory: Path, group: ActorGroup, loop: StepLoop | None
) -> Snapshot | None:
    """The state a killed group left in ``directory``, with the steps the driver missed
    recorded by ``loop`` (None: the group died starting, no step was applied). The group's
    actors must have been killed."""
    c = group.config
    try:
        exchange.wait_unlocked(directory, GONE_TIMEOUT_SECONDS)
        state = ServerState.open(directory, c.model.num_params, c.staleness)
        after = loop.progress.step if loop is not None else state.step
        missed = StatsRing.open(directory).read(after, state.step)
    except (OSError, ValueError) as e:  # TimeoutError is an OSError
        print(f"dtrain: the server's state in {directory} is lost ({e})", file=sys.stderr)
        return None
    if missed is None:
        print(f"dtrain: the stats of the steps after {after} are lost", file=sys.stderr)
        return None
    if loop is None:
        return None  # nothing to record the state's step against: the snapshot stands
    for stats, seconds in missed:
        loop.record(stats, seconds)
    step = state.step
    return Snapshot(
        state.weights(step).copy(),
        state.velocity(step).copy(),
        loop.progress.copy(),
        state.history(),
    )
