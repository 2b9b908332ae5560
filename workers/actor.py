"""The worker actor: a thin Ray shell around ``WorkerCore`` that loads its own rows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from workers.core import GradStats, WorkerCore
from workers.device import array_module
from workers.model import ModelSpec
from workers.shards import read_rows, to_float


class Worker:
    def __init__(
        self,
        *,
        rank: int,
        spec: ModelSpec,
        data_dir: str,
        manifest: dict[str, Any],
        row_range: tuple[int, int],
        batch_slice: int,
        seed: int,
        device: str = "cpu",
    ) -> None:
        xp = array_module(device)  # fails here, in one line, on a node without CuPy or a GPU
        images, labels = read_rows(Path(data_dir), manifest, "train", *row_range)
        # Converting once here, not per step: ~94 MB for half of MNIST, and no per-step work.
        self.core = WorkerCore(
            rank=rank,
            spec=spec,
            images=to_float(images),
            labels=labels,
            batch_slice=batch_slice,
            seed=seed,
            xp=xp,
        )

    def ready(self) -> int:
        return self.core.num_samples

    def pid(self) -> int:
        return os.getpid()

    def compute_gradients(
        self, weights: np.ndarray, epoch: int, step: int
    ) -> tuple[np.ndarray, GradStats]:
        return self.core.compute_gradients(weights, epoch, step)
