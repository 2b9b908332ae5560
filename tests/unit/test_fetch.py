"""`dtrain jobs fetch`'s two ends without a cluster: what the helper packs and prints on the node,
and what the client checks and unpacks (whole, inside the new directory, or not at all)."""

from __future__ import annotations

import io
import shlex
import tarfile
from pathlib import Path

import pytest

from dtrain.service.errors import DtrainError
from dtrain.service.jobs.fetch import (
    archive_from_logs,
    archive_lines,
    helper_command,
    pack_run_dir,
    unpack,
)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "dtrain-runs" / "dtrain-1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text('{"data_dir": "/data"}')
    (run / "checkpoint.npz").write_bytes(bytes(range(256)) * 400)
    (run / "history.jsonl").write_text('{"step": 1}\n')
    (run / "summary.json").write_text('{"test_accuracy": 0.9}')
    (run / "checkpoints" / "step-000200.npz").write_bytes(b"s" * 1000)
    (run / ".checkpoint.npz.abc.tmp").write_bytes(b"half")
    return run


def logs_of(payload: bytes) -> str:
    """The helper job's logs as the Jobs API returns them: Ray's lines around its output."""
    return "\n".join(
        [
            "2026-11-23 16:58:38,902\tINFO job_manager.py:581 -- Runtime env is setting up.",
            "Running entrypoint for job dtrain-1-fetch-ab12: python -c ...",
            *archive_lines(payload),
            "",
        ]
    )


def test_round_trip_brings_the_run_without_step_checkpoints(run_dir: Path, tmp_path: Path) -> None:
    ok, payload = pack_run_dir(str(run_dir), everything=False)
    assert ok and isinstance(payload, bytes)
    dest = tmp_path / "here" / "dtrain-1"
    names = unpack(archive_from_logs(logs_of(payload), "dtrain-1"), dest)
    assert sorted(names) == ["checkpoint.npz", "config.json", "history.jsonl", "summary.json"]
    for name in names:
        assert (dest / name).read_bytes() == (run_dir / name).read_bytes()
    assert not (dest / "checkpoints").exists()
    assert [p.name for p in dest.parent.iterdir()] == ["dtrain-1"]  # no temporary left


def test_all_brings_the_step_checkpoints(run_dir: Path, tmp_path: Path) -> None:
    ok, payload = pack_run_dir(str(run_dir), everything=True)
    assert ok and isinstance(payload, bytes)
    dest = tmp_path / "all"
    unpack(archive_from_logs(logs_of(payload), "dtrain-1"), dest)
    assert (dest / "checkpoints" / "step-000200.npz").read_bytes() == b"s" * 1000
    assert not (dest / ".checkpoint.npz.abc.tmp").exists()


def test_what_is_not_a_run_is_said_by_the_helper(tmp_path: Path) -> None:
    assert pack_run_dir(str(tmp_path / "gone"), everything=False) == (
        False,
        f"{tmp_path / 'gone'} is not a directory on the node the job ran on",
    )
    assert pack_run_dir(str(tmp_path), everything=False)[0] is False
    logs = "Running entrypoint ...\nError: /root/x is not a directory on the node the job ran on\n"
    with pytest.raises(DtrainError, match="fetching the run of job j: /root/x is not a dir"):
        archive_from_logs(logs, "j")
    with pytest.raises(DtrainError, match=r"printed no archive \(ModuleNotFoundError: No mod"):
        archive_from_logs("Traceback ...\nModuleNotFoundError: No module named 'ray'\n", "j")


def test_a_damaged_archive_is_refused(run_dir: Path) -> None:
    _, payload = pack_run_dir(str(run_dir), everything=False)
    assert isinstance(payload, bytes)
    lines = logs_of(payload).splitlines()
    body = lines[3]
    lines[3] = ("A" if body[0] != "A" else "B") + body[1:]
    with pytest.raises(DtrainError, match="arrived damaged"):
        archive_from_logs("\n".join(lines), "dtrain-1")
    cut = [line for line in logs_of(payload).splitlines() if line != "dtrain-fetch-end"]
    with pytest.raises(DtrainError, match="damaged archive"):
        archive_from_logs("\n".join(cut), "dtrain-1")


def test_an_archive_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    dest = tmp_path / "run"
    with pytest.raises(DtrainError, match="cannot unpack the run into"):
        unpack(buf.getvalue(), dest)
    assert not (tmp_path / "escaped.txt").exists() and not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_an_existing_destination_is_never_overwritten(run_dir: Path, tmp_path: Path) -> None:
    _, payload = pack_run_dir(str(run_dir), everything=False)
    assert isinstance(payload, bytes)
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "keep").write_text("x")
    with pytest.raises(DtrainError, match="already exists"):
        unpack(payload, dest)
    assert [p.name for p in dest.iterdir()] == ["keep"]


def test_the_helper_command_is_one_shell_word_list_of_valid_python() -> None:
    cmd = helper_command("/opt/venv/bin/python", "/root/dtrain-runs/it's here", "ab" * 28, True)
    python, flag, code, run, node, everything = shlex.split(cmd)
    assert (python, flag, run, node, everything) == (
        "/opt/venv/bin/python",
        "-c",
        "/root/dtrain-runs/it's here",
        "ab" * 28,
        "1",
    )
    compile(code, "<helper>", "exec")
    assert "def pack_run_dir" in code and "def archive_lines" in code
