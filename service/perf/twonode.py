"""``dtrain bench --two-node``: dtrain's runs on a two-node Ray cluster the bench starts itself.

Both nodes run on this machine, on loopback, with a token of their own (service/loopback.py),
and the workers are spread over them (SPREAD, the trainer's default): with more than one node
the step exchange goes through Ray's object store, the multi-node path. On a machine with few
cores the two nodes and their daemons share those cores, so these rows price that path's
overhead against the single-node rows of the same run; they are no promise of a speed-up.

Nothing is left running: the cluster is stopped on the way out of ``two_node_ray`` whatever
ends it (an error, Ctrl-C, SIGTERM through dtrain's handler), and its processes carry the
bench's local-Ray owner tag, so the reaper of service/train/localray.py ends them even if the
bench itself is killed outright (then the cluster's directory under /tmp is left behind).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dtrain.service.errors import DtrainError, first_line
from dtrain.service.loopback import LoopbackCluster

NUM_NODES = 2
TOKEN_VARIABLE = "RAY_AUTH_TOKEN"


@contextlib.contextmanager
def _driver_token(token: str) -> Iterator[None]:
    """This process's Ray client uses the cluster's token while it is connected.

    Ray reads the token once per process and caches it (the single-node runs before these
    cached the local Ray's): the cache is reset on the way in and again on the way out.
    """
    # Compiled in Ray's _raylet, whose stubs do not list it; Ray's own token setup uses it so.
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]

    saved = os.environ.get(TOKEN_VARIABLE)
    os.environ[TOKEN_VARIABLE] = token
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(TOKEN_VARIABLE, None)
        else:
            os.environ[TOKEN_VARIABLE] = saved
        AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def two_node_ray(cpus_per_node: int, say: Callable[[str], None]) -> Iterator[LoopbackCluster]:
    """A started two-node loopback cluster with this process connected to it as the driver."""
    import ray

    from dtrain.service.train import localray
    from dtrain.service.train.session import ray_session

    if ray.is_initialized():
        raise DtrainError("--two-node: this process is already connected to a Ray cluster")
    # Short and under /tmp: Ray's unix socket paths must stay below ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="dtrb-", dir="/tmp"))
    cluster = LoopbackCluster(root=root, num_nodes=NUM_NODES, cpus_per_node=cpus_per_node)
    cores = os.cpu_count() or 1
    say(
        f"two-node cluster: {NUM_NODES} Ray nodes of {cpus_per_node} CPUs each on 127.0.0.1, "
        f"under {root}, sharing this machine's {cores} cores"
        + (" (oversubscribed)" if NUM_NODES * cpus_per_node > cores else "")
    )
    # The token first: the loopback settings then leave ~/.ray/auth_token alone.
    with _driver_token(cluster.token), localray.local_ray_settings():
        try:
            try:
                cluster.start()
            except (OSError, RuntimeError) as e:
                raise DtrainError(f"cannot start the two-node cluster: {first_line(e)}") from e
            with ray_session(cluster.gcs_address, cpus_per_node):
                yield cluster
        finally:
            cluster.stop()
