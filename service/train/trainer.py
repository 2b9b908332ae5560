"""The training driver: starts (or joins) Ray, places the server and workers, runs the steps.

Per step the driver only *submits* work: the weights ref returned by the server's previous
update goes to every worker, the workers' gradient refs go straight to the server. The driver
waits on the small per-step stats, ``pipeline_depth`` steps behind, so the actors never idle
waiting for it and gradients never pass through it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import ray
from dtrain.service import __version__
from dtrain.service.data import transport
from dtrain.service.errors import DtrainError
from dtrain.service.observe.observers import Observer
from dtrain.service.observe.stats import EpochStats, JobInfo, RunSummary, StepStats
from dtrain.service.ps.server import ParameterServer, ServerStats
from dtrain.service.train import checkpoint
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.plan import split_evenly, steps_per_epoch, worker_batch_sizes
from dtrain.workers import exchange
from dtrain.workers.actor import Worker
from dtrain.workers.model import Network, init_params
from dtrain.workers.shards import ShardError, ShardSource, read_rows, to_float
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

log = logging.getLogger(__name__)

# Actors start in fresh processes and load their rows; on a loaded 2-core machine that takes
# seconds, so this bound only catches the cluster that cannot place them at all.
ACTOR_START_TIMEOUT_SECONDS = 120.0


def resolve_address(address: str | None) -> str:
    """``--address``, else ``RAY_ADDRESS`` (set for a job's entrypoint), else a new local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


@contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[None]:
    """Join an already-initialised Ray (tests), else init one and shut it down afterwards."""
    if ray.is_initialized():
        yield
        return
    target = resolve_address(address)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if target == "local":
        # Token authentication: Ray >= 2.59 turns it on for a new local cluster unless the user
        # set RAY_AUTH_MODE (setting it here, after `import ray`, would desync Ray's config).
        kwargs["num_cpus"] = num_cpus
    else:
        probe_address(target)
    try:
        ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise DtrainError(f"cannot connect to Ray at {target}: {first_line(e)}") from e
    try:
        yield
    finally:
        ray.shutdown()


# ray.init retries an unreachable GCS for minutes; a plain TCP connect answers in seconds.
PROBE_TIMEOUT_SECONDS = 5.0


def probe_address(address: str) -> None:
    """Fail fast, in one line, when a ``host:port`` cluster address does not answer."""
    if address == "auto" or ("://" in address and not address.startswith("ray://")):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise DtrainError(f"bad Ray address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_SECONDS).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise DtrainError(f"cannot reach the Ray cluster at {address}: {reason}") from e


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class ActorLost(DtrainError):
    """An actor died or hung: recoverable by rebuilding the actors from the last checkpoint."""


@dataclass
class Progress:
    """Everything besides the server's arrays that a resumed run needs to continue exactly."""

    step: int = 0
    epoch_loss: float = 0.0
    epoch_correct: int = 0
    epoch_samples: int = 0
    epoch_seconds: float = 0.0
    total_samples: int = 0
    train_seconds: float = 0.0
    restarts: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def copy(self) -> Progress:
        return Progress(**{**asdict(self), "history": [dict(h) for h in self.history]})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Progress:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class Snapshot:
    """The server's state and the driver's progress at the same step."""

    params: np.ndarray
    velocity: np.ndarray
    progress: Progress
    # With bounded staleness k: the weights after the k updates before ``params``, oldest first.
    history: np.ndarray | None = None


# Fields of the config that decide the weights: a resumed run must match them exactly.
RESUME_MUST_MATCH = (
    "staleness",
    "batch_size",
    "num_workers",
    "model",
    "optimizer",
    "seed",
    "epochs",
    "max_steps",
)


class Trainer:
    """One training run. ``run()`` returns the summary or raises ``DtrainError``."""

    def __init__(
        self,
        config: TrainConfig,
        observers: Sequence[Observer] = (),
        address: str | None = None,
        resume: bool = False,
    ) -> None:
        self.config = config
        self.observers = list(observers)
        self.address = address
        self.resume = resume
        self.net = Network(config.model)
        self._test: tuple[np.ndarray, np.ndarray] | None = None
        # The newest state known to be whole: where a rebuild after a lost actor restarts.
        self._latest_snapshot: Snapshot | None = None
        # The live actors, for observers that inspect them (and the chaos tests).
        self.server: Any = None
        self.workers: list[Any] = []
        self._gpu_workers = 0
        self._shared_memory = False
        self._exchange_dir: Path | None = None
        # The data transport and each rank's shard source, fixed once per run: object-store
        # sources hold the refs of the shipped shards, which must outlive every rebuild.
        self._transport = ""
        self._sources: list[ShardSource] | None = None
        self._worker_nodes: list[str] = []

    # --- set-up ----------------------------------------------------------------------------

    def _plan(self, manifest: dict[str, Any]) -> tuple[list[tuple[int, int]], list[int], int]:
        c = self.config
        n_train = int(manifest["splits"]["train"]["num_samples"])
        if c.num_workers > n_train:
            raise DtrainError(
                f"num_workers ({c.num_workers}) is more than the {n_train} training samples"
            )
        ranges = split_evenly(n_train, c.num_workers)
        counts = [stop - start for start, stop in ranges]
        slices = worker_batch_sizes(c.batch_size, counts)
        return ranges, slices, steps_per_epoch(counts, slices)

    def _emit(self, hook: str, *args: Any) -> None:
        for obs in self.observers:
            getattr(obs, hook)(*args)

    def _check_resources(self) -> None:
        c = self.config
        need = c.num_workers * c.num_cpus_per_worker
        have = ray.cluster_resources().get("CPU", 0.0)
        if need > have:
            raise DtrainError(
                f"the Ray cluster has {have:g} CPUs but {c.num_workers} workers x "
                f"{c.num_cpus_per_worker:g} CPUs need {need:g}: lower --num-workers or "
                "--cpus-per-worker"
            )

    def _use_shared_memory(self) -> bool:
        """Shared-memory exchange needs every actor on one node: the default on one node."""
        c = self.config
        if c.exchange == "object-store":
            return False
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if c.exchange == "shared-memory" and len(nodes) > 1:
            raise DtrainError(
                f"--exchange shared-memory needs a single-node cluster, this one has {len(nodes)} "
                "nodes: use --exchange object-store or auto"
            )
        return len(nodes) == 1

    def _num_gpu_workers(self) -> int:
        """How many workers get a GPU: checked against the cluster so nothing waits forever."""
        c = self.config
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if c.device == "cpu":
            return 0
        if c.device == "auto":
            return min(c.num_workers, gpus)
        wanted = c.num_workers if c.num_gpu_workers is None else c.num_gpu_workers
        if wanted > gpus:
            raise DtrainError(
                f"--device gpu needs {wanted} GPUs but the Ray cluster has {gpus}: use "
                "--device auto, --gpu-workers, or a cluster with GPU nodes"
            )
        return wanted

    def _initial_snapshot(self) -> Snapshot:
        c = self.config
        if not self.resume:
            params = init_params(c.model, c.seed)
            return Snapshot(params, np.zeros_like(params), Progress())
        ckpt = latest_checkpoint(c.run_dir)
        check_resumable(ckpt, c)
        velocity = ckpt.velocity if ckpt.velocity is not None else np.zeros_like(ckpt.params)
        progress = Progress.from_dict(ckpt.meta.get("progress", {}))
        history = None if ckpt.history is None else np.array(ckpt.history)
        return Snapshot(np.array(ckpt.params), np.array(velocity), progress, history)

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        c = self.config
        wall_start = time.perf_counter()
        # Checked on the driver (checksums, schemas) before any actor exists.
        manifest = transport.load_manifest(c.data_dir)
        ranges, slices, spe = self._plan(manifest)
        total_steps = spe * c.epochs
        if c.max_steps is not None:
            total_steps = min(total_steps, c.max_steps)
        snapshot = self._initial_snapshot()
        try:
            test_x, test_y = read_rows(
                c.data_dir, manifest, "test", 0, manifest["splits"]["test"]["num_samples"]
            )
        except ShardError as e:
            raise DtrainError(str(e)) from e
        self._test = (to_float(test_x), test_y)
        info = JobInfo(
            version=__version__,
            run_dir=str(c.run_dir),
            num_workers=c.num_workers,
            batch_size=c.batch_size,
            optimizer=c.optimizer.name,
            learning_rate=c.optimizer.learning_rate,
            momentum=c.optimizer.momentum,
            epochs=c.epochs,
            steps_per_epoch=spe,
            hidden_sizes=c.model.hidden_sizes,
            num_params=c.model.num_params,
            num_train_samples=int(manifest["splits"]["train"]["num_samples"]),
            num_test_samples=int(test_x.shape[0]),
        )
        summary: RunSummary | None = None
        error: BaseException | None = None
        try:
            num_cpus = max(os.cpu_count() or 1, int(np.ceil(c.num_workers * c.num_cpus_per_worker)))
            with ray_session(self.address, num_cpus):
                self._check_resources()
                self._gpu_workers = self._num_gpu_workers()
                self._shared_memory = self._use_shared_memory()
                # Only now, with a cluster that can run the job, does the run directory appear.
                c.run_dir.mkdir(parents=True, exist_ok=True)
                if not self.resume:
                    checkpoint.atomic_write_bytes(
                        c.run_dir / "config.json", json.dumps(c.to_dict(), indent=2).encode()
                    )
                self._emit("on_start", info)
                final = self._train_with_recovery(
                    manifest, ranges, slices, spe, total_steps, snapshot
                )
            summary = self._finish(final, wall_start)
            return summary
        except BaseException as e:
            error = e
            raise
        finally:
            self._emit("on_end", summary, error)

    def _finish(self, final: Snapshot, wall_start: float) -> RunSummary:
        c = self.config
        assert self._test is not None
        progress = final.progress
        test_loss, test_acc = self.net.evaluate(final.params, *self._test)
        ckpt_path = c.run_dir / FINAL_CHECKPOINT
        self._save(ckpt_path, final, extra={"test_accuracy": test_acc})
        history = progress.history
        summary = RunSummary(
            test_accuracy=test_acc,
            test_loss=test_loss,
            train_accuracy=history[-1]["train_accuracy"] if history else 0.0,
            train_loss=history[-1]["train_loss"] if history else 0.0,
            epochs=len(history),
            steps=progress.step,
            num_workers=c.num_workers,
            batch_size=c.batch_size,
            learning_rate=c.optimizer.learning_rate,
            optimizer=c.optimizer.name,
            wall_seconds=time.perf_counter() - wall_start,
            train_seconds=progress.train_seconds,
            samples_per_second=(
                progress.total_samples / progress.train_seconds if progress.train_seconds else 0.0
            ),
            checkpoint=str(ckpt_path),
            run_dir=str(c.run_dir),
            restarts=progress.restarts,
            data_transport=self._transport,
            worker_nodes=list(self._worker_nodes),
            history=history,
        )
        checkpoint.atomic_write_bytes(
            c.run_dir / "summary.json", json.dumps(summary.to_dict(), indent=2).encode()
        )
        return summary

    def _save(self, path: Path, snap: Snapshot, extra: dict[str, Any] | None = None) -> None:
        meta = {
            "step": snap.progress.step,
            "progress": asdict(snap.progress),
            "config": self.config.to_dict(),
            **(extra or {}),
        }
        checkpoint.save(
            path,
            checkpoint.Checkpoint(
                spec=self.config.model,
                params=snap.params,
                velocity=snap.velocity,
                meta=meta,
                history=snap.history,
            ),
        )
        self._emit("on_checkpoint", path, snap.progress.step)

    def _save_periodic(self, snap: Snapshot) -> None:
        directory = self.config.run_dir / CHECKPOINT_DIR
        self._save(directory / f"step-{snap.progress.step:08d}.npz", snap)
        # Keep the newest two: one may be mid-write when the machine dies, the other is whole.
        for old in sorted(directory.glob("step-*.npz"))[:-2]:
            old.unlink(missing_ok=True)

    def _train_with_recovery(
        self,
        manifest: dict[str, Any],
        ranges: list[tuple[int, int]],
        slices: list[int],
        spe: int,
        total_steps: int,
        snapshot: Snapshot,
    ) -> Snapshot:
        """Run the steps; when an actor is lost, rebuild all actors from the last snapshot.

        Workers that crash are first restarted by Ray itself (``max_restarts``) and their
        in-flight steps retried, which needs no rollback because a step is deterministic. This
        outer loop catches the rest: a lost server, a hung actor, a worker out of restarts.
        """
        c = self.config
        last_good = snapshot
        while True:
            actors: list[Any] = []
            try:
                server, workers = self._start_actors(
                    manifest, ranges, slices, total_steps, last_good
                )
                actors = [server, *workers]
                return self._train(server, workers, spe, total_steps, last_good)
            except ActorLost as e:
                snap = self._latest_snapshot or last_good
                restarts = snap.progress.restarts + 1
                if restarts > c.max_restarts:
                    raise DtrainError(f"giving up after {c.max_restarts} restarts: {e}") from e
                print(
                    f"dtrain: {e}; restarting the actors from step {snap.progress.step} "
                    f"(restart {restarts} of {c.max_restarts})",
                    file=sys.stderr,
                )
                last_good = Snapshot(snap.params, snap.velocity, snap.progress.copy(), snap.history)
                last_good.progress.restarts = restarts
                self._emit("on_health", 0, restarts, 1)
            finally:
                for actor in actors:
                    ray.kill(actor)
                if self._exchange_dir is not None:
                    shutil.rmtree(self._exchange_dir, ignore_errors=True)

    def _start_actors(
        self,
        manifest: dict[str, Any],
        ranges: list[tuple[int, int]],
        slices: list[int],
        total_steps: int,
        snapshot: Snapshot,
    ) -> tuple[Any, list[Any]]:
        c = self.config
        self._exchange_dir = exchange.new_exchange_dir() if self._shared_memory else None
        shared = (
            {"exchange_dir": str(self._exchange_dir), "num_workers": c.num_workers}
            if self._exchange_dir is not None
            else {}
        )
        server = (
            ray.remote(ParameterServer)
            # The server's state cannot be rebuilt by re-running its constructor, so Ray must
            # not restart it: the driver does, from the last snapshot.
            .options(num_cpus=0, max_restarts=0)
            .remote(
                spec=c.model,
                optimizer=c.optimizer,
                params=snapshot.params,
                velocity=snapshot.velocity,
                staleness=c.staleness,
                history=snapshot.history,
                step=snapshot.progress.step,
                total_steps=total_steps,
                **shared,
            )
        )
        if shared:  # the server creates the shared files, which the workers then open
            self._start_wait([server.ready.remote()])
        # A worker's constructor reloads the same rows, and a step is deterministic, so Ray may
        # restart a dead worker and re-run its in-flight steps without changing a bit.
        if self._sources is None:
            self._transport = transport.choose(
                c.data_transport, c.data_dir, len(transport.alive_nodes())
            )
            self._sources = transport.worker_sources(self._transport, c.data_dir, manifest, ranges)
        worker_cls = ray.remote(Worker)
        base = {
            "num_cpus": c.num_cpus_per_worker,
            "max_restarts": c.max_restarts,
            "max_task_retries": c.max_restarts,
            # Across nodes where the cluster has several: each node's CPUs and network share
            # the work, and one lost node takes fewer workers with it.
            "scheduling_strategy": "SPREAD",
        }
        num_gpu = self._gpu_workers
        workers = [
            worker_cls.options(**base, **({"num_gpus": 1} if rank < num_gpu else {})).remote(
                device="gpu" if rank < num_gpu else "cpu",
                rank=rank,
                spec=c.model,
                data_dir=str(c.data_dir),
                source=self._sources[rank],
                manifest=manifest,
                row_range=row_range,
                batch_slice=slices[rank],
                seed=c.seed,
                exchange_dir=shared.get("exchange_dir"),
                num_slots=c.staleness + 1,
            )
            for rank, row_range in enumerate(ranges)
        ]
        self._start_wait([server.ready.remote(), *[w.ready.remote() for w in workers]])
        self._worker_nodes = self._get(
            [w.node_id.remote() for w in workers], ACTOR_START_TIMEOUT_SECONDS, "start"
        )
        self.server, self.workers = server, workers
        self._emit("on_health", len(workers), snapshot.progress.restarts, 0)
        return server, workers

    def _start_wait(self, refs: list[Any]) -> None:
        try:
            self._get(refs, ACTOR_START_TIMEOUT_SECONDS, "start")
        except ActorLost as e:
            # A constructor that fails (no CuPy, unreadable rows) fails again on a retry.
            raise DtrainError(f"the actors could not start: {e}") from e

    def _get(self, refs: Any, timeout: float, what: str) -> Any:
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
            raise DtrainError(f"{what} failed: {first_line(cause)}") from e

    def _train(
        self,
        server: Any,
        workers: list[Any],
        spe: int,
        total_steps: int,
        start: Snapshot,
    ) -> Snapshot:
        c = self.config
        progress = start.progress.copy()
        self._latest_snapshot = start
        # ready[j]: a ref that completes once the weights after update j exist. Object store:
        # those weights themselves. Shared memory: that update's stats (the weights are in
        # place). Step t computes on the weights after update max(0, t - 1 - staleness).
        k = c.staleness
        first = start.progress.step
        shared = self._exchange_dir is not None
        if shared:
            marker = server.ready.remote()
            ready = {j: marker for j in range(max(0, first - k), first + 1)}
        else:
            ready = {j: server.weights_at.remote(j) for j in range(max(0, first - k), first + 1)}
        # (stats ref, epoch, state ref or None) per submitted step, oldest first
        pending: deque[tuple[Any, int, Any]] = deque()
        segment_start = time.perf_counter()
        last_done = segment_start

        def consume(stats_ref: Any, epoch: int, state_ref: Any) -> None:
            nonlocal last_done
            what = f"step {progress.step + 1}"
            s: ServerStats = self._get(stats_ref, c.step_timeout_seconds, what)
            now = time.perf_counter()
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
            progress.train_seconds += now - last_done
            progress.epoch_seconds += now - last_done
            self._emit(
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
                    step_seconds=now - last_done,
                    worker_compute_seconds=s.worker_compute_seconds,
                    aggregate_seconds=s.aggregate_seconds,
                    update_seconds=s.update_seconds,
                ),
            )
            last_done = now
            if state_ref is not None:
                state = self._get(state_ref, c.step_timeout_seconds, "checkpoint")
                snap = Snapshot(
                    state["params"], state["velocity"], progress.copy(), state["history"]
                )
                self._save_periodic(snap)
                self._latest_snapshot = snap
                last_done = time.perf_counter()

        def drain() -> None:
            while pending:
                consume(*pending.popleft())

        step = progress.step
        while step < total_steps:
            step += 1
            epoch, s_in_epoch = divmod(step - 1, spe)
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
            state_ref = server.state.remote() if wants_ckpt and step < total_steps else None
            pending.append((stats_ref, epoch, state_ref))
            while len(pending) > c.pipeline_depth:
                consume(*pending.popleft())
            if s_in_epoch == spe - 1 or step == total_steps:
                drain()
                self._end_epoch(
                    progress,
                    epoch,
                    server.get_weights.remote() if shared else ready[step],
                )
                last_done = time.perf_counter()
        drain()
        state = self._get(server.state.remote(), c.step_timeout_seconds, "fetching weights")
        history = state["history"]
        return Snapshot(
            np.array(state["params"]),
            np.array(state["velocity"]),
            progress,
            None if history is None else np.array(history),
        )

    def _end_epoch(self, progress: Progress, epoch: int, weights_ref: Any) -> None:
        c = self.config
        n = progress.epoch_samples
        if n == 0:
            return
        test_loss = test_acc = None
        if c.eval_every_epoch and self._test is not None:
            params = self._get(weights_ref, c.step_timeout_seconds, "fetching weights")
            test_loss, test_acc = self.net.evaluate(params, *self._test)
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
        self._emit("on_epoch", record)


FINAL_CHECKPOINT = "checkpoint.npz"
CHECKPOINT_DIR = "checkpoints"


def latest_checkpoint(run_dir: Path) -> checkpoint.Checkpoint:
    """The newest checkpoint of a run that loads whole; damaged ones are skipped, loudly."""
    candidates = sorted((run_dir / CHECKPOINT_DIR).glob("step-*.npz"), reverse=True)
    final = run_dir / FINAL_CHECKPOINT
    if final.exists():
        candidates.insert(0, final)
    if not candidates:
        raise DtrainError(f"{run_dir} has no checkpoint to resume from")
    problems = []
    for path in candidates:
        try:
            return checkpoint.load(path)
        except DtrainError as e:
            problems.append(str(e))
            print(f"dtrain: skipping {path.name}: {e}", file=sys.stderr)
    raise DtrainError(f"no checkpoint in {run_dir} is loadable: {problems[0]}")


def check_resumable(ckpt: checkpoint.Checkpoint, config: TrainConfig) -> None:
    """Refuse a checkpoint whose run would not continue into the same weights."""
    if ckpt.spec != config.model:
        raise DtrainError(
            f"the checkpoint's layers {ckpt.spec.layer_shapes} differ from the config's "
            f"{config.model.layer_shapes}"
        )
    saved = ckpt.meta.get("config", {})
    now = config.to_dict()
    diffs = [
        f"{key}: checkpoint {saved.get(key)!r}, now {now[key]!r}"
        for key in RESUME_MUST_MATCH
        if key in saved and saved[key] != now[key]
    ]
    if diffs:
        raise DtrainError(
            "cannot resume, the config differs from the checkpoint's: " + "; ".join(diffs)
        )
