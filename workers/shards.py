"""Reading prepared shards: Arrow IPC files, described by manifest.json.

This module is imported by worker actors and by the driver's data preparation alike, so it holds
the reading side of the on-disk contract (``workers/shardformat.py`` holds the contract itself)
and depends on nothing in ``service/``.
Its errors are ``ShardError`` with a one-line message; the service maps them to ``DtrainError``.

A shard's bytes come from one of three places (a ``ShardSource``): a directory on this node's
disk (memory-mapped), a ``pyarrow.fs`` URI such as ``s3://bucket/mnist`` that every node can
open, or Ray's object store, where the driver put them for nodes that cannot see its disk. Every
source goes through the same checks (schema, row count, nulls, label range).
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

# ShardError and shard_format are re-exported: callers catch and call them from here.
from dtrain.workers.shardformat import MNIST_FORMAT, ShardFormat, is_count
from dtrain.workers.shardformat import ShardError as ShardError
from dtrain.workers.shardformat import shard_format as shard_format

# Enough for every shard of a few prepared directories; each entry is only a view of a memory map.
_SHARD_CACHE_SIZE = 64


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """One shard as the manifest lists it: rows [offset, offset + num_rows) of its split."""

    file: str
    num_rows: int
    offset: int
    shard_format: ShardFormat = MNIST_FORMAT


def one_line(text: object) -> str:
    """Collapse a message onto one line: the CLI prints errors as a single line."""
    return " ".join(str(text).split())


def schema_summary(schema: pa.Schema) -> str:
    """``name: type`` pairs on one line, since ``str(schema)`` spans several."""
    nullability = {True: "", False: " not null"}
    return ", ".join(f"{f.name}: {f.type}{nullability[f.nullable]}" for f in schema)


def shard_entries(manifest: dict[str, Any], split: str) -> list[ShardEntry]:
    """The split's shards in manifest order, checked to tile rows 0..num_samples exactly."""
    try:
        info = manifest["splits"][split]
    except (KeyError, TypeError):
        raise ShardError(f"manifest has no split {split!r}") from None
    fmt = shard_format(manifest)
    try:
        num_samples = info["num_samples"]
        raw = info["shards"]
        entries = [ShardEntry(s["file"], s["num_rows"], s["offset"], fmt) for s in raw]
    except (KeyError, TypeError) as e:
        raise ShardError(f"manifest split {split!r} is malformed (missing {e})") from None
    if not is_count(num_samples):
        raise ShardError(f"manifest split {split!r}: num_samples {num_samples!r} is not a count")
    if not entries:
        raise ShardError(f"manifest split {split!r} lists no shards")
    expected_offset = 0
    for entry in entries:
        _check_entry(entry, split, expected_offset)
        expected_offset += entry.num_rows
    if expected_offset != num_samples:
        raise ShardError(
            f"manifest split {split!r}: shards hold {expected_offset} rows "
            f"but num_samples is {num_samples}"
        )
    return entries


def _check_entry(entry: ShardEntry, split: str, expected_offset: int) -> None:
    # The name is joined onto the data directory, so a path here could read any file.
    if (
        not isinstance(entry.file, str)
        or entry.file in ("", ".", "..")
        or Path(entry.file).name != entry.file
    ):
        raise ShardError(
            f"manifest split {split!r}: shard file {entry.file!r} is not a plain file name"
        )
    if not is_count(entry.num_rows) or entry.num_rows == 0:
        raise ShardError(
            f"{entry.file}: manifest num_rows {entry.num_rows!r} is not a positive count"
        )
    if entry.offset != expected_offset or not is_count(entry.offset):
        raise ShardError(
            f"{entry.file}: manifest offset {entry.offset!r} should be {expected_offset} "
            "(shards must tile the split in order)"
        )


def is_uri(location: object) -> bool:
    """A ``pyarrow.fs`` URI (``s3://``, ``gs://``, ``file://``...) rather than a local path."""
    return "://" in str(location)


class ShardSource(Protocol):
    """Where a shard's bytes come from; ``load`` returns its validated (images, labels)."""

    def load(self, entry: ShardEntry) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class LocalShards:
    """Shard files in a directory this process can read: memory-mapped, cached per file."""

    data_dir: str

    def load(self, entry: ShardEntry) -> tuple[np.ndarray, np.ndarray]:
        return _load_shard(Path(self.data_dir).expanduser() / entry.file, entry)


