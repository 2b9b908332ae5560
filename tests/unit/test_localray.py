"""The local Ray's hygiene that needs no Ray: a private token file, and the sweep of processes
a killed driver's Ray left (real processes, told apart by the owner tag in their environment)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dtrain.service.train import localray


def test_ray_token_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    localray.ensure_private_token()
    token = tmp_path / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / ".ray").stat().st_mode & 0o777 == 0o700
    assert len(token.read_text()) == 64 and [p.name for p in token.parent.iterdir()] == [
        "auth_token"
    ]
    first = token.read_text()
    localray.ensure_private_token()  # an existing token is never replaced
    assert token.read_text() == first


def test_a_readable_ray_token_is_named_not_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("t" * 64)
    token.chmod(0o644)
    localray.ensure_private_token()
    assert "readable by other users" in capsys.readouterr().err
    assert token.stat().st_mode & 0o777 == 0o644


def test_no_token_is_written_when_ray_would_not_use_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    localray.ensure_private_token()
    assert not (tmp_path / ".ray").exists()


def test_owner_tags_tell_a_live_driver_from_a_dead_one() -> None:
    assert localray.owner_alive(localray.owner_tag())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    tag = localray.owner_tag(child.pid)
    assert localray.owner_alive(tag)
    child.kill()
    child.wait()
    assert not localray.owner_alive(tag)
    assert not localray.owner_alive("garbage")


def tagged_sleeper(tag: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, localray.OWNER_VARIABLE: tag}
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)


def test_the_next_run_ends_what_a_dead_drivers_ray_left_and_nothing_else() -> None:
    dead_driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead_tag = localray.owner_tag(dead_driver.pid)
    dead_driver.kill()
    dead_driver.wait()
    orphan = tagged_sleeper(dead_tag)  # an agent whose driver was SIGKILLed
    live = tagged_sleeper(localray.owner_tag())  # a live driver's (this test's) process
    untagged = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        deadline = time.monotonic() + 10
        while orphan.pid not in localray.owned_processes() and time.monotonic() < deadline:
            time.sleep(0.01)  # until its environment is readable in /proc
        ended = localray.end_orphans()
        assert orphan.pid in ended and live.pid not in ended and untagged.pid not in ended
        assert orphan.wait(timeout=10) is not None
        assert live.poll() is None and untagged.poll() is None
    finally:
        for p in (orphan, live, untagged):
            p.kill()
            p.wait()


DRIVER = """
import subprocess, sys, time
from dtrain.service.train import localray
# A Ray process as the raylet starts the agents: a child, renamed, its own session.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
reaper = localray._start_reaper(localray.owner_tag())
time.sleep(2 * localray.SCAN_SECONDS)  # the reaper has noted the child
print(child.pid, reaper.pid, flush=True)
time.sleep(600)
"""


def test_the_reaper_ends_what_a_sigkilled_driver_left_running() -> None:
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None
        child, reaper = map(int, driver.stdout.readline().split())
        child_started = localray.start_time(child)
        assert child_started is not None
    finally:
        driver.kill()  # SIGKILL: no finally block of the driver runs
        driver.wait()
        if driver.stdout is not None:
            driver.stdout.close()

    def lives(pid: int, started: str | None) -> bool:  # a zombie is not alive
        return localray.start_time(pid) == started and localray.running(pid)

    deadline = time.monotonic() + 15
    while lives(child, child_started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not lives(child, child_started), "the driver's child outlived it"
    while localray.running(reaper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not localray.running(reaper), "the reaper did not exit after its work"
