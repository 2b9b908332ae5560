"""An MLflow run per training run, written by the driver (``--mlflow [TRACKING_URI]``).

Parameters (the job's facts), the same per-step and per-epoch metrics as TensorBoard with their
step, and, when the run succeeds, the final checkpoint and ``summary.json`` as artifacts; the
MLflow run ends FINISHED, FAILED or KILLED (Ctrl-C). A local ``./mlruns`` store by default.
Metrics are sent in batches (per epoch, or every ``BATCH`` values) from a ``Background`` thread,
so the step loop never waits on MLflow. The local file store appends to one file per value
(~0.3 ms each): there the per-step metrics are kept for about ``POINTS_PER_EPOCH`` steps of each
epoch (the first of every N), not all of them; a tracking server takes every step. Needs
``pip install 'dtrain[mlflow]'`` (mlflow-skinny).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from dtrain.service.errors import DtrainError, first_line
from dtrain.service.observe.background import Background
from dtrain.service.observe.observers import Observer
from dtrain.service.observe.run_labels import ray_job_id
from dtrain.service.observe.stats import EpochStats, JobInfo, RunSummary, StepStats
from dtrain.service.observe.trackers import require

DEFAULT_STORE = "mlruns"
EXPERIMENT = "dtrain"
BATCH = 900  # MLflow's log_batch takes at most 1000 metrics
POINTS_PER_EPOCH = 100


def _is_local_store(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file:")


class MlflowRun(Observer):
    def __init__(self, tracking_uri: str, run_id: str) -> None:
        if _is_local_store(tracking_uri):
            # MLflow 3 refuses its file store unless asked: it wants a database, which
            # mlflow-skinny cannot run. A local directory is what this option promises.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # A tracking server that does not answer is an error in seconds, not minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # Imported and checked now, before Ray starts: a missing package or an unreachable
        # server costs the user no waiting.
        require("mlflow", "--mlflow", "mlflow")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric, self._param = Metric, Param
        self.uri, self.run_name = tracking_uri, run_id
        try:
            self.client: Any = MlflowClient(tracking_uri=tracking_uri)
            found = self.client.get_experiment_by_name(EXPERIMENT)
            self.experiment_id = (
                found.experiment_id if found else self.client.create_experiment(EXPERIMENT)
            )
        except Exception as e:
            raise DtrainError(f"--mlflow {tracking_uri}: {first_line(e)}") from e
        self.run_id: str | None = None
        self._pending: list[Any] = []
        self._local = _is_local_store(tracking_uri)
        self._every = 1
        self._bg: Background | None = None

    def on_start(self, info: JobInfo) -> None:
        tags = {"dtrain.run_id": self.run_name, "dtrain.run_dir": info.run_dir}
        if job := ray_job_id():
            tags["dtrain.ray_job_id"] = job
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        params = [self._param(k, str(v)) for k, v in vars(info).items() if k != "run_dir"]
        self.client.log_batch(self.run_id, params=params)
        if self._local:
            self._every = max(1, info.steps_per_epoch // POINTS_PER_EPOCH)
        self._bg = Background("dtrain-mlflow")

    def _add(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._pending += [self._metric(k, float(v), now, step) for k, v in values.items()]
        if len(self._pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._bg is not None and self._pending:
            for i in range(0, len(self._pending), BATCH):
                chunk = self._pending[i : i + BATCH]
                self._bg.submit(self._send, chunk)
        self._pending = []

    def _send(self, metrics: list[Any]) -> None:
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_step(self, s: StepStats) -> None:
        if (s.step - 1) % self._every:
            return
        values = {
            "train/loss": s.loss,
            "train/accuracy": s.accuracy,
            "optimizer/learning_rate": s.learning_rate,
            "optimizer/gradient_norm": s.grad_norm,
            "optimizer/update_norm": s.update_norm,
            "step_seconds/total": s.step_seconds,
        }
        values |= {f"step_seconds/{k}": v for k, v in s.phase_seconds().items()}
        self._add(values, s.step)

    def on_epoch(self, e: EpochStats) -> None:
        values = {
            "epoch/train_loss": e.train_loss,
            "epoch/train_accuracy": e.train_accuracy,
            "epoch/samples_per_second": e.samples_per_second,
        }
        if e.test_loss is not None and e.test_accuracy is not None:
            values |= {"epoch/test_loss": e.test_loss, "epoch/test_accuracy": e.test_accuracy}
        self._add(values, e.epoch)
        self._flush()

    def on_end(self, summary: RunSummary | None, error: BaseException | None) -> None:
        if self.run_id is None or self._bg is None:
            return
        status = "FINISHED" if summary else "FAILED"
        if isinstance(error, KeyboardInterrupt):
            status = "KILLED"
        # Whatever MLflow answers, the run's own outcome stands: one line, never an exception
        # out of the driver's `finally`.
        try:
            self._flush()
            failed = self._bg.close()
            self._bg = None
            if failed is not None:
                raise failed
            if summary is not None:
                self.client.log_artifact(self.run_id, summary.checkpoint)
                self.client.log_artifact(self.run_id, str(Path(summary.run_dir) / "summary.json"))
            self.client.set_terminated(self.run_id, status)
        except Exception as e:
            print(
                f"dtrain: could not finish the MLflow run at {self.uri}: {first_line(e)}",
                file=sys.stderr,
            )
        self.run_id = None
