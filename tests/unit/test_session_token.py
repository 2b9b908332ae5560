"""`dtrain train --address HEAD:6379` sends the token it finds, as `dtrain submit` does.

A cluster runs with RAY_AUTH_MODE=token, and Ray's client sends the token only with that mode set
on the client too; the README asks users to export only the token. Without the mode, joining the
cluster retried for 20 s ("Authentication token is missing") and failed without naming the token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import ray

from dtrain.service.train import session


def modes_seen_by_ray_init(monkeypatch: pytest.MonkeyPatch, address: str) -> list[str | None]:
    """RAY_AUTH_MODE as ray.init sees it when a run joins ``address`` (no Ray is started)."""
    seen: list[str | None] = []

    def fake_init(**kwargs: Any) -> None:
        seen.append(os.environ.get("RAY_AUTH_MODE"))

    monkeypatch.setattr(session, "probe_address", lambda target: None)
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
