"""`dtrain submit` and `dtrain jobs` without a cluster: every mistake is one line, fast, exit 1
(or click's usage error, 2, for bad options, before anything is uploaded). The real two-node
cluster runs are in tests/cluster/test_cluster.py.
"""

from __future__ import annotations

import re
import shlex
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli


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


# --- where the address and the token come from ---------------------------------------------


def test_address_precedence_is_flag_then_api_server_then_ray_address() -> None:
    api, plain, flag = (_free_port() for _ in range(3))
    env = {
        "RAY_ADDRESS": f"http://127.0.0.1:{plain}",
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{api}",
    }
    code, output, _ = run(["jobs", "list"], env=env)
    assert code == 1
    assert_one_line_error(output, f":{api} (address from $RAY_API_SERVER_ADDRESS)")
    # --address wins over both, although Ray's own client would let the variables win.
    code, output, _ = run(["jobs", "list", "--address", f"http://127.0.0.1:{flag}"], env=env)
    assert code == 1
    assert_one_line_error(output, f":{flag} (address from --address)")


def test_unreachable_cluster_address_fails_fast(closed_port: int) -> None:
    """A bare HOST:PORT is a GCS address; a dead one must not wait out Ray's retries."""
    code, output, seconds = run(["jobs", "list", "--address", f"127.0.0.1:{closed_port}"])
    assert code == 1
    assert_one_line_error(output, f"cannot reach the Ray cluster at 127.0.0.1:{closed_port}")
    assert seconds < 10


