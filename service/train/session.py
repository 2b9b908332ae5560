"""Where a run's Ray comes from and what the cluster can hold, checked before any actor starts."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import ray

from dtrain.service.errors import DtrainError, first_line
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
        try:
            ray.init(address=target, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise DtrainError(f"cannot connect to Ray at {target}: {first_line(e)}") from e
        # ray.init put its own SIGTERM handler in (and Ray's C++ core dumps a stack on SIGTERM):
        # SIGTERM stops a run as Ctrl-C does (stopping.py).
        stopping.reassert()
        try:
            yield
        finally:
            ray.shutdown()


def probe_address(address: str) -> None:
    """Fail fast, in one line, when a ``host:port`` cluster address does not answer."""
    if address == "auto" or ("://" in address and not address.startswith("ray://")):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise DtrainError(f"bad Ray address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:6379")
    probe(host, int(port), f"the Ray cluster at {address}")


def check_resources(config: TrainConfig) -> None:
    """More CPUs than the cluster has would leave actors pending forever: refuse instead."""
    need = config.num_workers * config.num_cpus_per_worker
    have = ray.cluster_resources().get("CPU", 0.0)
    if need > have:
        raise DtrainError(
            f"the Ray cluster has {have:g} CPUs but {config.num_workers} workers x "
            f"{config.num_cpus_per_worker:g} CPUs need {need:g}: lower --num-workers or "
            "--cpus-per-worker"
        )


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
