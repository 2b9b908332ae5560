"""The object-store transport through the session's local Ray: each worker is sent only its
shards, each checked against the manifest first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dtrain.service.data import transport
from dtrain.service.data.dataset import read_manifest
from dtrain.service.errors import DtrainError
from dtrain.service.train.plan import split_evenly
from dtrain.workers.shards import (
    ObjectStoreShards,
    ShardError,
    read_rows,
    shard_entries,
    shards_for_rows,
)


@pytest.mark.usefixtures("ray_local")
def test_object_store_ships_each_worker_only_its_shards(tiny_copy: Path) -> None:
    manifest = read_manifest(tiny_copy)
    n = manifest["splits"]["train"]["num_samples"]
    ranges = split_evenly(n, 2)
    sources = transport.worker_sources("object-store", tiny_copy, manifest, ranges)
    for source, (start, stop) in zip(sources, ranges, strict=True):
        assert isinstance(source, ObjectStoreShards)
        expected = {e.file for e in shards_for_rows(manifest, "train", start, stop)}
        assert set(source.refs) == expected
        got = read_rows(source, manifest, "train", start, stop)
        want = read_rows(tiny_copy, manifest, "train", start, stop)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # A worker asked for a shard it was not sent says so rather than reading the disk.
    foreign = next(e for e in shard_entries(manifest, "train") if e.file not in sources[0].refs)
    with pytest.raises(ShardError, match="did not ship this shard"):
        sources[0].load(foreign)


@pytest.mark.usefixtures("ray_local")
def test_object_store_refuses_a_shard_that_changed_since_the_manifest(tiny_copy: Path) -> None:
    manifest = read_manifest(tiny_copy)
    shard = tiny_copy / manifest["splits"]["train"]["shards"][-1]["file"]
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0x01
    shard.write_bytes(bytes(data))
    ranges = split_evenly(manifest["splits"]["train"]["num_samples"], 2)
    with pytest.raises(DtrainError, match=f"{shard.name}: sha256 does not match the manifest"):
        transport.worker_sources("object-store", tiny_copy, manifest, ranges)