def test_token_precedence_follows_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dtrain.service.jobs.endpoint import find_token

    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert find_token() == (None, "no token")
    default = tmp_path / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("from-home\n")
    assert find_token() == ("from-home", str(default))
    path = tmp_path / "token"
    path.write_text("  from-path \n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert find_token() == ("from-path", f"$RAY_AUTH_TOKEN_PATH ({path})")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert find_token() == ("from-env", "$RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert find_token() == (None, "RAY_AUTH_MODE=disabled")


@pytest.mark.parametrize("content", [None, ""])
def test_bad_token_file_is_one_line(tmp_path: Path, closed_port: int, content: str | None) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    code, output, _ = run(
        ["jobs", "list", "--address", f"http://127.0.0.1:{closed_port}"],
        env={"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(path), "RAY_AUTH_MODE": "token"},
    )
    assert code == 1
    assert_one_line_error(
        output, "$RAY_AUTH_TOKEN_PATH", "is empty" if content == "" else "No such file"
    )


# --- what the job's entrypoint holds ------------------------------------------------------


def _forwarded_to_train(args: list[str], job_id: str = "dtrain-test-0001") -> dict[str, Any]:
    """Build the job's entrypoint from submit's options, parse it back with the real train."""
    from dtrain.cli.jobs_cmds import ENTRYPOINT, FORWARDED_NAMES, build_entrypoint
    from dtrain.cli.main import train

    submit = cli.commands["submit"]
    ctx = submit.make_context("submit", args)
    line = build_entrypoint(ctx, FORWARDED_NAMES, job_id, tuple(ctx.params["train_args"]))
    words = shlex.split(line)
    assert words[: len(ENTRYPOINT)] == list(ENTRYPOINT)
    params = train.make_context("train", words[len(ENTRYPOINT) :]).params
    return {**params, "_line": line}


def test_submit_has_every_train_option_but_the_cluster_address() -> None:
    from dtrain.cli.main import train

    submit = cli.commands["submit"]
    train_names = {p.name for p in train.params} - {"address", "as_json"}
    assert train_names <= {p.name for p in submit.params}
    # submit's own --address is the Jobs API's, not train's Ray address; its help says so.
    (address,) = [p for p in submit.params if p.name == "address"]
    assert "Jobs API" in (address.help or "")


def test_options_set_reach_the_job_and_defaults_stay_out() -> None:
    params = _forwarded_to_train(
        [
            *("--epochs", "3", "--hidden-sizes", "64,32", "--no-eval-every-epoch"),
            *("--optimizer", "momentum", "--data-dir", "s3://bucket/mnist"),
            *("--data-transport", "object-store", "--lr", "0.05"),
        ]
    )
    assert params["epochs"] == 3
    assert params["hidden_sizes"] == (64, 32)
    assert params["eval_every_epoch"] is False
    assert params["optimizer"] == "momentum"
    assert params["data_dir"] == "s3://bucket/mnist"
    assert params["data_transport"] == "object-store"
    assert params["learning_rate"] == 0.05
    assert params["as_json"] is True  # the job's last log line is its summary
    line = params["_line"]
    # Untouched options are left to the job's defaults, so the line says what was chosen.
    assert "--batch-size" not in line and "--seed" not in line and "--address" not in line
    # Without --run-dir the run goes where the head's shell puts $DTRAIN_RUNS_DIR.
    assert params["run_dir"] == Path("${DTRAIN_RUNS_DIR:-$HOME/dtrain-runs}/dtrain-test-0001")


def test_job_file_options_reach_the_job_and_the_command_line_wins(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        '[train]\nepochs = 2\nbatch-size = 256\nhidden-sizes = [128]\nrun-dir = "/data/r1"\n'
    )
    params = _forwarded_to_train(["--config", str(job), "--epochs", "4", "--", "--seed", "7"])
    assert params["epochs"] == 4
    assert params["batch_size"] == 256
    assert params["hidden_sizes"] == (128,)
    assert params["run_dir"] == Path("/data/r1")
    assert params["seed"] == 7  # words after -- pass through verbatim
    assert "DTRAIN_RUNS_DIR" not in params["_line"]


def test_words_are_quoted_for_the_heads_shell() -> None:
    assert _forwarded_to_train(["--run-dir", "/tmp/a b; rm -rf x"])["run_dir"] == Path(
        "/tmp/a b; rm -rf x"
    )


@pytest.mark.parametrize("key", ["wait", "address", "entrypoint-num-cpus"])
def test_job_file_holds_train_options_only(tmp_path: Path, key: str) -> None:
    job = tmp_path / "job.toml"
    job.write_text(f"[train]\n{key} = 1\n")
    code, output, _ = run(["submit", "--config", str(job)])
    assert code == 2 and f"unknown option {key!r}" in output


# --- what travels -------------------------------------------------------------------------


def test_staged_working_dir_holds_what_a_job_needs_only(tmp_path: Path) -> None:
    from dtrain.service.jobs.staging import stage_working_dir

    staged = stage_working_dir(tmp_path / "wd")
    assert {p.name for p in staged.iterdir()} == {"dtrain"}
    assert {p.name for p in (staged / "dtrain").iterdir()} == {"service", "workers", "cli", "data"}
    assert (staged / "dtrain" / "cli" / "main.py").is_file()
    assert sorted(p.name for p in (staged / "dtrain" / "data" / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    files = [p for p in staged.rglob("*") if p.is_file()]
    assert not [p for p in files if "__pycache__" in p.parts or p.suffix == ".pyc"]
    assert sum(p.stat().st_size for p in files) < 20 * 2**20  # Ray's cap is 500 MiB


def test_submission_ids_are_readable_and_unique() -> None:
    from dtrain.service.jobs.client import new_submission_id

    ids = {new_submission_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"dtrain-\d{8}-\d{6}-[0-9a-f]{4}", i) for i in ids)


def test_human_output() -> None:
    from dtrain.service.jobs.format import format_record, format_table
    from dtrain.service.jobs.record import JobRecord

    done = JobRecord(
        submission_id="dtrain-1",
        status="FAILED",
        entrypoint="python -m dtrain.cli.main train " + "--epochs 1 " * 20,
        message="Job entrypoint command failed with exit code 1, last available logs:\nError: x",
        start_time=1_000_000.0,
        end_time=1_000_075.0,
        driver_exit_code=1,
    )
    header, row = format_table([done]).splitlines()
    assert header.split()[:2] == ["JOB", "ID"]
    assert row.split()[:2] == ["dtrain-1", "FAILED"] and "1m15s" in row and row.endswith("...")
    status = format_record(done)
    assert status.splitlines()[0] == "dtrain-1: FAILED"
    # A multi-line message is shown by its first line; `jobs logs` has the rest.
    assert "message     Job entrypoint command failed with exit code 1" in status
    assert "Error: x" not in status
    assert format_table([]) == "no jobs"
    assert done.to_dict()["duration_seconds"] == 75.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
