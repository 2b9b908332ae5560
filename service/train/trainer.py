"""One training run, start to end: build, train (rebuilding lost actors), close.

The pieces live beside this file: ``session`` (Ray and the cluster's capacity), ``plan`` (steps
per epoch, each worker's parts of a batch), ``actors`` (the server and workers' lifecycle),
``loop`` (the steps), ``recovery`` (snapshots, checkpoints, the restart policy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from dtrain.service import __version__
from dtrain.service.data import transport
from dtrain.service.data.manifest import train_data_digest
from dtrain.service.errors import DtrainError
from dtrain.service.jobs.endpoint import find_token
from dtrain.service.observe.observers import Observer
from dtrain.service.observe.stats import JobInfo, RunSummary
from dtrain.service.train import checkpoint, runinfo, session, stopping
from dtrain.service.train.actors import ActorGroup
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.membership import Membership
from dtrain.service.train.plan import EpochPlan, plan_epoch
from dtrain.service.train.recovery import Checkpointer, Snapshot, initial_snapshot
from dtrain.service.train.rundir import HISTORY_FILE, RunDirLock, cut_history
from dtrain.service.train.supervise import Supervisor, first_size
from dtrain.workers.model import Network
from dtrain.workers.shards import ShardError, read_rows, shard_format, to_float


class Trainer:
    """One training run. ``run()`` returns the summary or raises ``DtrainError``."""

    def __init__(
        self,
        config: TrainConfig,
        observers: Sequence[Observer] = (),
        address: str | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.config = config
        self.observers = list(observers)
        self.address = address
        self.resume = resume
        # Move a run already in config.run_dir aside (never deleted) instead of refusing it.
        self.overwrite = overwrite
        self.net = Network(config.model)
        # The live actors, for observers that inspect them (and the chaos tests).
        self.group: ActorGroup | None = None
        self.checkpointer = Checkpointer(config, on_checkpoint=self._on_checkpoint)

    @property
    def server(self) -> Any:
        return self.group.server if self.group else None

    @property
    def workers(self) -> list[Any]:
        return self.group.workers if self.group else []

    def run(self) -> RunSummary:
        # First, before data or Ray: one line for a run directory that is taken, a file,
        # read-only or full; held until the run ends so that no second run writes into it.
        claim = RunDirLock(self.config.run_dir, resume=self.resume, overwrite=self.overwrite)
        with claim:
            # What a killed run's unfinished atomic writes left (only dtrain's own names).
            claim.sweep_stale_tmp()
            return self._run()

    def _run(self) -> RunSummary:
        c = self.config
        wall_start = time.perf_counter()
        # Cheap checks first: a bad or unreachable address costs no data preparation.
        if not ray.is_initialized():
            session.probe_address(session.resolve_address(self.address))
            # The token Ray will send: one a header cannot carry makes Ray's gRPC client abort
            # the process (exit 134), a FIFO token file would hang it; one line here instead.
            find_token()
        # Checked on the driver (checksums, schemas) before any actor exists.
        manifest = transport.load_manifest(c.data_dir)
        c = self._fit_to_data(manifest)
        num_train = int(manifest["splits"]["train"]["num_samples"])
        plan = plan_epoch(num_train, c.num_workers, c.batch_size)
        session.check_local_workers(c.num_workers, self.address)
        total_steps = plan.steps_per_epoch * c.epochs
        if c.max_steps is not None:
            total_steps = min(total_steps, c.max_steps)
        train_data = train_data_digest(manifest)
        self.checkpointer.train_data = train_data
        snapshot = initial_snapshot(c, self.resume, train_data)
        if self.resume:  # no step twice in the history after a killed driver
            epochs = {int(record["epoch"]) for record in snapshot.progress.history}
            cut_history(c.run_dir / HISTORY_FILE, snapshot.progress.step, epochs)
        try:
            test_x, test_y = read_rows(
                c.data_dir, manifest, "test", 0, manifest["splits"]["test"]["num_samples"]
            )
        except ShardError as e:
            raise DtrainError(str(e)) from e
        test = (to_float(test_x), test_y)
        info = self._job_info(plan, num_train, int(test_x.shape[0]), total_steps)
        summary: RunSummary | None = None
        error: BaseException | None = None
        try:
            num_cpus = max(os.cpu_count() or 1, int(np.ceil(c.num_workers * c.num_cpus_per_worker)))
            with session.ray_session(self.address, num_cpus):
                session.check_resources(c)  # the CPUs MIN workers need, in one line
                progress = snapshot.progress
                members = first_size(c, progress.num_workers or c.num_workers, progress.parts)
                group = self._build(manifest, num_train, members.size, total_steps)
                self._emit("on_start", info)
                stopping.set_graceful(True)
                try:
                    final = self._train(
                        group, members, num_train, plan, total_steps, snapshot, test
                    )
                finally:
                    stopping.set_graceful(False)
                if final.progress.step < total_steps:
                    raise self._stopped(final, snapshot)
            summary = self._close(final, test, wall_start)
            return summary
        except BaseException as e:
            error = e
            raise
        finally:
            self._emit("on_end", summary, error)

    def _fit_to_data(self, manifest: dict[str, Any]) -> TrainConfig:
        """The network's input size and class count are the data's (the manifest's), not
        MNIST's: the config, the network and what the checkpoints record follow them."""
        c = self.config
        try:
            fmt = shard_format(manifest)
            model = dataclasses.replace(
                c.model, input_size=fmt.input_size, num_classes=fmt.num_classes
            )
            fitted = dataclasses.replace(c, model=model)
        except (ShardError, ValueError) as e:
            raise DtrainError(f"{c.data_dir}: {e}") from None
        self.config = fitted
        self.checkpointer.config = fitted
        self.net = Network(fitted.model)
        return fitted

    def _build(
        self, manifest: dict[str, Any], num_train: int, num_workers: int, total_steps: int
    ) -> ActorGroup:
        """Check the cluster can hold the job, then make the run directory: no actor yet."""
        c = self.config
        gpu_workers = session.num_gpu_workers(c)
        shared_memory = session.use_shared_memory(c)
        # The run directory exists (claimed); only now, with a cluster that can run the job, is
        # anything written into it.
        if not self.resume:
            checkpoint.atomic_write_bytes(
                c.run_dir / runinfo.CONFIG_NAME,
                json.dumps(runinfo.config_record(c), indent=2).encode(),
            )
        # The data transport and the workers' shard source are fixed once per run: an
        # object-store source holds the refs of the shipped shards, which must outlive every
        # rebuild.
        self._transport = transport.choose(
            c.data_transport, c.data_dir, len(transport.alive_nodes())
        )
        source = transport.train_source(self._transport, c.data_dir, manifest)
        return ActorGroup(
            c,
            manifest=manifest,
            parts=plan_epoch(num_train, num_workers, c.batch_size).parts,
            source=source,
            total_steps=total_steps,
            num_gpu_workers=gpu_workers,
            shared_memory=shared_memory,
        )

    def _train(
        self,
        group: ActorGroup,
        members: Membership,
        num_train: int,
        plan: EpochPlan,
        total_steps: int,
        start: Snapshot,
        test: tuple[np.ndarray, np.ndarray],
    ) -> Snapshot:
        """Run the steps through lost actors and resizes (``supervise``)."""
        self.group = group
        return Supervisor(
            group,
            members,
            num_train=num_train,
            steps_per_epoch=plan.steps_per_epoch,
            total_steps=total_steps,
            checkpointer=self.checkpointer,
            emit=self._emit,
            evaluate=lambda params: self.net.evaluate(params, *test),
        ).run(start)

    def _stopped(self, final: Snapshot, start: Snapshot) -> stopping.Interrupted:
        """A stop signal ended the loop at a step boundary: checkpoint that step, say so."""
        signum = stopping.requested() or signal.SIGINT
        if final.progress.step == start.progress.step:  # no step done: nothing new to save
            return stopping.Interrupted(signum)
        self.checkpointer.save_periodic(final)
        return stopping.Interrupted(signum, final.progress.step)

    def _close(
        self, final: Snapshot, test: tuple[np.ndarray, np.ndarray], wall_start: float
    ) -> RunSummary:
        """The final checkpoint and the summary, both written whole or not at all."""
        c = self.config
        progress = final.progress
        last = progress.history[-1] if progress.history else {}
        if last.get("steps") == progress.step and last.get("test_accuracy") is not None:
            # The last epoch's evaluation was of these very weights: the same numbers.
            test_loss, test_acc = last["test_loss"], last["test_accuracy"]
        else:
            test_loss, test_acc = self.net.evaluate(final.params, *test)
        ckpt_path = self.checkpointer.save_final(final, extra={"test_accuracy": test_acc})
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
            worker_nodes=list(self.group.worker_nodes if self.group else []),
            history=history,
        )
        checkpoint.atomic_write_bytes(
            c.run_dir / "summary.json", json.dumps(summary.to_dict(), indent=2).encode()
        )
        return summary

    def _job_info(
        self, plan: EpochPlan, num_train: int, num_test: int, total_steps: int
    ) -> JobInfo:
        c = self.config
        return JobInfo(
            version=__version__,
            run_dir=str(c.run_dir),
            num_workers=c.num_workers,
            batch_size=c.batch_size,
            optimizer=c.optimizer.name,
            learning_rate=c.optimizer.learning_rate,
            momentum=c.optimizer.momentum,
            epochs=c.epochs,
            steps_per_epoch=plan.steps_per_epoch,
            hidden_sizes=c.model.hidden_sizes,
            num_params=c.model.num_params,
            num_train_samples=num_train,
            num_test_samples=num_test,
            total_steps=total_steps,
        )

    def _emit(self, hook: str, *args: Any) -> None:
        for obs in self.observers:
            getattr(obs, hook)(*args)

    def _on_checkpoint(self, path: Any, step: int) -> None:
        self._emit("on_checkpoint", path, step)
