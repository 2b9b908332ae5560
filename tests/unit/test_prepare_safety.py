"""`dtrain data prepare` never deletes what it did not write: --force replaces only a dtrain
dataset, concurrent prepares cannot replace each other's finished work, and the work folders
of a killed prepare are swept by the next one."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from dtrain.cli.data_cmds import data
from dtrain.service.data import dataset, outdir
from dtrain.service.data import prepare as prepare_module
from dtrain.service.errors import DtrainError


@pytest.fixture
def source(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8),
        y_train=(np.arange(20) % 10).astype(np.uint8),
        x_test=rng.integers(0, 256, size=(6, 784), dtype=np.uint8),
        y_test=(np.arange(6) % 10).astype(np.uint8),
    )
    return path


def prepare(source: Path, out: Path, *extra: str) -> Result:
    args = ["prepare", "--source", str(source), "--out", str(out), "--num-shards", "2"]
    return CliRunner().invoke(data, [*args, "--num-test-shards", "1", *extra])


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def users_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\documentclass{article}\n")
    (folder / "sub" / "notes.txt").write_text("notes\n")
    return folder


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_of_the_users_files_is_never_replaced(
    tmp_path: Path, source: Path, force: bool
) -> None:
    folder = users_folder(tmp_path)
    before = tree(folder)
    line = one_error_line(prepare(source, folder, *(["--force"] if force else [])))
    assert "sub, thesis.tex" in line and "would be lost" in line
    assert "--force" not in line  # never suggest the option that would delete them
    assert tree(folder) == before


def test_force_refuses_a_dataset_with_a_users_file_added(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "out"
    assert prepare(source, out).exit_code == 0
    (out / "notes.txt").write_text("mine\n")
    before = tree(out)
    line = one_error_line(prepare(source, out, "--force"))
    assert "notes.txt" in line and "--force" not in line
    assert tree(out) == before


def test_a_foreign_manifest_json_is_not_dtrains(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my web app"}')
    line = one_error_line(prepare(source, out, "--force"))
    assert "manifest.json" in line and "not a dtrain dataset" in line
    assert (out / "manifest.json").read_text() == '{"name": "my web app"}'


def test_force_replaces_a_dtrain_dataset(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "out"
    assert prepare(source, out).exit_code == 0
    result = prepare(source, out, "--force")
    assert result.exit_code == 0, result.output
    dataset.verify(out, dataset.read_manifest(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.npz", "out"]


def test_a_finished_dataset_is_not_replaced_at_rename_time(tmp_path: Path, source: Path) -> None:
    # What the later of two concurrent prepares meets: the folder it checked as absent now holds
    # the other's finished dataset when its own is ready to move in.
    out = tmp_path / "out"
    assert prepare(source, out).exit_code == 0
    before = tree(out)
    tmp = tmp_path / f".out.tmp-{1}"
    tmp.mkdir()
    (tmp / "manifest.json").write_text("{}")
    with pytest.raises(DtrainError, match="prepared by another process meanwhile"):
        prepare_module._install(tmp, out, force=False)
    assert tree(out) == before


def test_concurrent_prepares_leave_one_dataset_and_one_winner(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "out"
    args = [sys.executable, "-m", "dtrain.cli.main", "data", "prepare", "--source", str(source)]
    args += ["--out", str(out), "--num-shards", "2", "--num-test-shards", "1"]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 1, 1], results
    for code, _, err in results:
        if code:
            assert err.count("Error:") == 1 and "Traceback" not in err, err
            assert "prepared" in err, err
    dataset.verify(out, dataset.read_manifest(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.npz", "out"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_work_folders_of_a_killed_prepare_are_swept(tmp_path: Path, source: Path) -> None:
    pid = dead_pid()
    stale = tmp_path / f".out.tmp-{pid}"
    stale.mkdir()
    (stale / "train-00000-of-00002.arrow").write_bytes(b"x" * 1000)
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a live process: still working
    live.mkdir()
    other = tmp_path / f".elsewhere.tmp-{pid}"  # another --out's: not ours to judge here
    other.mkdir()
    kept = tmp_path / f".out.tmp-{dead_pid()}"  # holds a file dtrain never writes
    kept.mkdir()
    (kept / "mine.txt").write_text("keep me\n")
    result = prepare(source, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert live.is_dir() and other.is_dir()
    assert (kept / "mine.txt").read_text() == "keep me\n"


def test_a_stale_old_folder_is_kept_when_it_is_the_only_dataset(
    tmp_path: Path, source: Path
) -> None:
    # A --force prepare killed between its two renames: the old dataset is all there is.
    old = tmp_path / f".out.old-{dead_pid()}"
    assert prepare(source, old).exit_code == 0
    before = tree(old)
    outdir.sweep_stale_tmp(tmp_path / "out")
    assert tree(old) == before
