"""Cluster-job traps a new user fell into (issue 16), each now one line or gone: a dashboard port
given without http://, a port that is no Ray port, a misleading token message, a job whose node
`python` lacks dtrain's dependencies, `--json --json`, submit's run-dir help, the start line's
step count under --max-steps, and a jobs table that showed no run dir or accuracy."""

from __future__ import annotations

import http.server
import io
import os
import shlex
import socket
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from dtrain.cli import job_entry
from dtrain.cli.main import cli
from dtrain.service.errors import DtrainError
from dtrain.service.jobs.client import JobsClient
from dtrain.service.jobs.endpoint import token_mode
from dtrain.service.jobs.format import format_record, format_table
from dtrain.service.jobs.record import JobRecord
from dtrain.service.jobs.results import run_facts
from dtrain.service.observe.progress import ConsoleProgress
from dtrain.service.observe.stats import JobInfo

ROOT = Path(__file__).resolve().parents[2]


def one_line_error(args: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    result = CliRunner().invoke(cli, args)
    seconds = time.perf_counter() - start
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0], seconds


@pytest.fixture
def http_port() -> Iterator[int]:
    """An HTTP server on loopback, as a Ray dashboard is (it answers 401 without a token)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (no Ray service does that)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


def test_a_dashboard_port_without_scheme_fails_at_once(http_port: int) -> None:
    line, seconds = one_line_error(["jobs", "list", "--address", f"127.0.0.1:{http_port}"])
    assert line == (
        f"Error: 127.0.0.1:{http_port} (from --address) is an HTTP port, not a cluster (GCS) "
        f"address: for the Jobs API write http://127.0.0.1:{http_port}"
    )
    assert seconds < 5  # Ray's own lookup waited ~40 s here, then printed an RpcError traceback


def test_a_port_that_speaks_nothing_fails_within_seconds(silent_port: int) -> None:
    line, seconds = one_line_error(["jobs", "list", "--address", f"127.0.0.1:{silent_port}"])
    assert "is not a Ray port" in line and "http://HEAD:8265" in line
    assert seconds < 8


def client_without_cluster(token: str | None, source: str) -> JobsClient:
    client = JobsClient.__new__(JobsClient)
    client.token, client.token_source, client.url = token, source, "http://head:8265"
    return client


def test_token_messages_say_what_was_sent() -> None:
    from ray.exceptions import AuthenticationError

    denied = AuthenticationError("RPC error: InvalidAuthToken: token is missing or incorrect")
    with (
        pytest.raises(DtrainError) as sent,
        client_without_cluster("x", "$RAY_AUTH_TOKEN")._errors("listing jobs"),
    ):
        raise denied
    # Was: "requires a token and $RAY_AUTH_TOKEN was found: set RAY_AUTH_TOKEN".
    assert str(sent.value) == (
        "the Ray cluster at http://head:8265 rejected the token from $RAY_AUTH_TOKEN: it is not "
        "this cluster's token"
    )
    with (
        pytest.raises(DtrainError) as none,
        client_without_cluster(None, "no token")._errors("listing jobs"),
    ):
        raise denied
    assert "requires a token and no token was found: set RAY_AUTH_TOKEN" in str(none.value)
    with (
        pytest.raises(DtrainError) as disabled,
        client_without_cluster(None, "RAY_AUTH_MODE=disabled")._errors("listing jobs"),
    ):
        raise denied
    assert "none is sent (RAY_AUTH_MODE=disabled)" in str(disabled.value)


def test_token_mode_is_set_for_rays_own_lookup_and_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray._raylet import AuthenticationMode, get_authentication_mode

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    before = get_authentication_mode()
    with token_mode("a-token"):
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert get_authentication_mode() == AuthenticationMode.TOKEN
    assert "RAY_AUTH_MODE" not in os.environ and get_authentication_mode() == before
    with token_mode(None):
        assert "RAY_AUTH_MODE" not in os.environ
    # A mode the user chose is theirs.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with token_mode("a-token"):
        assert os.environ["RAY_AUTH_MODE"] == "disabled"


# --- the job's entrypoint --------------------------------------------------------------------


def entrypoint(*args: str) -> str:
    from dtrain.cli.jobs_cmds import FORWARDED_NAMES, build_entrypoint

    ctx = cli.commands["submit"].make_context("submit", list(args))
    extra = tuple(ctx.params["train_args"])
    return build_entrypoint(ctx, FORWARDED_NAMES, "dtrain-x", extra, ctx.params["python"])


def test_json_is_asked_for_once() -> None:
    assert shlex.split(entrypoint("--epochs", "1", "--", "--json")).count("--json") == 1
    assert shlex.split(entrypoint("--epochs", "1")).count("--json") == 1


def test_the_entrypoint_checks_its_python_and_can_name_another() -> None:
    words = shlex.split(entrypoint())
    assert words[:4] == ["python", "-m", "dtrain.cli.job_entry", "train"]
    words = shlex.split(entrypoint("--python", "/opt/dtrain/.venv/bin/python"))
    assert words[:3] == ["/opt/dtrain/.venv/bin/python", "-m", "dtrain.cli.job_entry"]


def test_a_python_without_dtrains_dependencies_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(job_entry.REQUIRED, "no_such_module_for_dtrain", "pyarrow")
    monkeypatch.setattr(job_entry.shutil, "which", lambda name: sys.executable)
    with pytest.raises(SystemExit) as exit_:
        job_entry.main()
    assert exit_.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("Error: the python running this job (") and "lacks pyarrow" in line
    assert "the first on the PATH of the node's Ray" in line
    assert "dtrain submit --python" in line


def test_a_python_named_by_submit_python_is_not_called_the_paths(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`submit --python /usr/bin/python3` on a node whose PATH has the venv's python: the line
    named the PATH, whose python was never used."""
    monkeypatch.setitem(job_entry.REQUIRED, "no_such_module_for_dtrain", "pyarrow")
    monkeypatch.setattr(job_entry.shutil, "which", lambda name: "/opt/dtrain/.venv/bin/python")
    with pytest.raises(SystemExit) as exit_:
        job_entry.main()
    assert exit_.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"({sys.executable}, from `dtrain submit --python`) lacks pyarrow" in line
    assert "PATH" not in line


