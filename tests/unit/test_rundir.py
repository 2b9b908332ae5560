"""A run directory belongs to one run: refused when it holds one, locked while in use, checked
before Ray; a killed run's temporary files swept and its history cut back on resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtrain.service.errors import DtrainError
from dtrain.service.train.rundir import LOCK_FILE, RunDirLock, cut_history


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


MOUNTS: list[Path] = []


def mounted_tmpfs(path: Path, options: str) -> Path:
    """A real small or read-only filesystem (tmpfs); skipped where mounting is not allowed."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    MOUNTS.append(path)
    return path


@pytest.fixture(autouse=True)
def unmount() -> Iterator[None]:
    yield
    while MOUNTS:
        subprocess.run(["umount", str(MOUNTS.pop())], check=True)


def fill(path: Path) -> None:
    """Fill a filesystem to the last block."""
    with (path / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def earlier_run(path: Path) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoint.npz").write_bytes(b"weights of the earlier run")
    (path / "history.jsonl").write_text('{"kind": "step", "step": 1}\n')
    return path


def test_a_directory_holding_a_run_is_refused_and_left_alone(tmp_path: Path) -> None:
    run = earlier_run(tmp_path / "run")
    before = tree(tmp_path)
    with pytest.raises(DtrainError, match=r"already holds a run .*--resume .*--overwrite"):
        RunDirLock(run).claim()
    assert tree(tmp_path) == before


def test_overwrite_moves_the_earlier_run_aside_and_deletes_nothing(tmp_path: Path) -> None:
    run = earlier_run(tmp_path / "run")
    before = tree(run)
    with RunDirLock(run, overwrite=True) as claim:
        assert claim.moved_to is not None and claim.moved_to.name.startswith("run.old-")
        assert tree(claim.moved_to) == before
        assert [p.name for p in run.iterdir()] == [LOCK_FILE]


def test_resume_needs_a_run_to_resume(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DtrainError, match="nothing to resume"):
        RunDirLock(tmp_path / "empty", resume=True).claim()
    with pytest.raises(DtrainError, match="does not exist"):
        RunDirLock(tmp_path / "nope", resume=True).claim()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_a_live_run_holds_its_directory_and_the_second_is_told_by_whom(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunDirLock(run):
        with pytest.raises(DtrainError, match=rf"in use by a running dtrain \(pid {os.getpid()} "):
            RunDirLock(run).claim()
        # Even --resume of a run being written is refused: two drivers, one set of files.
        earlier_run(run / "sub")
        with pytest.raises(DtrainError, match="in use"):
            RunDirLock(run, resume=True).claim()
    # Released: nothing of the lock is left.
    assert not (run / LOCK_FILE).exists()


HOLDER = """
import sys, time
from pathlib import Path
from dtrain.service.train.rundir import RunDirLock
RunDirLock(Path(sys.argv[1])).claim()
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    """The kernel drops an flock with its holder, however that dies (here SIGKILL)."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DtrainError, match=rf"pid {holder.pid} on "):
            RunDirLock(run).claim()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert (run / LOCK_FILE).exists()  # the file stays; its lock went with the process
    with RunDirLock(run):
        pass


@pytest.mark.parametrize(
    "where, says",
    [
        (lambda f: f, "is a file, not a directory"),
        (lambda f: f / "sub" / "run", "is under"),
    ],
    ids=["is-a-file", "under-a-file"],
)
def test_a_path_that_cannot_be_a_directory(tmp_path: Path, where, says: str) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    with pytest.raises(DtrainError, match=says):
        RunDirLock(where(f)).claim()
    assert f.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_read_only_filesystem_is_one_line_before_anything(tmp_path: Path) -> None:
    ro = mounted_tmpfs(tmp_path / "ro", "ro")
    with pytest.raises(DtrainError, match=r"is on a read-only filesystem"):
        RunDirLock(ro / "a" / "run").claim()
    assert list(ro.iterdir()) == []


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    full = mounted_tmpfs(tmp_path / "full", "size=64k")
    fill(full)
    before = tree(full)
    with pytest.raises(DtrainError, match="no space left"):
        RunDirLock(full / "run").claim()
    assert tree(full) == before


def test_released_claim_leaves_a_tree_it_made_as_it_was(tmp_path: Path) -> None:
    claim = RunDirLock(tmp_path / "x" / "y" / "run").claim()
    assert (tmp_path / "x" / "y" / "run" / LOCK_FILE).exists()
    claim.release()
    assert list(tmp_path.iterdir()) == []


def test_sweep_takes_only_dtrains_own_temporary_names(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = [
        run / ".checkpoint.npz.k3j_x9aQ.tmp",  # a SIGKILL during the final checkpoint
        run / ".summary.json.abcdefgh.tmp",
        run / "checkpoints" / ".step-00000040.npz.a1b2c3d4.tmp",
    ]
    kept = [
        run / "checkpoints" / "step-00000040.npz",
        run / ".checkpoint.npz.mine.tmp",  # not mkstemp's eight characters
        run / "notes.tmp",
        run / ".bashrc.abcdefgh.tmp",
    ]
    for p in stale + kept:
        p.write_bytes(b"x")
    with RunDirLock(run, resume=True) as claim:
        removed = claim.sweep_stale_tmp()
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def history_lines(*records: object) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def test_history_is_cut_back_to_the_checkpoint_a_resume_starts_from(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    steps = [{"kind": "step", "step": s, "loss": 1.0 / s} for s in range(1, 8)]
    epoch1 = {"kind": "epoch", "epoch": 1, "steps": 3}
    epoch2 = {"kind": "epoch", "epoch": 2, "steps": 6}
    body = history_lines(*steps[:3], epoch1, *steps[3:6], epoch2, steps[6])
    path.write_bytes(body + b'{"kind": "step", "st')  # the kill tore the last line
    cut_history(path, step=4, epochs={1})
    assert path.read_bytes() == history_lines(*steps[:3], epoch1, steps[3])
    # Nothing past the checkpoint: left exactly as it is.
    cut_history(path, step=4, epochs={1})
    assert path.read_bytes() == history_lines(*steps[:3], epoch1, steps[3])
    cut_history(tmp_path / "absent.jsonl", step=4, epochs=set())
    assert not (tmp_path / "absent.jsonl").exists()


def test_history_cut_drops_records_of_the_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    good = {"kind": "step", "step": 1}
    path.write_bytes(
        history_lines(good, [1, 2], {"kind": ["step"]}, {"kind": "step", "step": "2"})
        + history_lines({"kind": "step", "step": True}, {"kind": "other", "other": 1})
    )
    cut_history(path, step=10, epochs=set())
    assert path.read_bytes() == history_lines(good)
