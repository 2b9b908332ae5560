"""SIGTERM stops like Ctrl-C: at a step boundary while steps run, at once otherwise or when sent
twice; exit 128 + the signal. Real signals, sent to this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtrain.service.train import stopping


@pytest.fixture
def handlers() -> Iterator[None]:
    assert stopping.install()
    try:
        yield
    finally:
        stopping.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def wait_for_signal() -> None:
    """A signal is handled between bytecodes of the main thread: give it a few."""
    for _ in range(100):
        time.sleep(0.001)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_outside_the_step_loop_a_signal_stops_at_once(handlers: None, sig: int, code: int) -> None:
    with pytest.raises(KeyboardInterrupt) as raised:
        os.kill(os.getpid(), sig)
        wait_for_signal()
    assert stopping.exit_code(raised.value) == code
    assert stopping.signal_name(raised.value) == signal.Signals(sig).name


def test_while_steps_run_the_first_signal_asks_and_the_second_stops(
    handlers: None, capsys: pytest.CaptureFixture[str]
) -> None:
    stopping.set_graceful(True)
    os.kill(os.getpid(), signal.SIGTERM)
    wait_for_signal()
    assert stopping.requested() == signal.SIGTERM
    assert "SIGTERM: stopping after the current step" in capsys.readouterr().err
    with pytest.raises(stopping.Interrupted) as raised:
        os.kill(os.getpid(), signal.SIGINT)  # a second signal, of either kind
        wait_for_signal()
    # Reported as the stop that was asked for first.
    assert raised.value.signum == signal.SIGTERM and raised.value.exit_code == 143


def test_a_stop_that_cannot_reach_a_step_boundary_becomes_immediate(
    handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stopping, "STOP_GRACE_SECONDS", 0.2)
    stopping.set_graceful(True)
    start = time.monotonic()
    with pytest.raises(stopping.Interrupted):
        os.kill(os.getpid(), signal.SIGTERM)
        while time.monotonic() - start < 10:  # a hung step
            time.sleep(0.01)
    assert time.monotonic() - start < 5


def test_a_second_install_is_not_the_owner(handlers: None) -> None:
    assert not stopping.install()
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL


def test_sigterm_during_data_prepare_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """Any command, not only train: the group takes SIGTERM, finally blocks clean up."""
    out = tmp_path / "mnist"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtrain.cli.main", "data", "prepare", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".mnist.tmp-*")):  # mid-write
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "dtrain: interrupted (SIGTERM)", stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_while_following_a_job_stops_following_in_one_line(tmp_path: Path) -> None:
    """`dtrain submit --wait` and `jobs logs --follow` under SIGTERM: the job keeps running,
    the follower says so and exits 143. A stand-in Jobs API answers the version check and then
    keeps the job's request waiting, as a slow head would."""
    import http.server
    import json
    import threading

    import ray

    waiting, release = threading.Event(), threading.Event()

    class JobsApi(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/api/version":
                waiting.set()
                release.wait(60)  # the follower is signalled while waiting here
            body = json.dumps({"version": "4", "ray_version": ray.__version__}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JobsApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    follow = ["jobs", "logs", "raysubmit_x", "--follow", "--address", url]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtrain.cli.main", *follow],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)},
    )
    try:
        assert waiting.wait(60), "the follower never asked for the job"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        server.shutdown()
        server.server_close()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "dtrain: stopped following raysubmit_x (SIGTERM); it keeps running "
        "(`dtrain jobs stop raysubmit_x` ends it)"
    ), stderr
