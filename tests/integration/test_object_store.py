"""The object-store transport through the session's local Ray: every worker is sent every
training shard (any part of a batch may move to any worker), each checked against the manifest
first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dtrain.service.data import transport
from dtrain.service.data.dataset import read_manifest
from dtrain.service.errors import DtrainError
from dtrain.workers.rows import load_train_rows
from dtrain.workers.shards import ObjectStoreShards, ShardEntry, ShardError, shard_entries


@pytest.mark.usefixtures("ray_local")
def test_object_store_ships_every_training_shard(tiny_copy: Path) -> None:
    manifest = read_manifest(tiny_copy)
    source = transport.train_source("object-store", tiny_copy, manifest)
    assert isinstance(source, ObjectStoreShards)
    assert set(source.refs) == {e.file for e in shard_entries(manifest, "train")}
    assert len(source.refs) > 1
    got, want = load_train_rows(source, manifest), load_train_rows(tiny_copy, manifest)
    assert got.num_rows == want.num_rows == manifest["splits"]["train"]["num_samples"]
    every = np.arange(got.num_rows)
    np.testing.assert_array_equal(got.features(every), want.features(every))
    np.testing.assert_array_equal(got.labels, want.labels)
    # A shard it was not sent (a test shard) says so rather than reading the disk.
    foreign = shard_entries(manifest, "test")[0]
    with pytest.raises(ShardError, match="did not ship this shard"):
        source.load(ShardEntry(foreign.file, foreign.num_rows, foreign.offset))


@pytest.mark.usefixtures("ray_local")
def test_object_store_refuses_a_shard_that_changed_since_the_manifest(tiny_copy: Path) -> None:
    manifest = read_manifest(tiny_copy)
    shard = tiny_copy / manifest["splits"]["train"]["shards"][-1]["file"]
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(DtrainError, match=f"{shard.name}: sha256 does not match the manifest"):
        transport.train_source("object-store", tiny_copy, manifest)
