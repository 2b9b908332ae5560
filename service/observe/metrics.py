"""Prometheus metrics of a training run, served by the driver (one endpoint per job).

Workers' timings reach the driver inside each step's stats, so nothing listens on the workers'
nodes. Names follow Prometheus practice: one ``dtrain_`` prefix, base units (``_seconds``), ratios
0..1 (``_ratio``), counters ``_total``, timestamps ``*_timestamp_seconds``, few label values
(phase, worker rank), histograms rather than summaries. Every series that will exist is exported
at 0 from the start, so dashboards and alerts see it before the first event.

The base ``service.observers.Observer`` is the no-op implementation tests use; this is the real
one.
"""

from __future__ import annotations

import errno
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway
from prometheus_client import start_http_server as _start_http_server

from dtrain.service import __version__
from dtrain.service.errors import Diverged, DtrainError
from dtrain.service.observe.observers import Observer
from dtrain.service.observe.run_labels import labelled, run_labels
from dtrain.service.observe.stats import (
    MEMBERSHIP_REASONS,
    EpochStats,
    JobInfo,
    MembershipChange,
    RunSummary,
    StepStats,
    WorkerSlowness,
)

# 8 steps per second of the chapter's job fit between 5 ms (one fast step) and 10 s (a stalled
# one); the buckets span that range roughly geometrically.
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
PHASES = ("compute", "aggregate", "update", "wait")
DEFAULT_PORT = 9108  # in the range Prometheus's wiki lists for exporters, not claimed there
# The endpoint outlives the job by this much at most: long enough for any scrape interval.
MAX_METRICS_GRACE_SECONDS = 3600.0


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Where a run's metrics go. Each field's ``metadata`` is its ``dtrain train`` option."""

    metrics_port: int | None = field(
        default=None,
        metadata={
            "help": "Serve Prometheus metrics on this port while training (0 picks a free one "
            "and prints it). [default: no endpoint]",
            "min": 0,
            "max": 65535,
        },
    )
    metrics_host: str = field(
        default="127.0.0.1",
        metadata={
            "help": "Address the metrics endpoint binds to; 0.0.0.0 exposes it beyond this machine."
        },
    )
    metrics_grace: float = field(
        default=15.0,
        metadata={
            "help": "Seconds the metrics endpoint stays up after the job ends, so the last "
            "values are scraped (not after Ctrl-C).",
            "min": 0,
            "max": MAX_METRICS_GRACE_SECONDS,
        },
    )
    pushgateway: str | None = field(
        default=None,
        metadata={
            "help": "Push the final metrics to this Prometheus Pushgateway (e.g. "
            "http://127.0.0.1:9091) when the job ends."
        },
    )

    @property
    def enabled(self) -> bool:
        return self.metrics_port is not None or bool(self.pushgateway)

    def build(self, run_id: str = "") -> PrometheusMetrics:
        """The exporter, already serving when a port is set (a port in use fails here, early).

        Its series carry ``run_id`` (the run directory's name, the same after a resume) and,
        for a submitted job, Ray's submission id.
        """
        metrics = PrometheusMetrics(
            grace_seconds=self.metrics_grace if self.metrics_port is not None else 0.0,
            pushgateway=self.pushgateway,
            labels=run_labels(run_id),
        )
        if self.metrics_port is not None:
            metrics.serve(self.metrics_host, self.metrics_port)
        return metrics


def check_pushgateway_url(url: str) -> str:
    """Refuse a Pushgateway URL the push would choke on, before the job rather than after it.

    prometheus-client accepts ``host:port`` without a scheme (it adds ``http://``) and raises
    ``http.client.InvalidURL``, which is no ``OSError``, on spaces or a non-numeric port.
    """
    full = url if "://" in url else f"http://{url}"
    bad = DtrainError(
        f"bad --pushgateway URL {url!r}: expected http://HOST:PORT, e.g. http://127.0.0.1:9091"
    )
    try:
        parts = urllib.parse.urlsplit(full)  # an unclosed "[" of an IPv6 host raises here
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or " " in url:
        raise bad
    return url


class PrometheusMetrics(Observer):
    """Updates the run's metrics from the driver's hooks; ``serve()`` exposes them over HTTP."""

    def __init__(
        self,
        *,
        grace_seconds: float = 0.0,
        pushgateway: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        # The run's labels are added when the series are read, so each metric below is defined
        # without them; ``registry`` is what is served and pushed.
        self.labels = dict(labels or {})
        r = CollectorRegistry()
        self.registry = labelled(r, self.labels)
        self.grace_seconds = grace_seconds
        self.pushgateway = check_pushgateway_url(pushgateway) if pushgateway else None
        self.port: int | None = None
        self.host: str | None = None
        self._server: Any = None
        self.build_info = Gauge(
            "dtrain_build_info", "dtrain version, always 1", ["version"], registry=r
        )
        self.job_info = Gauge(
            "dtrain_job_info",
            "the job's configuration, always 1",
            ["version", "num_workers", "batch_size", "optimizer"],
            registry=r,
        )
        self.start_time = Gauge(
            "dtrain_job_start_timestamp_seconds", "when training began", registry=r
        )
        self.end_time = Gauge(
            "dtrain_job_end_timestamp_seconds", "when the job ended (0 while it runs)", registry=r
        )
        self.success = Gauge("dtrain_job_success", "1 after a successful end, else 0", registry=r)
        self.epoch = Gauge("dtrain_epoch", "the epoch in progress (1-based)", registry=r)
        self.epochs = Gauge("dtrain_epochs", "epochs the job will run", registry=r)
        # The counter below counts this process's work (replays included, from 0 after a
        # resume); this gauge is where the weights are, as the run's summary counts steps.
        self.global_step = Gauge(
            "dtrain_global_step", "updates in the weights so far, across resumes", registry=r
        )
        self.steps = Counter("dtrain_steps", "parameter-server updates applied", registry=r)
        self.samples = Counter("dtrain_samples", "training samples processed", registry=r)
        self.steps_per_second = Gauge(
            "dtrain_steps_per_second", "updates per second over the last epoch", registry=r
        )
        self.samples_per_second = Gauge(
            "dtrain_samples_per_second", "samples per second over the last epoch", registry=r
        )
        self.train_loss = Gauge(
            "dtrain_train_loss", "cross-entropy of the last step's batch", registry=r
        )
        self.train_accuracy = Gauge(
            "dtrain_train_accuracy_ratio", "accuracy on the last step's batch", registry=r
        )
        self.epoch_loss = Gauge(
            "dtrain_epoch_train_loss", "mean training cross-entropy of the last epoch", registry=r
        )
        self.epoch_accuracy = Gauge(
            "dtrain_epoch_train_accuracy_ratio", "training accuracy of the last epoch", registry=r
        )
        self.test_loss = Gauge(
            "dtrain_test_loss", "test-set cross-entropy, last evaluation", registry=r
        )
        self.test_accuracy = Gauge(
            "dtrain_test_accuracy_ratio", "test-set accuracy, last evaluation", registry=r
        )
        self.learning_rate = Gauge(
            "dtrain_learning_rate", "learning rate of the last step", registry=r
        )
        self.grad_norm = Gauge(
            "dtrain_gradient_norm", "L2 norm of the last averaged gradient", registry=r
        )
        self.update_norm = Gauge(
            "dtrain_update_norm", "L2 norm of the last weight update", registry=r
        )
        self.step_seconds = Histogram(
            "dtrain_step_duration_seconds",
            "wall time of one step as the driver sees it",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.phase_seconds = Histogram(
            "dtrain_step_phase_duration_seconds",
            "a step's time by phase: compute (slowest worker), aggregate (server sum), update "
            "(optimizer), wait (the rest: transfer, scheduling, the driver)",
            ["phase"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.worker_seconds = Histogram(
            "dtrain_worker_compute_duration_seconds",
            "one worker's gradient computation per step",
            ["worker"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.workers_alive = Gauge("dtrain_workers_alive", "worker actors running", registry=r)
        self.workers_planned = Gauge(
            "dtrain_workers_planned", "worker actors the job runs with", registry=r
        )
        # The driver stops at the first step whose loss or gradient is not finite and never
        # applies it; this is how that end shows (the loss gauge then holds the bad value).
        self.diverged = Gauge(
            "dtrain_diverged", "1 once a non-finite loss or gradient stopped the job", registry=r
        )
        self.restarts = Counter(
            "dtrain_worker_restarts", "rebuilds of lost actors from a snapshot", registry=r
        )
        self.failed_steps = Counter(
            "dtrain_failed_steps", "steps lost to an actor failure", registry=r
        )
        self.slowness = Gauge(
            "dtrain_worker_slowness_ratio",
            "a worker's mean compute time over the other workers' median, per window of steps",
            ["worker"],
            registry=r,
        )
        self.straggler = Gauge(
            "dtrain_worker_straggler",
            "1 while a worker is persistently slower than the others (a straggler)",
            ["worker"],
            registry=r,
        )
        self.partitions = Gauge(
            "dtrain_worker_partitions",
            "parts of every batch a worker computes (64 in all, shared by the live workers)",
            ["worker"],
            registry=r,
        )
        # reason: one of MEMBERSHIP_REASONS (a small fixed set, not free text).
        self.membership_changes = Counter(
            "dtrain_membership_changes",
            "changes of an elastic run's number of workers",
            ["reason"],
            registry=r,
        )
        self.checkpoints = Counter("dtrain_checkpoints_written", "checkpoints written", registry=r)
        self.checkpoint_time = Gauge(
            "dtrain_last_checkpoint_timestamp_seconds",
            "when the last checkpoint was written (0: none yet)",
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        for phase in PHASES:
            self.phase_seconds.labels(phase=phase)
        self._restarts_seen = 0
        self._steps_per_epoch = 0

    # --- serving ----------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> int:
        """Start the HTTP endpoint; returns the port (port 0 picks a free one)."""
        try:
            self._server, _ = _start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise DtrainError(
                    f"metrics port {port} on {host} is in use: choose another --metrics-port "
                    "(0 picks a free one)"
                ) from e
            raise DtrainError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from e
        self.host, self.port = host, int(self._server.server_port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- hooks ------------------------------------------------------------------------------

    def on_start(self, info: JobInfo) -> None:
        self.job_info.labels(
            version=info.version,
            num_workers=str(info.num_workers),
            batch_size=str(info.batch_size),
            optimizer=info.optimizer,
        ).set(1)
        self.epochs.set(info.epochs)
        self.workers_planned.set(info.num_workers)
        self._steps_per_epoch = info.steps_per_epoch
        self.start_time.set(time.time())
        for rank in range(info.num_workers):
            self.worker_seconds.labels(worker=str(rank))
        for reason in MEMBERSHIP_REASONS:  # at zero from the start, so rate() sees the first
            self.membership_changes.labels(reason=reason)

    def on_step(self, s: StepStats) -> None:
        self.epoch.set(s.epoch)
        self.global_step.set(s.step)
        self.steps.inc()
        self.samples.inc(s.samples)
        self.train_loss.set(s.loss)
        self.train_accuracy.set(s.accuracy)
        self.learning_rate.set(s.learning_rate)
        self.grad_norm.set(s.grad_norm)
        self.update_norm.set(s.update_norm)
        self.step_seconds.observe(s.step_seconds)
        compute = max(s.worker_compute_seconds, default=0.0)
        wait = max(s.step_seconds - compute - s.aggregate_seconds - s.update_seconds, 0.0)
        for phase, value in zip(
            PHASES, (compute, s.aggregate_seconds, s.update_seconds, wait), strict=True
        ):
            self.phase_seconds.labels(phase=phase).observe(value)
        for rank, seconds in enumerate(s.worker_compute_seconds):
            self.worker_seconds.labels(worker=str(rank)).observe(seconds)

    def on_epoch(self, e: EpochStats) -> None:
        self.epoch_loss.set(e.train_loss)
        self.epoch_accuracy.set(e.train_accuracy)
        if e.test_accuracy is not None and e.test_loss is not None:
            self.test_accuracy.set(e.test_accuracy)
            self.test_loss.set(e.test_loss)
        self.samples_per_second.set(e.samples_per_second)
        # The epoch's own steps over its seconds, as the driver's samples/s: both survive a
        # resume mid-epoch (the checkpoint keeps the epoch's seconds so far).
        first = (e.epoch - 1) * self._steps_per_epoch
        if e.seconds > 0:
            self.steps_per_second.set((e.steps - first) / e.seconds)

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.checkpoints.inc()
        self.checkpoint_time.set(time.time())

    def on_health(self, workers_alive: int, restarts: int, failed_steps: int) -> None:
        self.workers_alive.set(workers_alive)
        if restarts > self._restarts_seen:
            self.restarts.inc(restarts - self._restarts_seen)
            self._restarts_seen = restarts
        if failed_steps:
            self.failed_steps.inc(failed_steps)

    def on_slowness(self, verdicts: list[WorkerSlowness]) -> None:
        for v in verdicts:
            self.slowness.labels(worker=str(v.rank)).set(v.ratio)
            self.straggler.labels(worker=str(v.rank)).set(int(v.straggler))

    def on_workers(self, parts: list[int]) -> None:
        self.partitions.clear()  # a rank the run no longer has must not keep its old value
        for rank, count in enumerate(parts):
            self.partitions.labels(worker=str(rank)).set(count)

    def on_membership(self, change: MembershipChange) -> None:
        self.membership_changes.labels(reason=change.reason).inc()
        self.workers_alive.set(change.after)

    def on_end(self, summary: RunSummary | None, error: BaseException | None) -> None:
        self.end_time.set(time.time())
        self.workers_alive.set(0)
        if summary is not None:
            self.success.set(1)
            self.test_accuracy.set(summary.test_accuracy)
            self.test_loss.set(summary.test_loss)
        if isinstance(error, Diverged):
            self.diverged.set(1)
            self.train_loss.set(error.loss)
        if self.pushgateway:
            try:
                # One group per run: a second run no longer replaces the first one's metrics.
                push_to_gateway(
                    self.pushgateway,
                    job="dtrain",
                    grouping_key=self.labels,
                    registry=self.registry,
                    timeout=10,
                )
            # Whatever the gateway answers, the run's outcome (and its traceback, if any) stands:
            # a failed push is one line, never an exception out of the driver's `finally`.
            except Exception as e:
                print(f"dtrain: could not push metrics to {self.pushgateway}: {e}", file=sys.stderr)
        # Someone who pressed Ctrl-C wants the prompt back, not 15 more seconds of serving.
        interrupted = isinstance(error, KeyboardInterrupt)
        if self._server is not None and self.grace_seconds > 0 and not interrupted:
            print(
                f"dtrain: serving the final metrics at http://{self.host}:{self.port}/metrics "
                f"for {self.grace_seconds:g}s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(self.grace_seconds)
        self.close()
