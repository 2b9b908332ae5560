"""How the training rows reach the workers: the driver's side of the data transport.

Three ways, chosen per run (``--data-transport``):

- ``local``: each worker reads the data directory itself. A path is memory-mapped on the
  worker's node (right on one node, or where every node mounts the same path); a ``pyarrow.fs``
  URI (``s3://bucket/mnist``, ``file:///shared/mnist``) is opened by every worker directly
  (reported as ``filesystem``).
- ``object-store``: the driver reads each training shard once, checks its sha256 against the
  manifest, and ``ray.put``s its bytes; workers on any node fetch the shards from Ray's object
  store (every worker all of them: any part of a batch may move to any worker). Nothing but
  the driver needs to see the data directory.
- ``auto``: a URI is read by the workers; a path is memory-mapped on a single-node cluster and
  shipped through the object store on a cluster of several nodes, where the other nodes cannot
  be assumed to see the driver's disk.

The manifest is always read on the driver, and the shards are checked there (size, sha256,
schema) before any actor starts, so a damaged dataset is one clear error.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from dtrain.service.data.manifest import MANIFEST_NAME, SPLITS, check_manifest, verify
from dtrain.service.data.prepare import ensure_prepared
from dtrain.service.errors import DtrainError
from dtrain.service.paths import read_regular
from dtrain.workers.shards import (
    FileSystemShards,
    LocalShards,
    ObjectStoreShards,
    ShardError,
    ShardSource,
    check_split,
    is_uri,
    open_uri_file,
    read_ipc_bytes,
    shard_entries,
)

TRANSPORTS: tuple[str, ...] = ("auto", "local", "object-store")
# What a run reports it used: ``local`` split by whether the data is a path or a URI.
RESOLVED: tuple[str, ...] = ("local", "filesystem", "object-store")


def load_manifest(data_dir: Path | str) -> dict[str, Any]:
    """The dataset's manifest, with every shard checked, read on the driver.

    A local directory is prepared from the embedded MNIST when missing; a URI must already hold
    a prepared dataset (``dtrain data prepare`` locally, then copy the directory there).
    """
    if is_uri(data_dir):
        return _load_uri_dataset(str(data_dir))
    manifest = ensure_prepared(Path(data_dir))
    # Checksums and schemas on the driver, before any actor exists: a damaged dataset is one
    # clear error here, not workers dying in their constructors.
    verify(Path(data_dir), manifest)
    try:
        check_split(Path(data_dir), manifest, "train")
    except ShardError as e:
        raise DtrainError(str(e)) from e
    return manifest


def _load_uri_dataset(uri: str) -> dict[str, Any]:
    try:
        raw = _read_uri_file(uri, MANIFEST_NAME)
    except ShardError as e:
        raise DtrainError(f"{uri}: not a prepared dataset ({e})") from e
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DtrainError(f"{uri}/{MANIFEST_NAME}: unreadable manifest ({e})") from e
    # The same checks as a local manifest; the "path" only names it in messages.
    check_manifest(manifest, Path(f"{uri}/{MANIFEST_NAME}"))
    # Every shard once, end to end: size, sha256 and (training shards) the Arrow contract. The
    # workers then read theirs again; for MNIST that is 55 MB, a fair price for one clear error.
    for split in SPLITS:
        for entry, shard in zip(
            shard_entries(manifest, split), manifest["splits"][split]["shards"], strict=True
        ):
            try:
                data = _read_uri_file(uri, entry.file)
                _check_digest(data, shard, f"{uri}/{entry.file}")
                if split == "train":
                    read_ipc_bytes(data, entry.file, entry.num_rows, entry.shard_format)
            except ShardError as e:
                raise DtrainError(str(e)) from e
    return manifest


def _read_uri_file(uri: str, name: str) -> bytes:
    with open_uri_file(uri, name) as f:
        try:
            return bytes(f.read())
        except OSError as e:
            raise ShardError(f"{name}: cannot read under {uri} ({e})") from None


def _check_digest(data: bytes, shard: dict[str, Any], where: str) -> None:
    if len(data) != shard["bytes"]:
        raise ShardError(f"{where}: shard is {len(data)} bytes, the manifest says {shard['bytes']}")
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise ShardError(f"{where}: sha256 does not match the manifest (corrupt or modified)")


def choose(requested: str, data_dir: Path | str, alive_nodes: int) -> str:
    """The transport a run uses: one of ``RESOLVED``."""
    if requested not in TRANSPORTS:
        raise DtrainError(f"unknown data transport {requested!r}: use one of {TRANSPORTS}")
    if requested == "object-store":
        return "object-store"
    if requested == "auto" and not is_uri(data_dir) and alive_nodes > 1:
        return "object-store"
    return "filesystem" if is_uri(data_dir) else "local"


def train_source(transport: str, data_dir: Path | str, manifest: dict[str, Any]) -> ShardSource:
    """Where every worker reads the training shards from: each worker holds all of them, so
    that any part of a step's batch can move to any worker (``workers.sampling``).

    With the object store, each training shard is put once and the returned source holds the
    refs of all of them, so keep it for the run.
    """
    if transport == "local":
        return LocalShards(str(data_dir))
    if transport == "filesystem":
        return FileSystemShards(str(data_dir))
    if transport != "object-store":
        raise DtrainError(f"unknown data transport {transport!r}")
    import ray

    refs: dict[str, Any] = {}
    for shard in manifest["splits"]["train"]["shards"]:
        name = shard["file"]
        try:
            data = _read_shard(data_dir, name)
            # Hash the very bytes that are shipped, not the file as it was checked before.
            _check_digest(data, shard, name)
        except ShardError as e:
            raise DtrainError(str(e)) from e
        # A uint8 array, not bytes: workers get it back as a zero-copy view of the store.
        refs[name] = ray.put(np.frombuffer(data, dtype=np.uint8))
    return ObjectStoreShards(refs)


def _read_shard(data_dir: Path | str, name: str) -> bytes:
    if is_uri(data_dir):
        return _read_uri_file(str(data_dir), name)
    path = Path(data_dir).expanduser() / name
    try:
        return read_regular(path)  # a FIFO in its place would be read forever
    except OSError as e:
        raise ShardError(f"{name}: cannot read {path} ({e.strerror or e})") from None


def alive_nodes() -> list[str]:
    """Node ids of the connected cluster's live nodes."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
