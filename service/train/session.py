"""Where a run's Ray comes from and what the cluster can hold, checked before any actor starts."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import ray

from dtrain.service.errors import DtrainError, first_line
from dtrain.service.jobs.endpoint import (
    check_gcs_port,
    find_token,
    native_stderr_hidden,
    token_mode,
    token_refused,
)
from dtrain.service.net import probe
from dtrain.service.train import localray, stopping
from dtrain.service.train.config import TrainConfig


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
    with ExitStack() as stack:
        if target == "local":
            # Token authentication: Ray >= 2.59 turns it on for a new local cluster unless the
            # user set RAY_AUTH_MODE (setting it here, after `import ray`, would desync Ray's
            # config). Loopback only, and nothing of it left running after the driver: localray.
            kwargs["num_cpus"] = num_cpus
            stack.enter_context(localray.local_ray_settings())
        else:
            probe_address(target)
            # A cluster runs with RAY_AUTH_MODE=token, and Ray's client sends the token it finds
            # only when that mode is set on this machine too: without it, `--address HEAD:6379`
            # retried for 20 s ("Authentication token is missing") and failed saying nothing of
            # the token. As `dtrain submit` and `dtrain jobs` do, the token found is sent unless
            # the user set a mode; a cluster without authentication ignores it.
            token, source = find_token()
            stack.enter_context(token_mode(token))
            check_cluster_accepts(target, token, source)
        try:
            ray.init(address=target, **kwargs)
        except (OSError, RuntimeError, ValueError) as e:
            # OSError: a local Ray that cannot start (socket path too long, /tmp full or
            # read-only); ConnectionError is one too. Whatever it started before failing is
            # stopped.
            ray.shutdown()
            if target == "local":
                raise DtrainError(f"cannot start a local Ray: {first_line(e)}") from e
            raise DtrainError(f"cannot connect to Ray at {target}: {first_line(e)}") from e
        # ray.init put its own SIGTERM handler in (and Ray's C++ core dumps a stack on SIGTERM):
        # SIGTERM stops a run as Ctrl-C does (stopping.py).
        stopping.reassert()
        try:
            yield
        finally:
            if target == "local":
                end_monitor()
            ray.shutdown()


def end_monitor() -> None:
    """SIGKILL the autoscaler monitor of a local Ray that this driver started, before
    ``ray.shutdown``: a single-node Ray has nothing to autoscale, and the monitor ignores the
    SIGTERM of shutdown, which then waits out its one-second grace (1.0 of the 1.5 s that
    shutdown took here). Only through Ray's own handle on the process; if that is not there
    (another Ray version), shutdown ends it as before."""
    node = getattr(ray._private.worker, "_global_node", None)
    kill = getattr(node, "kill_monitor", None)
    if kill is not None:
        with contextlib.suppress(Exception):  # best effort: shutdown ends it regardless
            kill(check_alive=False)


def check_cluster_accepts(address: str, token: str | None, source: str) -> None:
    """Refuse at once, in one line, a cluster that rejects the token sent or its absence.

    ray.init retries such a cluster for 20 s, Ray's C++ client printing a line a second, then
    says only "Failed to connect"; Ray's GCS client, asked once, raises AuthenticationError in
    under a second. Anything else about the address is left to ray.init, as before.
    """
    parsed = parse_address(address)
    if parsed is None or address.startswith("ray://"):
        return  # Ray resolves these itself: no GCS to ask here
    host, port = parsed
    try:
        # The GCS client waits 40 s on a port that is not a GCS (the dashboard's, say): only a
        # port that answers as gRPC is asked.
        check_gcs_port(host, port, address)
    except DtrainError:
        return
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # compiled, no stub
    from ray.exceptions import AuthenticationError, RpcError

    try:
        with native_stderr_hidden():
            GcsClient(address=f"{host}:{port}")
    except AuthenticationError as e:
        raise DtrainError(token_refused(address, token, source)) from e
    except RpcError:
        return


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``host:port`` (or ``ray://host:port``) address; None for the forms
    Ray resolves itself (``auto``, ``local``, other URLs). A malformed one is a DtrainError."""
    if address.lower().startswith(("http://", "https://")):
        # The Jobs API (dashboard) address: ray.init refuses it with a message about
        # RAY_ADDRESS, even when it came from --address.
        raise DtrainError(
            f"bad Ray address {address!r}: that is a Jobs API address (use it with `dtrain "
            "submit`); train joins a cluster by its HOST:PORT (GCS) or ray://HOST:PORT"
        )
    if address in ("auto", "local") or ("://" in address and not address.startswith("ray://")):
        return None
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DtrainError(f"bad Ray address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:6379")
    if not 1 <= int(port) <= 65535:
        raise DtrainError(f"bad Ray address {address!r}: port {port} is not in 1..65535")
    return host.strip("[]"), int(port)


