"""Training jobs on a Ray cluster through the Ray Jobs API (the dashboard's HTTP port, 8265).

``JobsClient`` wraps ``ray.job_submission.JobSubmissionClient`` so that every failure a user can
cause (a wrong or unreachable address, a missing or wrong token, an unknown job id) is one
``DtrainError`` line; ``endpoint`` finds the address and the token it connects with.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dtrain.service import __version__
from dtrain.service.errors import DtrainError, first_line
from dtrain.service.jobs.endpoint import (
    check_gcs_port,
    find_token,
    native_stderr_hidden,
    resolve_address,
    token_mode,
    token_refused,
    without_address_variables,
)
from dtrain.service.jobs.record import TERMINAL, JobRecord
from dtrain.service.jobs.results import run_facts
from dtrain.service.net import probe, split_url

# How long a stop may take to show: Ray signals the driver, waits 3 s, then kills it.
STOP_TIMEOUT_SECONDS = 30.0
# A job still PENDING this long after its stop request is one Ray will not stop by itself.
PENDING_STOP_GRACE_SECONDS = 3.0
METADATA_KEY = "dtrain_version"
# Metadata marking dtrain's own helper jobs (stopping a pending job, fetching a run), which
# `jobs list` leaves out.
HELPER_KEYS = frozenset({"stops", "fetches"})


def _quiet_ray_loggers() -> None:
    # The SDK logs every websocket close and address default at INFO; a CLI shows only errors.
    for name in (
        "ray.dashboard.modules.job.sdk",
        "ray.dashboard.modules.dashboard_sdk",
        "ray.dashboard.utils",
        "ray._private.runtime_env.packaging",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


class JobsClient:
    """A connection to one cluster's Jobs API; every method raises only ``DtrainError``."""

    def __init__(self, address: str | None = None) -> None:
        raw, origin = resolve_address(address)
        self.token, self.token_source = find_token()
        self.url = self._api_url(raw, origin)
        from ray.job_submission import JobSubmissionClient

        _quiet_ray_loggers()  # after the import, which sets the SDK's logger to INFO

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        with self._errors("connecting"), without_address_variables():
            self._client = JobSubmissionClient(self.url, headers=headers)

    def _api_url(self, raw: str, origin: str) -> str:
        where = f" (from {origin})"
        scheme = split_url(raw, "Jobs API address", where).scheme if "://" in raw else ""
        if scheme in ("http", "https"):
            parts = split_url(raw, "Jobs API address", where)
            if not parts.hostname:
                raise DtrainError(f"bad Jobs API address {raw!r} (from {origin})")
            port = parts.port or (443 if scheme == "https" else 80)
            probe(parts.hostname, port, f"the Ray Jobs API at {raw} (address from {origin})")
            return raw
        if scheme not in ("", "ray"):
            raise DtrainError(
                f"bad Jobs API address {raw!r} (from {origin}): expected http://HEAD:8265, "
                "or a cluster address HOST:PORT"
            )
        if raw != "auto":
            host, sep, port_text = raw.removeprefix("ray://").rpartition(":")
            if not sep or not port_text.isdigit():
                raise DtrainError(
                    f"bad Ray address {raw!r} (from {origin}): expected http://HEAD:8265 or "
                    "HOST:PORT"
                )
            probe(host, int(port_text), f"the Ray cluster at {raw} (address from {origin})")
            # Ray's lookup retries a port that is not the GCS for 40 s, then raises a raw
            # RpcError: what the port speaks says at once whether it can be the GCS.
            check_gcs_port(host, int(port_text), f"{raw} (from {origin})")
        # A cluster address: ask its GCS where the dashboard listens, as `ray job` does.
        from ray.dashboard.utils import get_address_for_submission_client

        finding = f"finding the Jobs API of the Ray cluster at {raw}"
        with (
            self._errors(finding, where=raw),
            without_address_variables(),
            token_mode(self.token),
            native_stderr_hidden(),
        ):
            return str(get_address_for_submission_client(raw)).rstrip("/")

    @contextlib.contextmanager
    def _errors(
        self, what: str, job_id: str | None = None, where: str | None = None
    ) -> Iterator[None]:
        """Ray's exceptions, often several lines long, as one line that says what to do."""
        import requests
        from ray.exceptions import AuthenticationError, RpcError

        where = str(where or getattr(self, "url", "the cluster"))
        try:
            yield
        except DtrainError:
            raise
        except AuthenticationError as e:
            raise DtrainError(token_refused(where, self.token, self.token_source)) from e
        except RpcError as e:
            raise DtrainError(f"{what}: {where} does not answer as Ray: {first_line(e)}") from e
        except (ConnectionError, requests.exceptions.RequestException) as e:
            # The port answers but does not speak HTTP: some other Ray port, say the GCS.
            raise DtrainError(
                f"{what}: no Ray Jobs API answers at {where} (the head's dashboard port, "
                "8265 by default)"
            ) from e
        except (RuntimeError, ValueError) as e:
            text = first_line(e)
            if job_id is not None and "status code 404" in text:
                raise DtrainError(f"no job {job_id!r} on the Ray cluster at {where}") from e
            if "Version check returned 404" in text:
                raise DtrainError(
                    f"{where} does not serve the Ray Jobs API (the dashboard's port, 8265 "
                    "by default)"
                ) from e
            raise DtrainError(f"{what} failed: {text}") from e

    # --- queries -------------------------------------------------------------------------

    def list(self) -> list[JobRecord]:
        """Jobs submitted through the Jobs API, oldest first (plain drivers are left out)."""
        with self._errors("listing jobs"):
            jobs = self._client.list_jobs()
        records = [
            JobRecord.from_details(j)
            for j in jobs
            # Drivers that merely called ray.init are not jobs one can stop or follow, and the
            # helpers that stop pending jobs are bookkeeping.
            if getattr(j.type, "value", j.type) == "SUBMISSION"
            and j.submission_id
            and not HELPER_KEYS & set(j.metadata or {})
        ]
        records = [self._with_results(r) for r in records]
        return sorted(records, key=lambda r: (r.start_time or 0.0, r.submission_id))

    def get(self, job_id: str, results: bool = False) -> JobRecord:
        with self._errors(f"reading job {job_id}", job_id):
            record = JobRecord.from_details(self._client.get_job_info(job_id))
        return self._with_results(record) if results else record

    def _with_results(self, record: JobRecord) -> JobRecord:
        """A dtrain job's run dir and test accuracy, read from its logs (one request a job)."""
        if METADATA_KEY not in record.metadata or record.status == "PENDING":
            return record
        facts = run_facts(self.logs(record.submission_id))
        return dataclasses.replace(
            record, run_dir=facts.run_dir, test_accuracy=facts.test_accuracy, epoch=facts.epoch
        )

    def logs(self, job_id: str) -> str:
        with self._errors(f"reading the logs of job {job_id}", job_id):
            return str(self._client.get_job_logs(job_id))

    def follow(self, job_id: str, write: Callable[[str], None]) -> JobRecord:
        """Pass the job's log text to ``write`` as it comes, until the job ends; its record."""
        self.get(job_id)  # an unknown id is an error, not an empty stream

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                write(chunk)

        with self._errors(f"following the logs of job {job_id}", job_id):
            asyncio.run(tail())
        # The log stream closes as the driver exits; the status can trail it by a moment.
        return self.wait(job_id, timeout=STOP_TIMEOUT_SECONDS)

    def wait(self, job_id: str, timeout: float, poll: float = 0.5) -> JobRecord:
        """The job's record once it ends, or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get(job_id)
            if record.status in TERMINAL or time.monotonic() >= deadline:
                return record
            time.sleep(poll)

    # --- actions ------------------------------------------------------------------------

    def submit(
        self,
        *,
        entrypoint: str,
        working_dir: Path,
        submission_id: str,
        metadata: dict[str, str] | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
    ) -> str:
        meta = {METADATA_KEY: __version__, **(metadata or {})}
        with self._errors("submitting the job"):
            return str(
                self._client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=submission_id,
                    runtime_env={"working_dir": str(working_dir)},
                    metadata=meta,
                    entrypoint_num_cpus=entrypoint_num_cpus,
                    entrypoint_num_gpus=entrypoint_num_gpus,
                )
            )

    def stop(self, job_id: str, timeout: float = STOP_TIMEOUT_SECONDS) -> tuple[JobRecord, str]:
        """Stop a job and wait until it has ended: (its record, what was done).

        Ray's stop request reaches a job through its supervisor actor; while the job is PENDING
        that actor is not running, so the request waits with it, possibly forever (ray #58353).
        Such a job's supervisor is removed by a short helper job instead, which ends it.
        """
        record = self.get(job_id)
        if record.status in TERMINAL:
            return record, f"had already ended ({record.status})"
        with self._errors(f"stopping job {job_id}", job_id):
            self._client.stop_job(job_id)
        record = self.wait(job_id, timeout=min(timeout, PENDING_STOP_GRACE_SECONDS))
        if record.status == "PENDING":
            self._remove_supervisor(job_id, timeout)
            record = self.wait(job_id, timeout=timeout)
            if record.status in TERMINAL:
                return record, (f"was stopped before it started; Ray records it as {record.status}")
        elif record.status not in TERMINAL:
            record = self.wait(job_id, timeout=timeout)
        if record.status not in TERMINAL:
            raise DtrainError(
                f"job {job_id} is still {record.status} {timeout:g}s after the stop request"
            )
        return record, "stopped"

    def run_helper(
        self, entrypoint: str, for_job: str, purpose: str, timeout: float
    ) -> tuple[str, JobRecord]:
        """Run one of dtrain's helper jobs for ``for_job`` to its end: (its id, its record).

        ``purpose`` is its metadata key (one of ``HELPER_KEYS``), so ``list`` leaves it out. A
        helper still running after ``timeout`` seconds is stopped and is an error.
        """
        helper = f"{for_job}-{purpose}-{secrets.token_hex(2)}"
        with self._errors(f"starting a helper job for job {for_job}", for_job):
            self._client.submit_job(
                entrypoint=entrypoint,
                submission_id=helper,
                metadata={METADATA_KEY: __version__, purpose: for_job},
            )
        record = self.wait(helper, timeout=timeout)
        if record.status not in TERMINAL:
            with contextlib.suppress(DtrainError):
                self.stop(helper, timeout=STOP_TIMEOUT_SECONDS)
            raise DtrainError(
                f"the helper job {helper} for job {for_job} was still {record.status} after "
                f"{timeout:g}s"
            )
        return helper, record

    def driver_node(self, job_id: str) -> str | None:
        """The id of the node the job's driver runs (or ran) on, if Ray says."""
        with self._errors(f"reading job {job_id}", job_id):
            node = self._client.get_job_info(job_id).driver_node_id
        return str(node) if node else None

    def _remove_supervisor(self, job_id: str, timeout: float) -> None:
        from ray.dashboard.modules.job.common import (
            JOB_ACTOR_NAME_TEMPLATE,
            SUPERVISOR_ACTOR_RAY_NAMESPACE,
        )

        # Runs inside the cluster, so it needs only the Jobs API from here, and no CPU there.
        name = JOB_ACTOR_NAME_TEMPLATE.format(job_id=job_id)
        code = (
            "import ray; ray.init(); "
            f"ray.kill(ray.get_actor({name!r}, namespace={SUPERVISOR_ACTOR_RAY_NAMESPACE!r}), "
            "no_restart=True)"
        )
        helper = f"{job_id}-stop-{secrets.token_hex(2)}"
        with self._errors(f"stopping the pending job {job_id}", job_id):
            self._client.submit_job(
                entrypoint=f"python -c {_shell_quote(code)}",
                submission_id=helper,
                metadata={METADATA_KEY: __version__, "stops": job_id},
            )
        # Kept, not deleted: deleting a finished job whose driver called ray.init leaves a
        # nameless entry behind in Ray's list. `jobs list` leaves helpers out by their metadata.
        self.wait(helper, timeout=timeout)


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def new_submission_id() -> str:
    """Readable and sortable: ``dtrain-20261123-084500-1a2b``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"dtrain-{stamp}-{secrets.token_hex(2)}"