def test_the_entry_check_covers_what_train_needs() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].strip() for d in deps}
    # matplotlib (report) and pillow (predict) are not imported by `dtrain train`.
    assert set(job_entry.REQUIRED.values()) == names - {"matplotlib", "pillow"}
    assert job_entry.problems() == []


def test_submit_help_names_the_jobs_run_dir() -> None:
    result = CliRunner().invoke(cli, ["submit", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "$DTRAIN_RUNS_DIR/<job id>" in result.output
    assert "runs/<time>-<id>" not in result.output


def test_the_start_line_counts_the_steps_it_will_make() -> None:
    def start_line(total_steps: int) -> str:
        out = io.StringIO()
        ConsoleProgress(stream=out).on_start(
            JobInfo(
                version="0",
                run_dir="r",
                num_workers=2,
                batch_size=128,
                optimizer="nesterov",
                learning_rate=0.1,
                momentum=0.9,
                epochs=1,
                steps_per_epoch=469,
                hidden_sizes=(512,),
                num_params=1,
                num_train_samples=60000,
                num_test_samples=10000,
                total_steps=total_steps,
            )
        )
        return out.getvalue()

    assert "30 steps (--max-steps) of 1 epoch x 469 steps" in start_line(30)
    assert ", 1 epoch x 469 steps," in start_line(469)


# --- the jobs table ------------------------------------------------------------------------

LOGS = """\
2026-11-23 16:58:38,902	INFO job_manager.py:581 -- Runtime env is setting up.
Running entrypoint for job dtrain-1: python -m dtrain.cli.job_entry train --json
dtrain: 1 workers, batch 128, 1 epochs x 469 steps, nesterov lr 0.1, 407,050 parameters; \
run dir /root/dtrain-runs/dtrain-1
epoch 1/2  loss 2.0822 acc 0.3281  test loss 1.7509 acc 0.4742  3,201 samples/s  0.1s
"""
SUMMARY = (
    '{"test_accuracy": 0.8123, "test_loss": 0.5, "checkpoint": '
    '"/root/dtrain-runs/dtrain-1/checkpoint.npz"}\n'
)


def test_run_facts_from_a_running_and_a_finished_job() -> None:
    running = run_facts(LOGS)
    assert (running.run_dir, running.test_accuracy, running.epoch) == (
        "/root/dtrain-runs/dtrain-1",
        0.4742,
        "1/2",
    )
    done = run_facts(LOGS + "epoch 2/2  loss 1 acc 0.8  test loss 0.5 acc 0.8123  1 samples/s\n")
    assert done.test_accuracy == 0.8123
    assert run_facts(LOGS + SUMMARY).test_accuracy == 0.8123
    assert run_facts("Error: the python running this job lacks pyarrow\n").run_dir is None


def test_jobs_table_shows_run_dir_and_accuracy() -> None:
    ours = JobRecord(
        submission_id="dtrain-1",
        status="SUCCEEDED",
        entrypoint="python -m dtrain.cli.job_entry train " + "--epochs 1 " * 20,
        start_time=1_000_000.0,
        end_time=1_000_014.0,
        run_dir="/root/dtrain-runs/dtrain-1",
        test_accuracy=0.8123,
        epoch="2/2",
    )
    other = JobRecord(submission_id="other", status="FAILED", entrypoint="echo hi")
    header, row, plain = format_table([ours, other]).splitlines()
    assert "EPOCH" in header and "TEST ACC" in header
    assert header.endswith("RUN DIR (or ENTRYPOINT)")
    assert format_table([ours]).splitlines()[0].endswith("  RUN DIR")
    assert row.split()[-3:] == ["2/2", "0.8123", "/root/dtrain-runs/dtrain-1"]
    assert plain.endswith("echo hi")
    status = format_record(ours)
    assert "run dir     /root/dtrain-runs/dtrain-1" in status
    assert "test acc    0.8123" in status
