"""Every training row, held by each worker as the shards give them; a step gathers its own.

Any part of a step's batch may be computed by any worker (``workers.sampling``), so every worker
holds all the training rows. They stay as the shards give them: uint8 pixels from the local
transport are read-only views of memory-mapped files, one page cache for every worker on a node;
from the object store, views of the node's store. Only the rows of a step are gathered and
converted to float32 (a few hundred KB), where converting a whole split once would cost each
worker ~188 MB for MNIST.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dtrain.workers.shards import ShardSource, as_source, shard_entries


class TrainRows:
    """A split's rows as a sequence of shards: ``images[i]`` holds rows ``offsets[i]`` on."""

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> None:
        if not images or len(images) != len(labels):
            raise ValueError("TrainRows needs one labels array per images array, at least one")
        self.images = list(images)
        self.offsets = np.cumsum([0, *(len(a) for a in images)])
        self.num_rows = int(self.offsets[-1])
        self.width = int(self.images[0].shape[1])
        # uint8 pixels (what `dtrain data prepare` writes) are scaled to float32 per step; other
        # shards hold the float32 features themselves.
        self.uint8 = all(a.dtype == np.uint8 for a in self.images)
        self._raw = np.empty((0, self.width), np.uint8)
        # One byte a row as the shards store them; int64 once for the loss (480 KB for MNIST).
        self.labels = np.concatenate(labels).astype(np.int64)

    @classmethod
    def of(cls, images: np.ndarray, labels: np.ndarray) -> TrainRows:
        """Rows held in one array (tests, single-shard data)."""
        return cls([images], [labels])

    def features(self, rows: np.ndarray, buffer: np.ndarray | None = None) -> np.ndarray:
        """float32 features of ``rows`` (global row ids, sorted), the network's input: the
        values of ``to_float``, uint8 scaled by 1/255 (a division, bit for bit the same).

        Written into the first rows of ``buffer`` if given: a fresh batch-sized array per step
        is above malloc's mmap threshold, and its page faults cost more than the gather.
        """
        if buffer is None:
            buffer = np.empty((len(rows), self.width), np.float32)
        out = buffer[: len(rows)]
        # The pixels are gathered as they are stored, then converted in one pass over the
        # batch, not one per shard (a shard holds a few of a step's rows).
        raw = out if not self.uint8 else self._staging(len(rows))
        # Where each shard's rows begin in the sorted ids.
        cuts = np.searchsorted(rows, self.offsets)
        for shard, offset, lo, hi in zip(self.images, self.offsets, cuts, cuts[1:], strict=False):
            if lo < hi:
                np.take(shard, rows[lo:hi] - offset, axis=0, out=raw[lo:hi])
        if self.uint8:
            np.divide(raw, np.float32(255.0), out=out)
        return out

    def _staging(self, num_rows: int) -> np.ndarray:
        """A reused uint8 buffer of at least ``num_rows`` rows (a step's, in practice)."""
        if self._raw.shape[0] < num_rows:
            self._raw = np.empty((num_rows, self.width), np.uint8)
        return self._raw[:num_rows]

    def all_features(self) -> np.ndarray:
        """Every row as float32: for a device worker, which moves the split to the GPU once."""
        every = self.features(np.arange(self.num_rows))
        self._raw = np.empty((0, self.width), np.uint8)  # the split-sized staging: not kept
        return every


def load_train_rows(data: Path | str | ShardSource, manifest: dict[str, Any]) -> TrainRows:
    """Every training shard from ``data`` (a directory, a URI or a shard source), uncopied."""
    source = as_source(data)
    loaded = [source.load(entry) for entry in shard_entries(manifest, "train")]
    return TrainRows([x for x, _ in loaded], [y for _, y in loaded])
