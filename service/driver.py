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
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from service import __version__, checkpoint, dataset
from service.config import TrainConfig
from service.errors import DtrainError
from service.observers import Observer
from service.server import ParameterServer, ServerStats
from service.stats import EpochStats, JobInfo, RunSummary, StepStats
from workers.actor import Worker
from workers.model import Network, init_params
from workers.plan import split_evenly, steps_per_epoch, worker_batch_sizes
from workers.shards import ShardError, read_rows, to_float

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
    try:
        ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise DtrainError(f"cannot connect to Ray at {target}: {first_line(e)}") from e
    try:
        yield
    finally:
        ray.shutdown()


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Trainer:
    """One training run. ``run()`` returns the summary or raises ``DtrainError``."""

    def __init__(
        self, config: TrainConfig, observers: Sequence[Observer] = (), address: str | None = None
    ) -> None:
        self.config = config
        self.observers = list(observers)
        self.address = address
        self.net = Network(config.model)

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

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        c = self.config
        wall_start = time.perf_counter()
        manifest = dataset.ensure_prepared(c.data_dir)
        ranges, slices, spe = self._plan(manifest)
        total_steps = spe * c.epochs
        if c.max_steps is not None:
            total_steps = min(total_steps, c.max_steps)
        try:
            test_x, test_y = read_rows(
                c.data_dir, manifest, "test", 0, manifest["splits"]["test"]["num_samples"]
            )
        except ShardError as e:
            raise DtrainError(str(e)) from e
        test_x = to_float(test_x)
        c.run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_bytes(
            c.run_dir / "config.json", json.dumps(c.to_dict(), indent=2).encode()
        )
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
        self._emit("on_start", info)
        try:
            num_cpus = max(os.cpu_count() or 1, int(np.ceil(c.num_workers * c.num_cpus_per_worker)))
            with ray_session(self.address, num_cpus):
                self._check_resources()
                params, history, train_seconds, train_stats = self._train(
                    manifest, ranges, slices, spe, total_steps, test_x, test_y
                )
            test_loss, test_acc = self.net.evaluate(params, test_x, test_y)
            ckpt_path = c.run_dir / "checkpoint.npz"
            steps_done = history[-1]["steps"] if history else 0
            checkpoint.save(
                ckpt_path,
                checkpoint.Checkpoint(
                    spec=c.model,
                    params=params,
                    meta={"step": steps_done, "test_accuracy": test_acc, "config": c.to_dict()},
                ),
            )
            self._emit("on_checkpoint", ckpt_path, steps_done)
            samples = train_stats["samples"]
            summary = RunSummary(
                test_accuracy=test_acc,
                test_loss=test_loss,
                train_accuracy=history[-1]["train_accuracy"] if history else 0.0,
                train_loss=history[-1]["train_loss"] if history else 0.0,
                epochs=len(history),
                steps=steps_done,
                num_workers=c.num_workers,
                batch_size=c.batch_size,
                learning_rate=c.optimizer.learning_rate,
                optimizer=c.optimizer.name,
                wall_seconds=time.perf_counter() - wall_start,
                train_seconds=train_seconds,
                samples_per_second=samples / train_seconds if train_seconds > 0 else 0.0,
                checkpoint=str(ckpt_path),
                run_dir=str(c.run_dir),
                history=history,
            )
            checkpoint.atomic_write_bytes(
                c.run_dir / "summary.json", json.dumps(summary.to_dict(), indent=2).encode()
            )
            return summary
        except BaseException as e:
            error = e
            raise
        finally:
            self._emit("on_end", summary, error)

    def _start_actors(
        self,
        manifest: dict[str, Any],
        ranges: list[tuple[int, int]],
        slices: list[int],
        total_steps: int,
    ) -> tuple[Any, list[Any]]:
        c = self.config
        server = (
            ray.remote(ParameterServer)
            .options(num_cpus=0, name=None)
            .remote(
                spec=c.model,
                optimizer=c.optimizer,
                params=init_params(c.model, c.seed),
                total_steps=total_steps,
            )
        )
        worker_cls = ray.remote(Worker).options(num_cpus=c.num_cpus_per_worker)
        workers = [
            worker_cls.remote(
                rank=rank,
                spec=c.model,
                data_dir=str(c.data_dir),
                manifest=manifest,
                row_range=row_range,
                batch_slice=slices[rank],
                seed=c.seed,
            )
            for rank, row_range in enumerate(ranges)
        ]
        self._get([w.ready.remote() for w in workers], ACTOR_START_TIMEOUT_SECONDS, "start")
        return server, workers

    def _get(self, refs: Any, timeout: float, what: str) -> Any:
        try:
            return ray.get(refs, timeout=timeout)
        except GetTimeoutError as e:
            raise DtrainError(
                f"{what} did not finish within {timeout:g}s: a worker is hung or the cluster "
                "cannot place the actors"
            ) from e
        except RayActorError as e:
            raise DtrainError(f"an actor died during {what}: {first_line(e)}") from e
        except RayTaskError as e:
            cause = e.cause if isinstance(e.cause, Exception) else e
            raise DtrainError(f"{what} failed: {first_line(cause)}") from e

    def _train(
        self,
        manifest: dict[str, Any],
        ranges: list[tuple[int, int]],
        slices: list[int],
        spe: int,
        total_steps: int,
        test_x: np.ndarray,
        test_y: np.ndarray,
    ) -> tuple[np.ndarray, list[dict[str, Any]], float, dict[str, int]]:
        c = self.config
        server, workers = self._start_actors(manifest, ranges, slices, total_steps)
        weights = server.get_weights.remote()
        pending: deque[tuple[Any, int, float]] = deque()
        history: list[dict[str, Any]] = []
        epoch_acc = {"loss": 0.0, "correct": 0, "samples": 0}
        totals = {"samples": 0}
        train_start = time.perf_counter()
        last_done = train_start

        def consume(stats_ref: Any, epoch: int, submitted: float) -> None:
            nonlocal last_done
            s: ServerStats = self._get(stats_ref, c.step_timeout_seconds, f"step {len(history)}")
            now = time.perf_counter()
            if not s.finite:
                raise DtrainError(
                    f"training diverged at step {s.step} (epoch {epoch}): the loss or gradient "
                    f"is not finite; lower --learning-rate (now {c.optimizer.learning_rate:g})"
                )
            epoch_acc["loss"] += s.loss_sum
            epoch_acc["correct"] += s.correct
            epoch_acc["samples"] += s.samples
            totals["samples"] += s.samples
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

        step = 0
        for epoch in range(1, c.epochs + 1):
            epoch_start = time.perf_counter()
            epoch_acc.update(loss=0.0, correct=0, samples=0)
            for s_in_epoch in range(spe):
                if step >= total_steps:
                    break
                step += 1
                outs = [
                    w.compute_gradients.options(num_returns=2).remote(weights, epoch, s_in_epoch)
                    for w in workers
                ]
                weights, stats_ref = server.apply_gradients.options(num_returns=2).remote(
                    step, *[g for g, _ in outs], *[st for _, st in outs]
                )
                pending.append((stats_ref, epoch, time.perf_counter()))
                while len(pending) > c.pipeline_depth:
                    consume(*pending.popleft())
            while pending:
                consume(*pending.popleft())
            if epoch_acc["samples"] == 0:
                break
            epoch_seconds = time.perf_counter() - epoch_start
            test_loss = test_acc = None
            if c.eval_every_epoch or epoch == c.epochs or step >= total_steps:
                params = self._get(weights, c.step_timeout_seconds, "fetching weights")
                test_loss, test_acc = self.net.evaluate(params, test_x, test_y)
            n = epoch_acc["samples"]
            record = EpochStats(
                epoch=epoch,
                steps=step,
                train_loss=epoch_acc["loss"] / n,
                train_accuracy=epoch_acc["correct"] / n,
                test_loss=test_loss,
                test_accuracy=test_acc,
                seconds=epoch_seconds,
                samples_per_second=n / epoch_seconds,
            )
            history.append(record.to_dict())
            self._emit("on_epoch", record)
            if step >= total_steps:
                break
        train_seconds = time.perf_counter() - train_start
        params = np.array(self._get(weights, c.step_timeout_seconds, "fetching weights"))
        for actor in [server, *workers]:
            ray.kill(actor)
        return params, history, train_seconds, totals
