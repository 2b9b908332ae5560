"""Where a cluster's Jobs API is and which token it takes, found the same way every time.

- address: ``--address``, else ``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS``, else
  ``http://127.0.0.1:8265``. An ``http(s)://`` address is the Jobs API itself; a bare
  ``HOST:PORT`` (or ``auto``) is a cluster (GCS) address whose dashboard Ray looks up, as
  ``ray job`` does.
- token: ``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``
  (Ray's own order), sent as ``Authorization: Bearer`` unless ``RAY_AUTH_MODE=disabled``. It is
  never put into the job's runtime environment, which the dashboard shows to anyone who can list
  jobs; the job's own driver gets it from the node it runs on.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from dtrain.service.errors import DtrainError
from dtrain.service.paths import read_small_text

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def resolve_address(address: str | None) -> tuple[str, str]:
    """The Jobs API address and where it came from (for messages)."""
    if address:
        return address.rstrip("/"), "--address"
    for var in ADDRESS_VARIABLES:
        value = os.environ.get(var, "").strip()
        if value:
            return value.rstrip("/"), f"${var}"
    return DEFAULT_ADDRESS, "the default"


def header_safe(token: str, where: str) -> str:
    """``token`` if it can travel in an HTTP or gRPC header: printable ASCII, no spaces. Ray's
    gRPC client aborts the whole process (a core dump, exit 134) on anything else."""
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise DtrainError(f"{where} holds a token with characters a header cannot carry")
    return token


def find_token() -> tuple[str | None, str]:
    """Ray's token and where it came from, in Ray's own order of precedence."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return None, "RAY_AUTH_MODE=disabled"
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return header_safe(token, "$RAY_AUTH_TOKEN"), "$RAY_AUTH_TOKEN"
    path_text = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path_text:
        # Ray treats an unreadable token path as fatal rather than falling back; so do we.
        path = Path(path_text).expanduser()
        where = f"the token file $RAY_AUTH_TOKEN_PATH ({path})"
        try:
            token = read_small_text(path).strip()  # a FIFO would hang the command
        except OSError as e:
            raise DtrainError(f"cannot read {where}: {e.strerror or e}") from e
        except UnicodeDecodeError:
            raise DtrainError(f"{where} is not text") from None
        if not token:
            raise DtrainError(f"{where} is empty")
        return header_safe(token, where), f"$RAY_AUTH_TOKEN_PATH ({path})"
    default = Path.home() / ".ray" / "auth_token"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        token = default.read_text(encoding="utf-8").strip()
        if token:
            return token, str(default)
    return None, "no token"


def token_refused(where: str, token: str | None, source: str) -> str:
    """The line for a cluster that refused the token sent (from ``source``), or its absence."""
    if token is None:
        found = "no token was found" if source == "no token" else f"none is sent ({source})"
        return (
            f"the Ray cluster at {where} requires a token and {found}: "
            "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
        )
    return (
        f"the Ray cluster at {where} rejected the token from {source}: "
        "it is not this cluster's token"
    )


@contextlib.contextmanager
def without_address_variables() -> Iterator[None]:
    """Hide $RAY_ADDRESS and friends: JobSubmissionClient lets them override its argument."""
    saved = {var: os.environ.pop(var) for var in ADDRESS_VARIABLES if var in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


# What a port answers to a plain HTTP request, within this many seconds.
SNIFF_TIMEOUT_SECONDS = 3.0


def check_gcs_port(host: str, port: int, where: str) -> None:
    """Refuse, at once, a bare ``HOST:PORT`` that cannot be a Ray GCS: an HTTP port (the
    dashboard, given without ``http://``) or a port that does not speak gRPC at all.

    The GCS is a gRPC server: to a plain HTTP/1.0 request it answers with an HTTP/2 SETTINGS
    frame (type 4 in the fourth byte), where an HTTP server answers ``HTTP/1.x ...``.
    """
    try:
        with socket.create_connection((host, port), timeout=SNIFF_TIMEOUT_SECONDS) as conn:
            conn.settimeout(SNIFF_TIMEOUT_SECONDS)
            conn.sendall(b"GET /api/version HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
            head = conn.recv(16)
    except OSError:
        head = b""
    if head.startswith(b"HTTP/"):
        raise DtrainError(
            f"{where} is an HTTP port, not a cluster (GCS) address: for the Jobs API write "
            f"http://{host}:{port}"
        )
    if len(head) < 4 or head[3] != 0x04:
        raise DtrainError(
            f"{where} is not a Ray port: give the Jobs API as http://HEAD:8265 or the cluster's "
            "GCS address as HEAD:6379"
        )


@contextlib.contextmanager
def token_mode(token: str | None) -> Iterator[None]:
    """Ray's own clients (the GCS lookup behind a bare HOST:PORT) send the token only with
    ``RAY_AUTH_MODE=token``; the README asks users to export only ``RAY_AUTH_TOKEN``, so the
    mode is set for the lookup when a token was found and the user set no mode.
    """
    if token is None or "RAY_AUTH_MODE" in os.environ:
        yield
        return
    from ray._raylet import Config  # type: ignore[attr-defined]  # compiled, no stub

    os.environ["RAY_AUTH_MODE"] = "token"
    # Ray caches its config per process; re-read it, as Ray's own _enable_token_auth does.
    Config.initialize("")
    try:
        yield
    finally:
        del os.environ["RAY_AUTH_MODE"]
        Config.initialize("")


@contextlib.contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """Ray's C++ GCS client logs its failed attempts straight to file descriptor 2, around the
    one-line error dtrain prints; those lines go nowhere while the lookup runs.
    """
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
