"""The worker actor: a thin Ray shell around ``WorkerCore`` that loads its own rows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from workers import exchange
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
        exchange_dir: str | None = None,
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

        self.shared: tuple[np.ndarray, np.ndarray] | None = None
        if exchange_dir is not None:
            n = spec.num_params
            self.shared = (
                exchange.open_weights(Path(exchange_dir), n),
                exchange.open_grad(Path(exchange_dir), rank, n),
            )

    def ready(self) -> int:
        return self.core.num_samples

    def pid(self) -> int:
        return os.getpid()

    def compute_gradients(
        self, weights: np.ndarray, epoch: int, step: int
    ) -> tuple[np.ndarray, GradStats]:
        return self.core.compute_gradients(weights, epoch, step)

    def compute_shared(self, after: object, epoch: int, step: int) -> GradStats:
        """``compute_gradients`` on the shared weights, writing the shared gradient buffer.

        ``after`` is the server's previous update's stats: passing its ref orders this step.
        """
        assert self.shared is not None, "started without an exchange directory"
        weights, grad = self.shared
        return self.core.compute_gradients(weights, epoch, step, grad_out=grad)[1]