@dataclass(frozen=True)
class FileSystemShards:
    """Shard files under a ``pyarrow.fs`` URI, read whole into memory (no memory map remotely)."""

    uri: str

    def load(self, entry: ShardEntry) -> tuple[np.ndarray, np.ndarray]:
        with open_uri_file(self.uri, entry.file) as f:
            return read_ipc(f, entry.file, entry.num_rows, entry.shard_format)


@dataclass(frozen=True)
class ObjectStoreShards:
    """Shard files the driver put into Ray's object store: file name -> ref of its bytes.

    The bytes travel as a uint8 array, which Ray hands back as a zero-copy view of the node's
    object store; the arrays read from it are views of that memory too.
    """

    refs: dict[str, Any] = field(default_factory=dict)

    def load(self, entry: ShardEntry) -> tuple[np.ndarray, np.ndarray]:
        import ray  # only here: the rest of this module must import without Ray

        ref = self.refs.get(entry.file)
        if ref is None:
            raise ShardError(f"{entry.file}: the driver did not ship this shard to the worker")
        return read_ipc_bytes(ray.get(ref), entry.file, entry.num_rows, entry.shard_format)


def as_source(location: Path | str | ShardSource) -> ShardSource:
    """A path is a local directory, a string with ``://`` a URI, anything else a source."""
    if isinstance(location, Path):
        return LocalShards(str(location))
    if isinstance(location, str):
        return FileSystemShards(location) if is_uri(location) else LocalShards(location)
    return location


def open_uri_file(uri: str, name: str) -> Any:
    """Open ``name`` under the URI ``uri`` for random access, errors as ``ShardError``."""
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        return fs.open_input_file(f"{root.rstrip('/')}/{name}")
    except FileNotFoundError:
        raise ShardError(f"{name}: not found under {uri}") from None
    except (OSError, pa.ArrowException, ValueError) as e:
        raise ShardError(f"{name}: cannot open under {uri} ({one_line(e)})") from None


def shards_for_rows(
    manifest: dict[str, Any], split: str, start: int, stop: int
) -> list[ShardEntry]:
    """The shards of ``split`` that hold any of rows [start, stop)."""
    entries = shard_entries(manifest, split)
    return [
        e for e in entries if start < stop and e.offset < stop and start < e.offset + e.num_rows
    ]


def read_rows(
    data: Path | str | ShardSource, manifest: dict[str, Any], split: str, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, stop) of a split, reading across shard boundaries as one sequence.

    ``data`` is a local directory, a ``pyarrow.fs`` URI or a ``ShardSource``. Returns (features
    (n, input_size) uint8 or float32, labels (n,) uint8 or uint16). When the rows lie in one
    shard the arrays are read-only views of it (no copy); across shards they are a fresh
    concatenation.
    """
    source = as_source(data)
    entries = shard_entries(manifest, split)
    total = entries[-1].offset + entries[-1].num_rows
    if not (0 <= start <= stop <= total):
        raise ShardError(f"split {split!r}: rows [{start}, {stop}) are outside [0, {total})")
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for entry in entries:
        lo = max(start, entry.offset) - entry.offset
        hi = min(stop, entry.offset + entry.num_rows) - entry.offset
        if lo >= hi:
            continue
        shard_images, shard_labels = source.load(entry)
        images.append(shard_images[lo:hi])
        labels.append(shard_labels[lo:hi])
    if not images:
        fmt = entries[0].shard_format
        return np.empty((0, fmt.input_size), fmt.feature_type), np.empty(0, fmt.label_dtype)
    if len(images) == 1:
        return images[0], labels[0]
    return np.concatenate(images), np.concatenate(labels)


def to_float(images: np.ndarray) -> np.ndarray:
    """The network's input: uint8 pixels scaled into [0, 1]; float32 features as they are."""
    out = np.asarray(images).astype(np.float32)
    if images.dtype == np.uint8:
        out /= np.float32(255.0)
    return out


