"""The worker actor: a thin Ray shell around ``WorkerCore`` that loads every training row.

The rows come from a ``ShardSource``: memory-mapped from the node's disk, read from a shared
``pyarrow.fs`` URI, or taken from Ray's object store where the driver put them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dtrain.workers import exchange
from dtrain.workers.core import WorkerCore, ignore_float_overflow
from dtrain.workers.device import array_module
from dtrain.workers.model import ModelSpec
from dtrain.workers.rows import load_train_rows
from dtrain.workers.shards import ShardSource
from dtrain.workers.steplink import WorkerLink


class Worker:
    def __init__(
        self,
        *,
        rank: int,
        spec: ModelSpec,
        data_dir: str | None,
        manifest: dict[str, Any],
        batch_size: int,
        parts: tuple[int, int],
        seed: int,
        device: str = "cpu",
        exchange_dir: str | None = None,
        num_slots: int = 1,
        source: ShardSource | None = None,
        step_timeout: float = 120.0,
    ) -> None:
        ignore_float_overflow()
        xp = array_module(device)  # fails here, in one line, on a node without CuPy or a GPU
        # Without a source, data_dir is read from here: a path on this node, or a URI.
        where = source if source is not None else data_dir
        assert where is not None, "a worker needs a data_dir or a shard source"
        # All of them, as views of the shards: any part of a batch may become this worker's.
        self.core = WorkerCore(
            rank=rank,
            spec=spec,
            rows=load_train_rows(where, manifest),
            batch_size=batch_size,
            parts=parts,
            seed=seed,
            xp=xp,
        )

        self.slots: list[np.ndarray] = []
        self.grads: list[np.ndarray] = []
        self.link: WorkerLink | None = None
        self.num_slots = num_slots  # staleness + 1
        # Opened at the first segment, not here: the server creates these files as it starts,
        # and a worker that needs them only then can start alongside it.
        self.exchange_dir = None if exchange_dir is None else Path(exchange_dir)
        self.step_timeout = step_timeout

    def _attach(self, directory: Path) -> WorkerLink:
        """The exchange files and pipes the server made, once."""
        if self.link is None:
            n, rank = self.core.net.spec.num_params, self.core.rank
            num_weights = exchange.num_weight_slots(self.num_slots - 1)
            self.slots = exchange.open_weights(directory, n, num_weights)
            self.grads = exchange.open_grads(directory, rank, n, self.num_slots)
            self.link = WorkerLink(directory, rank, self.step_timeout)
        return self.link

    def ready(self) -> int:
        return self.core.num_samples

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this worker runs on (hex), so a run can report where its workers were."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(
        self,
        first: int,
        last: int,
        steps_per_epoch: int,
        server: Any = None,
        parts: tuple[int, int] | None = None,
    ) -> int:
        """Compute steps ``first..last``, each as soon as the server has the weights it reads;
        the server is at update ``first - 1`` when the segment starts. ``parts``, if given,
        are the parts of each batch this worker computes from this segment on (a membership
        change); else those it has.

        Step t reads the weights after update ``j = max(0, t - 1 - k)``, k the staleness:
        exactly the steps of a run without segments, so the bits are the same. With shared
        memory those weights are slot ``j % (k + 2)`` and the gradient goes to slot
        ``t % (k + 1)``; else, the worker pulls them from ``server`` (the server actor's
        handle) and pushes the gradient to it, through Ray.
        """
        k = self.num_slots - 1
        if parts is not None:
            self.core.parts = parts
        if self.exchange_dir is None:
            return self._run_pushing(server, first, last, steps_per_epoch, k)
        link = self._attach(self.exchange_dir)
        link.start(first - 1)
        for step in range(first, last + 1):
            epoch, s_in_epoch = divmod(step - 1, steps_per_epoch)
            j = max(0, step - 1 - k)
            # The rows do not depend on the weights: gathered before the wait, not after it.
            self.core.prefetch(epoch + 1, s_in_epoch)
            link.wait_update(j)
            grad = self.grads[step % (k + 1)]
            stats = self.core.compute_gradients(
                self.slots[j % len(self.slots)], epoch + 1, s_in_epoch, grad_out=grad
            )[1]
            link.send(step, stats)
        return last

    def _run_pushing(self, server: Any, first: int, last: int, spe: int, k: int) -> int:
        import ray

        # After a restart by Ray the segment re-runs: skip the steps the server has applied.
        applied = ray.get(server.applied.remote())
        for step in range(max(first, applied + 1), last + 1):
            epoch, s_in_epoch = divmod(step - 1, spe)
            weights = ray.get(server.weights.remote(max(0, step - 1 - k)))
            if weights is None:  # a step was not finite: the driver stops the run
                return step - 1
            grad, stats = self.core.compute_gradients(weights, epoch + 1, s_in_epoch)
            # Arguments are serialized here, so the gradient buffer may be reused at once.
            server.push.remote(step, self.core.rank, grad, stats)
        return last
