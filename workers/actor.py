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
        num_slots: int = 1,
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

        self.slots: list[np.ndarray] = []
        self.grads: list[np.ndarray] = []
        if exchange_dir is not None:
            n = spec.num_params
            self.slots = exchange.open_weights(Path(exchange_dir), n, num_slots)
            self.grads = exchange.open_grads(Path(exchange_dir), rank, n, num_slots)

    def ready(self) -> int:
        return self.core.num_samples

    def pid(self) -> int:
        return os.getpid()

    def compute_gradients(
        self, weights: np.ndarray, epoch: int, step: int
    ) -> tuple[np.ndarray, GradStats]:
        return self.core.compute_gradients(weights, epoch, step)

    def compute_shared(
        self, after: object, epoch: int, step: int, slot: int = 0, grad_slot: int = 0
    ) -> GradStats:
        """``compute_gradients`` on shared weights slot ``slot``, into gradient slot ``grad_slot``.

        ``after`` is the stats of the server update that wrote that weights slot: passing its
        ref orders this task after it.
        """
        assert self.grads, "started without an exchange directory"
        grad = self.grads[grad_slot]
        return self.core.compute_gradients(self.slots[slot], epoch, step, grad_out=grad)[1]
