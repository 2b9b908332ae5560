"""The cheap answer to "is anyone listening there": one TCP connect with a short timeout.

ray.init and the Jobs SDK retry an unreachable address for minutes; a connect answers in
seconds, so every command that dials a cluster probes first and fails in one line.
"""

from __future__ import annotations

import socket
import urllib.parse

from dtrain.service.errors import DtrainError

PROBE_TIMEOUT_SECONDS = 5.0


def probe(host: str, port: int, what: str) -> None:
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise DtrainError(f"cannot reach {what}: {reason}") from e


def split_url(url: str, what: str, where: str = "") -> urllib.parse.SplitResult:
    """``urlsplit(url)``, whose ValueError (an unclosed "[" of an IPv6 host, a port that is not
    a number or beyond 65535) is one line naming ``what`` ("Jobs API address") instead of a
    traceback (``where``: " (from --address)"); the port is read here, as reading it is what
    raises the port's errors."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - read for the ValueError it raises
    except ValueError as e:
        raise DtrainError(f"bad {what} {url!r}{where}: {e}") from None
    return parts
