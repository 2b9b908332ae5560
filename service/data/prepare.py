"""Writing a source as Arrow IPC shards plus a manifest, atomically, and finding or making the
dataset a command reads.

The shards are written into a work folder beside ``OUT`` and renamed into place with the
manifest written last, so ``OUT`` appears complete or not at all (what may be replaced there:
service/data/outdir.py).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dtrain.service.data import outdir, tables
from dtrain.service.data.manifest import (
    FORMAT,
    MANIFEST_NAME,
    SPLITS,
    VERSION,
    read_manifest,
    sha256_file,
)
from dtrain.service.data.sources import EMBEDDED_SOURCE, load_source
from dtrain.service.data.validate import Split, source_format
from dtrain.service.errors import DtrainError
from dtrain.service.net import split_url
from dtrain.service.paths import check_utf8, file_in_the_way
from dtrain.workers.shardformat import ShardFormat
from dtrain.workers.shards import one_line


def default_data_dir() -> Path:
    """``$DTRAIN_DATA_DIR`` if set, else ``~/.cache/dtrain/mnist``."""
    env = os.environ.get("DTRAIN_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dtrain" / "mnist"


def prepare(
    out_dir: Path,
    *,
    source: str | Path | None = None,
    num_shards: int = 8,
    num_test_shards: int = 2,
    force: bool = False,
    num_classes: int | None = None,
    columns: tables.Columns | None = None,
) -> dict[str, Any]:
    """Write ``out_dir`` as Arrow shards plus manifest.json, atomically; return the manifest.

    ``num_classes`` states K (else the largest label + 1); ``columns`` names a table source's
    feature and label columns.
    """
    check_utf8(out_dir, "--out")
    if source is not None:
        check_utf8(source, "--source")
    out_dir = Path(out_dir).expanduser().resolve()
    shard_counts = {"train": num_shards, "test": num_test_shards}
    for split, count in shard_counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise DtrainError(f"number of {split} shards must be an integer >= 1, got {count!r}")
    outdir.sweep_stale_tmp(out_dir)
    outdir.check_out_dir(out_dir, force=force)
    data = load_source(source, num_classes=num_classes, columns=columns)
    fmt, image_shape = source_format(data, num_classes)
    for split, count in shard_counts.items():
        if count > len(data[split][1]):
            raise DtrainError(
                f"{count} {split} shards requested but the source has only "
                f"{len(data[split][1])} {split} samples"
            )
    source_text = EMBEDDED_SOURCE if source is None else _source_text(source)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = file_in_the_way(out_dir)
        if blocker is not None:
            raise DtrainError(f"--out {out_dir}: {blocker} is a file, not a directory") from None
        raise DtrainError(
            f"{out_dir.parent}: cannot create ({one_line(e.strerror or e)})"
        ) from None
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    try:
        if tmp.is_dir() and not tmp.is_symlink():
            outdir.remove_dataset_dir(tmp)  # our own pid's, from an earlier life of this pid
        tmp.mkdir()
        manifest = _write_all(tmp, data, shard_counts, source_text, fmt, image_shape)
        _install(tmp, out_dir, force=force)
    except BaseException as e:
        if tmp.is_dir() and not tmp.is_symlink():
            outdir.remove_dataset_dir(tmp)
        if isinstance(e, OSError):
            raise DtrainError(f"{out_dir}: cannot write prepared data ({one_line(e)})") from None
        raise
    return manifest


def _source_text(source: str | Path) -> str:
    text = str(source)
    if text.lower().startswith(("http://", "https://")):
        # The manifest is shared and printed; credentials in the URL must not end up in it.
        parts = split_url(text, "--source URL")
        if parts.username is not None or parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            text = urllib.parse.urlunsplit(parts._replace(netloc=host))
        return text
    return str(Path(text).expanduser().resolve())


def _write_all(
    tmp: Path,
    data: dict[str, Split],
    shard_counts: dict[str, int],
    source: str,
    fmt: ShardFormat,
    image_shape: tuple[int, ...] | None,
) -> dict[str, Any]:
    splits = {
        split: _write_split(tmp, split, *data[split], shard_counts[split], fmt) for split in SPLITS
    }
    # What the network is built from (input_size, num_classes) and how its input is made
    # (feature_type: uint8 pixels scaled by 1/255, or float32 as they are). The range is for
    # people: features far outside about [-1, 1] train badly, and dtrain does not rescale them.
    low = min(float(data[s][0].min()) for s in SPLITS)
    high = max(float(data[s][0].max()) for s in SPLITS)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "schema": str(fmt.schema),
        "input_size": fmt.input_size,
        "image_shape": list(image_shape) if image_shape is not None else None,
        "feature_type": fmt.feature_type,
        "feature_range": [low, high],
        "num_classes": fmt.num_classes,
        "splits": splits,
    }
    # The manifest goes last: its presence is what marks the directory complete.
    manifest_path = tmp / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _fsync(manifest_path)
    _fsync(tmp)
    return manifest


def _write_split(
    tmp: Path, split: str, images: np.ndarray, labels: np.ndarray, count: int, fmt: ShardFormat
) -> dict[str, Any]:
    shards = []
    for index, (lo, hi) in enumerate(_shard_bounds(len(labels), count)):
        name = f"{split}-{index:05d}-of-{count:05d}.arrow"
        path = tmp / name
        _write_shard(path, images[lo:hi], labels[lo:hi], fmt)
        shards.append(
            {
                "file": name,
                "num_rows": hi - lo,
                "offset": lo,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "label_histogram": _histogram(labels[lo:hi], fmt.num_classes),
            }
        )
    return {
        "num_samples": len(labels),
        "label_histogram": _histogram(labels, fmt.num_classes),
        "shards": shards,
    }


def _shard_bounds(n: int, count: int) -> list[tuple[int, int]]:
    # Contiguous and in source order; sizes differ by at most one (np.array_split's convention).
    base, extra = divmod(n, count)
    bounds = []
    lo = 0
    for i in range(count):
        hi = lo + base + (1 if i < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _write_shard(path: Path, images: np.ndarray, labels: np.ndarray, fmt: ShardFormat) -> None:
    # (n, ...) -> flat (n * width,) values of a fixed-size list; pa.array wraps it without a copy.
    schema = fmt.schema
    flat = pa.array(
        np.ascontiguousarray(images).reshape(-1), type=schema.field("image").type.value_type
    )
    batch = pa.record_batch(
        [
            pa.FixedSizeListArray.from_arrays(flat, fmt.input_size),
            pa.array(labels, type=schema.field("label").type),
        ],
        schema=schema,
    )
    # One uncompressed record batch per shard, so a reader maps it and slices without copying.
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(batch)
    _fsync(path)


def _histogram(labels: np.ndarray, num_classes: int) -> list[int]:
    counts: list[int] = np.bincount(labels, minlength=num_classes).tolist()
    return counts


def _fsync(path: Path) -> None:
    # Works for files and directories alike: fsync needs only a read-only descriptor on Linux.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(tmp: Path, out_dir: Path, *, force: bool) -> None:
    """Move the finished ``tmp`` to ``out_dir``; an old ``out_dir`` goes only after that worked.

    Without ``force``, rename(2) is the check that counts: it replaces nothing but an empty
    directory, so a dataset another prepare finished meanwhile is never replaced.
    """
    try:
        os.rename(tmp, out_dir)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not out_dir.is_dir():
            raise
        if not force:
            if (out_dir / MANIFEST_NAME).is_file():
                raise DtrainError(
                    f"{out_dir}: was prepared by another process meanwhile; "
                    "use --force to replace it"
                ) from None
            raise outdir.not_ours(out_dir) from None
    else:
        _fsync(out_dir.parent)
        return
    # Checked again now: the folder may have changed since the first check.
    if not outdir.is_dtrain_dataset(out_dir):
        raise outdir.not_ours(out_dir)
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    _fsync(out_dir.parent)
    if not outdir.remove_dataset_dir(old):
        print(f"dtrain: left {old} in place: it holds files dtrain did not write", file=sys.stderr)


def ensure_prepared(
    data_dir: Path, *, num_shards: int = 8, num_test_shards: int = 2, create: bool = True
) -> dict[str, Any]:
    """The manifest of ``data_dir``, preparing the embedded MNIST there first if needed.

    An existing preparation is used as it is, whatever its shard counts. With ``create`` False
    (evaluate and predict given a --data-dir) a missing dataset is an error, not a download-sized
    surprise in a folder the user only meant to read from.
    """
    check_utf8(data_dir, "data directory")  # before its shards reach pyarrow
    data_dir = Path(data_dir).expanduser()
    if (data_dir / MANIFEST_NAME).is_file():
        return read_manifest(data_dir)
    hint = f"prepare it with `dtrain data prepare --out {data_dir}`"
    if data_dir.exists() and not data_dir.is_dir():
        raise DtrainError(f"{data_dir}: is not a directory")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        raise DtrainError(f"{data_dir}: not a prepared dataset (no {MANIFEST_NAME}); {hint}")
    if not create:
        raise DtrainError(f"{data_dir}: no prepared dataset there; {hint}")
    try:
        return prepare(data_dir, num_shards=num_shards, num_test_shards=num_test_shards)
    except DtrainError:
        # A concurrent driver may have prepared it first; its result is as good as ours.
        if (data_dir / MANIFEST_NAME).is_file():
            return read_manifest(data_dir)
        raise
