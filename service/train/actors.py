"""The one owner of a run's actors: starts the server and workers, waits on them, kills them.

Ray's errors end here: a dead or hung actor becomes ``ActorLost`` (recoverable by a rebuild), a
task that failed for any other reason a plain ``DtrainError``. Nothing else touches Ray's
actor handles' lifecycle, so recovery and the step loop never see a Ray exception.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from dtrain.service.errors import DtrainError, first_line
from dtrain.service.ps.server import ParameterServer
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.recovery import Snapshot
from dtrain.workers import exchange
from dtrain.workers.actor import Worker
from dtrain.workers.shards import ShardSource
from dtrain.workers.steplink import PeerTimeout

# Actors start in fresh processes and load their rows; on a loaded 2-core machine that takes
# seconds, so this bound only catches the cluster that cannot place them at all.
ACTOR_START_TIMEOUT_SECONDS = 120.0
# A live worker answers pid() on its second thread within milliseconds, even mid-segment.
LOST_PROBE_SECONDS = 5.0


class ActorLost(DtrainError):
    """An actor died or hung: recoverable by rebuilding the actors from the last snapshot."""


class ActorGroup:
    """One parameter server and one worker per block of ``parts``, started from a snapshot.

    An elastic run changes ``parts`` (and, with the cluster's node count, ``shared_memory``)
    between a ``kill`` and the next ``start``.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        manifest: dict[str, Any],
        parts: list[tuple[int, int]],
        source: ShardSource,
        total_steps: int,
        num_gpu_workers: int,
        shared_memory: bool,
    ) -> None:
        self.config = config
        self.manifest = manifest
        self.parts = parts
        self.source = source
        self.total_steps = total_steps
        self.num_gpu_workers = num_gpu_workers
        self.shared_memory = shared_memory
        self.server: Any = None
        self.workers: list[Any] = []
        self.worker_nodes: list[str] = []
        # Shared-memory exchange only: where the weights and gradients live (None: object store).
        self.exchange_dir: Path | None = None

    def start(self, snapshot: Snapshot, take_over: Path | None = None) -> None:
        """Start every actor from ``snapshot``; with ``take_over`` (the exchange directory of a
        killed group, whose state is the snapshot's) the new server opens that state in place."""
        c = self.config
        if take_over is not None:
            self.exchange_dir = take_over
        else:
            self.exchange_dir = exchange.new_exchange_dir() if self.shared_memory else None
        shared = self.exchange_dir is not None
        # Threads: with shared memory one runs the segment, one answers the driver; through
        # Ray, every worker's blocking weights() call and its push need one as well.
        threads = 2 if shared else 2 * self.num_workers + 4
        self.server = (
            ray.remote(ParameterServer)
            # The server's state cannot be rebuilt by re-running its constructor, so Ray must
            # not restart it: recovery does, from the last snapshot.
            .options(num_cpus=0, max_restarts=0, max_concurrency=threads)
            .remote(
                spec=c.model,
                optimizer=c.optimizer,
                # Taking over, the state is in the directory already: nothing to ship.
                params=None if take_over else snapshot.params,
                velocity=None if take_over else snapshot.velocity,
                staleness=c.staleness,
                history=None if take_over else snapshot.history,
                take_over=take_over is not None,
                step=snapshot.progress.step,
                total_steps=self.total_steps,
                exchange_dir=self.exchange_dir and str(self.exchange_dir),
                num_workers=self.num_workers,
                step_timeout=c.step_timeout_seconds,
            )
        )
        if take_over is not None:
            step = self.get(self.server.ready.remote(), ACTOR_START_TIMEOUT_SECONDS, "start")
            if step != snapshot.progress.step:
                raise DtrainError(
                    f"the state in {take_over} is at step {step}, the run at step "
                    f"{snapshot.progress.step}"
                )
        worker_cls = ray.remote(Worker)
        base: dict[str, Any] = {
            "num_cpus": c.num_cpus_per_worker,
            # Across nodes where the cluster has several: each node's CPUs and network share
            # the work, and one lost node takes fewer workers with it.
            "scheduling_strategy": "SPREAD",
        }
        if shared:
            # A worker runs whole segments in step with the server through pipes: a restarted
            # one could not rejoin mid-segment, so a death ends the segment (ActorLost) and
            # recovery rebuilds every actor from the server's state in shared memory.
            base.update(max_restarts=0, max_task_retries=0)
        else:
            # A worker's constructor reloads the same rows, a step is deterministic and the
            # server drops pushes it has applied, so Ray may restart a dead worker and re-run
            # its segment from the server's current step without changing a bit.
            base.update(max_restarts=c.max_restarts, max_task_retries=c.max_restarts)
        base["max_concurrency"] = 2  # pid() and node_id() answer while a segment runs
        num_gpu = self.num_gpu_workers
        self.workers = [
            worker_cls.options(**base, **({"num_gpus": 1} if rank < num_gpu else {})).remote(
                device="gpu" if rank < num_gpu else "cpu",
                rank=rank,
                spec=c.model,
                data_dir=str(c.data_dir),
                source=self.source,
                manifest=self.manifest,
                batch_size=c.batch_size,
                parts=parts,
                seed=c.seed,
                exchange_dir=self.exchange_dir and str(self.exchange_dir),
                num_slots=c.staleness + 1,
                step_timeout=c.step_timeout_seconds,
            )
            for rank, parts in enumerate(self.parts)
        ]
        self._wait_started([self.server.ready.remote(), *[w.ready.remote() for w in self.workers]])
        self.worker_nodes = self.get(
            [w.node_id.remote() for w in self.workers], ACTOR_START_TIMEOUT_SECONDS, "start"
        )

    @property
    def num_workers(self) -> int:
        return len(self.parts)

    def lost_workers(self, timeout: float = LOST_PROBE_SECONDS) -> list[int]:
        """The ranks of the workers that are dead or do not answer (stopped, hung) within
        ``timeout`` seconds: after a failed segment, who is lost."""
        refs = {w.pid.remote(): rank for rank, w in enumerate(self.workers)}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        answered = set()
        for ref in ready:
            try:
                ray.get(ref, timeout=0)
            except (RayActorError, RayTaskError, GetTimeoutError):
                continue
            answered.add(refs[ref])
        return sorted(set(refs.values()) - answered)

    def kill(self, keep_exchange: bool = False) -> None:
        """Kill every actor; ``keep_exchange``: leave the exchange directory (the server's
        state) for the next group to take over, else remove it."""
        for actor in [self.server, *self.workers]:
            if actor is not None:
                ray.kill(actor)
        self.server, self.workers = None, []
        if self.exchange_dir is not None and not keep_exchange:
            shutil.rmtree(self.exchange_dir, ignore_errors=True)
            self.exchange_dir = None

    def get(self, refs: Any, timeout: float, what: str) -> Any:
        """``ray.get`` with Ray's failures turned into ``ActorLost`` or a one-line error."""
        try:
            return ray.get(refs, timeout=timeout)
        except GetTimeoutError as e:
            raise ActorLost(f"{what} did not finish within {timeout:g}s") from e
        except RayActorError as e:
            raise ActorLost(f"an actor died during {what} ({first_line(e)})") from e
        except RayTaskError as e:
            cause = e.cause if isinstance(e.cause, Exception) else e
            if isinstance(cause, RayActorError):
                raise ActorLost(f"an actor died during {what} ({first_line(cause)})") from e
            while isinstance(cause, RayTaskError) and isinstance(cause.cause, Exception):
                cause = cause.cause  # a worker's call to the server failed inside its task
            if isinstance(cause, RayActorError):
                raise ActorLost(f"an actor died during {what} ({first_line(cause)})") from e
            if isinstance(cause, PeerTimeout):  # a peer in the segment died or stopped
                raise ActorLost(f"{what}: {first_line(cause)}") from e
            raise DtrainError(f"{what} failed: {first_line(cause)}") from e

    def wait(self, refs: list[Any], timeout: float, what: str) -> list[Any]:
        """The refs of ``refs`` still running after at most ``timeout`` seconds; one that
        failed raises here, as ``get`` would."""
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)
        if ready:
            self.get(ready, timeout, what)
        return list(pending)

    def _wait_started(self, refs: list[Any]) -> None:
        try:
            self.get(refs, ACTOR_START_TIMEOUT_SECONDS, "start")
        except ActorLost as e:
            # A constructor that fails (no CuPy, unreadable rows) fails again on a retry.
            raise DtrainError(f"the actors could not start: {e}") from e