def _load_shard(path: Path, entry: ShardEntry) -> tuple[np.ndarray, np.ndarray]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ShardError(f"{path.name}: shard file is missing from {path.parent}") from None
    except OSError as e:
        raise ShardError(f"{path.name}: cannot stat shard ({one_line(e.strerror or e)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ShardError(f"{path.name}: shard in {path.parent} is not a regular file")
    # Keyed on identity and mtime so that a re-prepared directory (new files renamed in) is reread,
    # while a worker drawing one batch per step validates each shard once, not once per step.
    return _open_shard(
        str(path), st.st_ino, st.st_size, st.st_mtime_ns, entry.num_rows, entry.shard_format
    )


@functools.lru_cache(maxsize=_SHARD_CACHE_SIZE)
def _open_shard(
    path: str, inode: int, size: int, mtime_ns: int, expected_rows: int, fmt: ShardFormat
) -> tuple[np.ndarray, np.ndarray]:
    del inode, size, mtime_ns  # cache key only
    name = Path(path).name
    try:
        # The returned arrays keep the mapping alive after the file object is gone.
        with pa.memory_map(path, "r") as source:
            return read_ipc(source, name, expected_rows, fmt)
    except (OSError, pa.ArrowException) as e:
        raise ShardError(f"{name}: not a readable Arrow IPC file ({one_line(e)})") from None


def read_ipc_bytes(
    data: Any, name: str, expected_rows: int, fmt: ShardFormat = MNIST_FORMAT
) -> tuple[np.ndarray, np.ndarray]:
    """``read_ipc`` over a whole file held in memory (bytes, a uint8 array, a ``pa.Buffer``)."""
    buf = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    return read_ipc(pa.BufferReader(buf), name, expected_rows, fmt)


def read_ipc(
    source: Any, name: str, expected_rows: int, fmt: ShardFormat = MNIST_FORMAT
) -> tuple[np.ndarray, np.ndarray]:
    """Read one shard from an open Arrow file and check it against the contract and manifest.

    Every transport ends here, so a shard is held to the same checks wherever it came from.
    """
    try:
        reader = pa.ipc.open_file(source)
        if not reader.schema.equals(fmt.schema):
            raise ShardError(
                f"{name}: schema ({schema_summary(reader.schema)}) is not the expected "
                f"({schema_summary(fmt.schema)})"
            )
        table = reader.read_all()
        # Full validation catches buffers that disagree with the footer before NumPy sees them.
        table.validate(full=True)
    except (OSError, pa.ArrowException) as e:
        raise ShardError(f"{name}: not a readable Arrow IPC file ({one_line(e)})") from None
    if table.num_rows == 0:
        raise ShardError(f"{name}: shard is empty (0 rows)")
    if table.num_rows != expected_rows:
        raise ShardError(
            f"{name}: shard has {table.num_rows} rows, the manifest says {expected_rows}"
        )
    return _table_arrays(table, name, fmt)


def _table_arrays(table: pa.Table, name: str, fmt: ShardFormat) -> tuple[np.ndarray, np.ndarray]:
    image_col = _single_chunk(table.column("image"))
    label_col = _single_chunk(table.column("label"))
    flat = image_col.flatten()
    if image_col.null_count or flat.null_count or label_col.null_count:
        raise ShardError(f"{name}: shard holds null images or labels")
    # (n * width,) -> (n, width); zero-copy for the single-batch files prepare writes.
    images = flat.to_numpy(zero_copy_only=False).reshape(table.num_rows, fmt.input_size)
    labels = label_col.to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(labels >= fmt.num_classes)
    if bad.size:
        row = int(bad[0])
        raise ShardError(
            f"{name}: label {int(labels[row])} at row {row} is out of range "
            f"0..{fmt.num_classes - 1}"
        )
    # Cached arrays are shared by every caller; a copy made by concatenation must not be mutable.
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _single_chunk(column: pa.ChunkedArray) -> pa.Array:
    # Files from prepare hold one record batch; others are combined (a copy) rather than refused.
    if column.num_chunks == 1:
        return column.chunk(0)
    return pa.concat_arrays(column.chunks)


def check_split(data: Path | str | ShardSource, manifest: dict[str, Any], split: str) -> int:
    """Open and validate every shard of a split (schema, rows, labels) without copying rows.

    The driver calls this before it starts any actor, so that a bad shard is one clear error
    rather than a worker that dies in its constructor and is restarted in vain.
    """
    source = as_source(data)
    entries = shard_entries(manifest, split)
    for entry in entries:
        source.load(entry)
    return len(entries)
