"""Checkpoints: NumPy ``.npz`` of plain float32 arrays plus a JSON header; never pickle.

Written atomically (temporary file, fsync, rename, fsync of the directory), so a crash at any
point leaves either the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dtrain.service.data import npzsafe
from dtrain.service.errors import DtrainError
from dtrain.workers.model import ModelSpec
from dtrain.workers.shards import one_line

FORMAT = "dtrain-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    spec: ModelSpec
    params: np.ndarray
    velocity: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Bounded-staleness runs: the weights after the last k updates before ``params``, (k, P).
    history: np.ndarray | None = None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, ckpt: Checkpoint) -> None:
    header = {
        "format": FORMAT,
        "version": VERSION,
        "input_size": ckpt.spec.input_size,
        "hidden_sizes": list(ckpt.spec.hidden_sizes),
        "num_classes": ckpt.spec.num_classes,
        "meta": ckpt.meta,
    }
    arrays: dict[str, np.ndarray] = {
        "header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        "params": np.ascontiguousarray(ckpt.params, dtype=np.float32),
    }
    if ckpt.velocity is not None:
        arrays["velocity"] = np.ascontiguousarray(ckpt.velocity, dtype=np.float32)
    if ckpt.history is not None:
        arrays["history"] = np.ascontiguousarray(ckpt.history, dtype=np.float32)
    buf = io.BytesIO()
    # NumPy's stub checks **kwds against savez's own allow_pickle: bool too.
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise DtrainError(f"cannot write checkpoint {path}: {e.strerror or e}") from e


# A checkpoint's arrays: weights, velocity and up to MAX_STALENESS copies of the weights.
MAX_ARRAY_BYTES = 4 << 30


def load(path: Path) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        raise DtrainError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        # A FIFO or a device exists but is no checkpoint: "does not exist" would puzzle.
        what = "is not a regular file" if path.exists() else "does not exist"
        raise DtrainError(f"checkpoint {path} {what}")
    try:
        # Checked member by member, never unpickled: see service/data/npzsafe.py.
        arrays = npzsafe.read_all(path, MAX_ARRAY_BYTES)
    except npzsafe.NpzProblem as e:
        if e.pickled:
            raise DtrainError(f"checkpoint {path} holds pickled objects, refused ({e})") from None
        raise DtrainError(f"checkpoint {path} is not a readable .npz file: {e}") from None
    if "header" not in arrays or "params" not in arrays:
        raise DtrainError(f"checkpoint {path} lacks its header or params array")
    if arrays["header"].dtype != np.uint8 or arrays["header"].ndim != 1:
        raise DtrainError(f"checkpoint {path} has a corrupt header: not a byte string")
    try:
        header = json.loads(arrays["header"].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DtrainError(f"checkpoint {path} has a corrupt header: {one_line(e)}") from None
    if not isinstance(header, dict):
        raise DtrainError(
            f"checkpoint {path} has a corrupt header: a JSON {type(header).__name__}, not an object"
        )
    if header.get("format") != FORMAT:
        raise DtrainError(f"checkpoint {path} is not a dtrain checkpoint")
    if header.get("version") != VERSION:
        raise DtrainError(
            f"checkpoint {path} has format version {header.get('version')!r}, this dtrain reads "
            f"version {VERSION}"
        )
    try:
        spec = ModelSpec(
            input_size=header["input_size"],
            hidden_sizes=header["hidden_sizes"],
            num_classes=header["num_classes"],
        )
    except KeyError as e:
        raise DtrainError(f"checkpoint {path}: header lacks {e}") from None
    except (TypeError, ValueError) as e:
        raise DtrainError(f"checkpoint {path}: header field {one_line(e)}") from None
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise DtrainError(f"checkpoint {path}: header field meta must be an object, got {meta!r}")
    params = arrays["params"]
    velocity = arrays.get("velocity")
    for name, arr in (("params", params), ("velocity", velocity)):
        if arr is not None and (arr.dtype != np.float32 or arr.shape != (spec.num_params,)):
            raise DtrainError(
                f"checkpoint {path}: {name} is {arr.dtype}{list(arr.shape)}, expected "
                f"float32[{spec.num_params}] for layers {spec.layer_shapes}"
            )
    history = arrays.get("history")
    if history is not None and (
        history.dtype != np.float32 or history.ndim != 2 or history.shape[1] != spec.num_params
    ):
        raise DtrainError(f"checkpoint {path}: history is {history.dtype}{list(history.shape)}")
    # A non-finite velocity or stale copy would resume into NaN weights a step later and be
    # blamed on the learning rate: refuse it here, by file.
    for name, arr in (("weights", params), ("velocity", velocity), ("history", history)):
        if arr is not None and not np.isfinite(arr).all():
            raise DtrainError(f"checkpoint {path} holds non-finite {name}")
    return Checkpoint(spec=spec, params=params, velocity=velocity, meta=meta, history=history)
