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
from collections.abc import Iterator
from pathlib import Path

from dtrain.service.errors import DtrainError

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


def find_token() -> tuple[str | None, str]:
    """Ray's token and where it came from, in Ray's own order of precedence."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return None, "RAY_AUTH_MODE=disabled"
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "$RAY_AUTH_TOKEN"
    path_text = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path_text:
        # Ray treats an unreadable token path as fatal rather than falling back; so do we.
        path = Path(path_text).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise DtrainError(
                f"cannot read the token file $RAY_AUTH_TOKEN_PATH ({path}): {e.strerror or e}"
            ) from e
        if not token:
            raise DtrainError(f"the token file $RAY_AUTH_TOKEN_PATH ({path}) is empty")
        return token, f"$RAY_AUTH_TOKEN_PATH ({path})"
    default = Path.home() / ".ray" / "auth_token"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        token = default.read_text(encoding="utf-8").strip()
        if token:
            return token, str(default)
    return None, "no token"


@contextlib.contextmanager
def without_address_variables() -> Iterator[None]:
    """Hide $RAY_ADDRESS and friends: JobSubmissionClient lets them override its argument."""
    saved = {var: os.environ.pop(var) for var in ADDRESS_VARIABLES if var in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
