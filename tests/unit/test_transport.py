"""How training rows reach workers: one set of shard checks behind every transport.

The sources are read here in-process; the object store, which needs Ray, is in
tests/integration/test_object_store.py and the multi-node runs in tests/cluster/test_cluster.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dtrain.service.data import transport
from dtrain.service.data.dataset import read_manifest
from dtrain.service.errors import DtrainError
from dtrain.service.train.config import TrainConfig
from dtrain.workers.shards import (
    FileSystemShards,
    LocalShards,
    ShardError,
    read_ipc_bytes,
    read_rows,
    shard_entries,
    shards_for_rows,
)


def test_every_source_reads_the_same_rows(tiny_dataset: Path) -> None:
    manifest = read_manifest(tiny_dataset)
    entry = shard_entries(manifest, "train")[0]
    local = LocalShards(str(tiny_dataset)).load(entry)
    uri = FileSystemShards(tiny_dataset.as_uri()).load(entry)
    from_bytes = read_ipc_bytes(
        (tiny_dataset / entry.file).read_bytes(), entry.file, entry.num_rows
    )
    for images, labels in (uri, from_bytes):
        np.testing.assert_array_equal(images, local[0])
        np.testing.assert_array_equal(labels, local[1])
    # read_rows takes a path, a URI string or a source alike, across shard boundaries.
    n = manifest["splits"]["train"]["num_samples"]
    want = read_rows(tiny_dataset, manifest, "train", 3, n - 2)
    for data in (str(tiny_dataset), tiny_dataset.as_uri(), FileSystemShards(tiny_dataset.as_uri())):
        got = read_rows(data, manifest, "train", 3, n - 2)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_shipped_bytes_get_the_same_checks(tiny_dataset: Path) -> None:
    manifest = read_manifest(tiny_dataset)
    entry = shard_entries(manifest, "train")[0]
    data = (tiny_dataset / entry.file).read_bytes()
    with pytest.raises(ShardError, match=f"{entry.file}: not a readable Arrow IPC file"):
        read_ipc_bytes(data[: len(data) // 2], entry.file, entry.num_rows)
    with pytest.raises(ShardError, match=r"shard has \d+ rows, the manifest says"):
        read_ipc_bytes(data, entry.file, entry.num_rows + 1)


def test_a_missing_file_under_a_uri_is_one_line(tiny_dataset: Path, tmp_path: Path) -> None:
    entry = shard_entries(read_manifest(tiny_dataset), "train")[0]
    with pytest.raises(ShardError, match=f"^{entry.file}: not found under file://"):
        FileSystemShards(tmp_path.as_uri()).load(entry)


def test_shards_for_rows() -> None:
    manifest = {
        "splits": {
            "train": {
                "num_samples": 30,
                "shards": [
                    {"file": "a", "num_rows": 10, "offset": 0},
                    {"file": "b", "num_rows": 10, "offset": 10},
                    {"file": "c", "num_rows": 10, "offset": 20},
                ],
            }
        }
    }
    assert [e.file for e in shards_for_rows(manifest, "train", 0, 10)] == ["a"]
    assert [e.file for e in shards_for_rows(manifest, "train", 9, 21)] == ["a", "b", "c"]
    assert [e.file for e in shards_for_rows(manifest, "train", 10, 20)] == ["b"]
    assert shards_for_rows(manifest, "train", 5, 5) == []


@pytest.mark.parametrize(
    ("requested", "data_dir", "nodes", "expected"),
    [
        ("auto", "/data/mnist", 1, "local"),
        ("auto", "/data/mnist", 2, "object-store"),
        ("auto", "s3://bucket/mnist", 2, "filesystem"),
        ("auto", "file:///shared/mnist", 1, "filesystem"),
        ("local", "/data/mnist", 3, "local"),  # every node mounts the same path
        ("local", "s3://bucket/mnist", 3, "filesystem"),
        ("object-store", "/data/mnist", 1, "object-store"),
        ("object-store", "s3://bucket/mnist", 2, "object-store"),
    ],
)
def test_choose(requested: str, data_dir: str, nodes: int, expected: str) -> None:
    assert transport.choose(requested, data_dir, nodes) == expected


def test_config_keeps_a_uri_whole() -> None:
    uri = TrainConfig(data_dir="s3://bucket/mnist", run_dir="r")
    assert uri.data_dir == "s3://bucket/mnist"
    assert uri.to_dict()["data_dir"] == "s3://bucket/mnist"
    assert TrainConfig(data_dir="data/x", run_dir="r").data_dir == Path("data/x")
    with pytest.raises(ValueError, match="data_transport must be one of"):
        TrainConfig(data_dir="d", run_dir="r", data_transport="nfs")


def test_a_uri_dataset_is_checked_on_the_driver(tiny_copy: Path, tmp_path: Path) -> None:
    assert transport.load_manifest(tiny_copy.as_uri()) == read_manifest(tiny_copy)
    with pytest.raises(DtrainError, match="not a prepared dataset"):
        transport.load_manifest((tmp_path / "nothing").as_uri())
    manifest = json.loads((tiny_copy / "manifest.json").read_text())
    shard = tiny_copy / manifest["splits"]["train"]["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DtrainError, match="sha256 does not match the manifest"):
        transport.load_manifest(tiny_copy.as_uri())
