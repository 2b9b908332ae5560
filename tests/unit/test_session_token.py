"""`dtrain train --address HEAD:6379` sends the token it finds, as `dtrain submit` does, and a
cluster that refuses it is one line at once.

A cluster runs with RAY_AUTH_MODE=token, and Ray's client sends the token only with that mode set
on the client too; the README asks users to export only the token. Without the mode, or with a
wrong token or none, joining the cluster retried for 20 s ("Authentication token is missing", a
line a second) and failed with "Failed to connect", naming no token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import ray
import ray._raylet
from ray.exceptions import AuthenticationError, RpcError

from dtrain.service.errors import DtrainError
from dtrain.service.train import session


def modes_seen_by_ray_init(monkeypatch: pytest.MonkeyPatch, address: str) -> list[str | None]:
    """RAY_AUTH_MODE as ray.init sees it when a run joins ``address`` (no Ray is started)."""
    seen: list[str | None] = []

    def fake_init(**kwargs: Any) -> None:
        seen.append(os.environ.get("RAY_AUTH_MODE"))

    monkeypatch.setattr(session, "probe_address", lambda target: None)
    monkeypatch.setattr(session, "check_token", lambda target, token, source: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with session.ray_session(address, num_cpus=1):
        pass
    return seen


def test_joining_a_cluster_sends_the_token_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "a-token")
    assert modes_seen_by_ray_init(monkeypatch, "10.0.0.1:6379") == ["token"]
    # Only for the session: the process's environment is as it was.
    assert "RAY_AUTH_MODE" not in os.environ


def test_a_mode_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "a-token")
    assert modes_seen_by_ray_init(monkeypatch, "10.0.0.1:6379") == ["disabled"]


def test_no_token_sets_no_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    assert modes_seen_by_ray_init(monkeypatch, "10.0.0.1:6379") == [None]


class RefusingGcs:
    """Ray's GCS client against a cluster that refuses the token sent."""

    def __init__(self, address: str) -> None:
        raise AuthenticationError("Authentication token is missing or incorrect")


def join_refused(monkeypatch: pytest.MonkeyPatch, gcs: type) -> str:
    """The error of joining 10.0.0.1:6379 when its GCS client is ``gcs``; ray.init must not run."""

    def no_init(**kwargs: Any) -> None:
        raise AssertionError("ray.init ran: a refused token waited 20 s there")

    monkeypatch.setattr(session, "probe_address", lambda target: None)
    monkeypatch.setattr(session, "check_gcs_port", lambda host, port, where: None)
    monkeypatch.setattr(ray._raylet, "GcsClient", gcs)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(DtrainError) as refused, session.ray_session("10.0.0.1:6379", num_cpus=1):
        pass
    return str(refused.value)


def test_a_wrong_token_is_one_line_naming_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong")
    assert join_refused(monkeypatch, RefusingGcs) == (
        "the Ray cluster at 10.0.0.1:6379 rejected the token from $RAY_AUTH_TOKEN: "
        "it is not this cluster's token"
    )


def test_no_token_is_one_line_saying_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert join_refused(monkeypatch, RefusingGcs).startswith(
        "the Ray cluster at 10.0.0.1:6379 requires a token and no token was found: "
        "set RAY_AUTH_TOKEN"
    )


def test_other_gcs_trouble_is_left_to_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    class SilentGcs:
        def __init__(self, address: str) -> None:
            raise RpcError("Timed out while waiting for GCS to become available.")

    monkeypatch.setattr(ray._raylet, "GcsClient", SilentGcs)
    monkeypatch.setattr(session, "check_gcs_port", lambda host, port, where: None)
    session.check_token("10.0.0.1:6379", "a-token", "$RAY_AUTH_TOKEN")  # no error of its own


def test_a_port_that_is_no_gcs_is_not_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GCS client waits 40 s on a port that is not a GCS: such a port is never asked."""

    def not_gcs(host: str, port: int, where: str) -> None:
        raise DtrainError(f"{where} is an HTTP port")

    monkeypatch.setattr(session, "check_gcs_port", not_gcs)
    monkeypatch.setattr(ray._raylet, "GcsClient", RefusingGcs)
    session.check_token("10.0.0.1:8265", "a-token", "$RAY_AUTH_TOKEN")
    session.check_token("auto", "a-token", "$RAY_AUTH_TOKEN")
