"""Checkpoints round-trip, refuse pickles and damage, and are written atomically."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from dtrain.service.errors import DtrainError
from dtrain.service.train import checkpoint
from dtrain.workers.model import ModelSpec, init_params

SPEC = ModelSpec(input_size=6, hidden_sizes=(4,), num_classes=3)


def sample(tmp_path: Path) -> tuple[Path, checkpoint.Checkpoint]:
    ckpt = checkpoint.Checkpoint(
        spec=SPEC,
        params=init_params(SPEC, 0),
        velocity=np.full(SPEC.num_params, 0.5, np.float32),
        meta={"step": 12},
    )
    path = tmp_path / "c.npz"
    checkpoint.save(path, ckpt)
    return path, ckpt


def test_round_trip(tmp_path: Path) -> None:
    path, ckpt = sample(tmp_path)
    back = checkpoint.load(path)
    assert back.spec == SPEC and back.meta == {"step": 12}
    np.testing.assert_array_equal(back.params, ckpt.params)
    np.testing.assert_array_equal(back.velocity, ckpt.velocity)
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temp files left


def test_pickled_payload_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # runs on unpickling
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.npz"
    header = json.dumps(
        {
            "format": "dtrain-checkpoint",
            "version": 1,
            "input_size": 6,
            "hidden_sizes": [4],
            "num_classes": 3,
        }
    ).encode()
    np.savez(path, header=np.frombuffer(header, np.uint8), params=np.array([Evil()], dtype=object))
    with pytest.raises(DtrainError, match="pickled"):
        checkpoint.load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], "not a readable"),
        (lambda b: b"", "not a readable"),
        (lambda b: b"hello" * 10, "not a readable"),
    ],
)
def test_damaged_files_are_refused(tmp_path: Path, damage, message: str) -> None:
    path, _ = sample(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DtrainError, match=message):
        checkpoint.load(path)


def rewrite(path: Path, **changes) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["header"].tobytes())
    header.update(changes.pop("header", {}))
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def test_wrong_version_and_shape_are_named(tmp_path: Path) -> None:
    path, _ = sample(tmp_path)
    rewrite(path, header={"version": 99})
    with pytest.raises(DtrainError, match="version 99"):
        checkpoint.load(path)
    path, _ = sample(tmp_path)
    rewrite(path, header={"hidden_sizes": [5]})
    with pytest.raises(DtrainError, match="params is float32"):
        checkpoint.load(path)
    path, _ = sample(tmp_path)
    rewrite(path, params=np.full(SPEC.num_params, np.nan, np.float32))
    with pytest.raises(DtrainError, match="non-finite"):
        checkpoint.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DtrainError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.npz")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path, ckpt = sample(tmp_path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(DtrainError, match="No space left"):
        checkpoint.save(path, ckpt)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/dtrain-cannot-write/c.npz")  # root ignores mode bits
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = ro / "c.npz"
    _, ckpt = sample(tmp_path)
    with pytest.raises(DtrainError, match="cannot write checkpoint"):
        checkpoint.save(target, ckpt)