def probe_address(address: str) -> None:
    """Fail fast, in one line, when a ``host:port`` cluster address is malformed or silent."""
    parsed = parse_address(address)
    if parsed is not None:
        probe(*parsed, f"the Ray cluster at {address}")


# A local run with more workers than cores time-slices them (slower, not wrong): above this many
# per core it is a mistake (50 workers on 2 cores took 2.5 minutes for one epoch), so refuse.
MAX_LOCAL_WORKERS_PER_CORE = 4


def check_local_workers(num_workers: int, address: str | None) -> None:
    """On a new local Ray, warn when workers outnumber cores and refuse far beyond that."""
    if ray.is_initialized() or resolve_address(address) != "local":
        return
    cores = os.cpu_count() or 1
    if num_workers > MAX_LOCAL_WORKERS_PER_CORE * cores:
        raise DtrainError(
            f"--num-workers {num_workers} on a local run with {cores} CPU cores: at most "
            f"{MAX_LOCAL_WORKERS_PER_CORE * cores} ({MAX_LOCAL_WORKERS_PER_CORE} per core); "
            "use --address to train on a cluster"
        )
    if num_workers > cores:
        print(
            f"dtrain: warning: {num_workers} workers on {cores} CPU cores share them; "
            f"expect each step to be slower than with --num-workers {cores}",
            file=sys.stderr,
        )


def check_resources(config: TrainConfig) -> None:
    """More CPUs than the cluster has would leave actors pending forever: refuse instead.

    An elastic run needs room for MIN workers only; it starts with as many as fit.
    """
    count = config.fewest_workers
    need = count * config.num_cpus_per_worker
    have = ray.cluster_resources().get("CPU", 0.0)
    if need > have:
        least = "at least " if config.elastic else ""
        raise DtrainError(
            f"the Ray cluster has {have:g} CPUs but {least}{count} workers x "
            f"{config.num_cpus_per_worker:g} CPUs need {need:g}: lower --num-workers or "
            "--cpus-per-worker"
        )


def worker_capacity(config: TrainConfig) -> int:
    """How many workers the cluster's live nodes can hold now, by CPUs (a lost node's CPUs
    leave the count when Ray declares it dead; a joined node's enter it)."""
    if config.num_cpus_per_worker == 0:
        return config.num_workers
    have = sum(n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive"))
    # A hair under the quotient still counts: 3 x 0.1 CPUs is 0.30000000000000004.
    return int(have / config.num_cpus_per_worker + 1e-9)


def use_shared_memory(config: TrainConfig) -> bool:
    """Shared-memory exchange needs every actor on one node: the default on one node."""
    if config.exchange == "object-store":
        return False
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if config.exchange == "shared-memory" and len(nodes) > 1:
        raise DtrainError(
            f"--exchange shared-memory needs a single-node cluster, this one has {len(nodes)} "
            "nodes: use --exchange object-store or auto"
        )
    return len(nodes) == 1


def num_gpu_workers(config: TrainConfig) -> int:
    """How many workers get a GPU: checked against the cluster so nothing waits forever."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if config.device == "cpu":
        return 0
    if config.device == "auto":
        return min(config.num_workers, gpus)
    wanted = config.num_workers if config.num_gpu_workers is None else config.num_gpu_workers
    if wanted > gpus:
        raise DtrainError(
            f"--device gpu needs {wanted} GPUs but the Ray cluster has {gpus}: use "
            "--device auto, --gpu-workers, or a cluster with GPU nodes"
        )
    return wanted
