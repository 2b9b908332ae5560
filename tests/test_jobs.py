"""`dtrain submit` and `dtrain jobs` without a cluster: every mistake is one line, fast, exit 1
(or click's usage error, 2, for bad options, before anything is uploaded). The real two-node
cluster runs are in tests/test_cluster.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listening, so nobody else takes it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, float]:
    start = time.perf_counter()
    result = CliRunner().invoke(cli, args, env=env)
    return result.exit_code, result.output, time.perf_counter() - start


def assert_one_line_error(output: str, *needles: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: "), output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in lines[0], output


@pytest.mark.parametrize(
    "command",
    [
        ["jobs", "list"],
        ["jobs", "status", "some-id"],
        ["jobs", "logs", "some-id"],
        ["jobs", "stop", "some-id"],
        ["submit", "--epochs", "1"],
    ],
)
def test_unreachable_address_is_one_line_within_seconds(
    command: list[str], closed_port: int
) -> None:
    address = f"http://127.0.0.1:{closed_port}"
    code, output, seconds = run([*command, "--address", address])
    assert code == 1
    assert_one_line_error(output, address)
    assert seconds < 10, f"took {seconds:.1f} s"


def test_address_comes_from_ray_address(closed_port: int) -> None:
    address = f"http://127.0.0.1:{closed_port}"
    code, output, _ = run(
        ["jobs", "list"], env={"RAY_ADDRESS": address, "RAY_API_SERVER_ADDRESS": ""}
    )
    assert code == 1
    assert_one_line_error(output, address, "RAY_ADDRESS")


@pytest.mark.parametrize(
    "address",
    ["http://", "ftp://127.0.0.1:8265", "http://127.0.0.1:notaport", "127.0.0.1:"],
)
def test_malformed_address_is_one_line(address: str) -> None:
    code, output, seconds = run(["jobs", "list", "--address", address])
    assert code == 1
    assert_one_line_error(output)
    assert seconds < 10


def test_bad_train_option_is_a_usage_error_before_any_upload(closed_port: int) -> None:
    # The option is checked here (click's usage error, 2), not sent to a cluster that would
    # only fail the job: the closed port shows nothing was contacted.
    code, output, _ = run(
        ["submit", "--address", f"http://127.0.0.1:{closed_port}", "--epochs", "0"]
    )
    assert code == 2
    assert "--epochs" in output
    assert "cannot reach" not in output


def test_job_file_with_an_unknown_key_is_refused(tmp_path: Path, closed_port: int) -> None:
    job = tmp_path / "job.toml"
    job.write_text("[train]\nepochs = 1\nno_such_option = 3\n")
    code, output, _ = run(
        ["submit", "--address", f"http://127.0.0.1:{closed_port}", "--config", str(job)]
    )
    assert code == 2
    assert "no_such_option" in output
