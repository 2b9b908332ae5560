"""The cheap answer to "is anyone listening there": one TCP connect with a short timeout.

ray.init and the Jobs SDK retry an unreachable address for minutes; a connect answers in
seconds, so every command that dials a cluster probes first and fails in one line.
"""

from __future__ import annotations

import socket

from dtrain.service.errors import DtrainError

PROBE_TIMEOUT_SECONDS = 5.0


def probe(host: str, port: int, what: str) -> None:
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise DtrainError(f"cannot reach {what}: {reason}") from e
