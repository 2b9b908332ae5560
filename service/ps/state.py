"""The server's whole state as slots, crash-consistent: in memory, or in the exchange directory.

With staleness k the state after update t is: the weights after updates t-k..t (the steps still
to come read them), the velocity after update t, and t itself. It is kept as

- ``k + 2`` weight slots, slot ``j % (k + 2)`` holding the weights after update ``j``;
- 2 velocity slots, slot ``j % 2`` holding the velocity after update ``j``;
- a header whose step field says which update is the last complete one.

Update t reads the slots of t-1 and writes those of t, which held update t-k-2's weights and
update t-2's velocity: nothing anyone still reads. The header is written last, in one aligned
8-byte store. So a process killed anywhere in an update leaves the state of update t-1 whole,
and a new server that opens the directory continues from there (``ServerState.open``). Nothing
here depends on the number of workers: the same state can go on with more or fewer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dtrain.workers import exchange

MAGIC = 0x64747261696E3031  # "dtrain01": this is a dtrain server state
MAGIC_AT, PARAMS_AT, STALENESS_AT, STEP_AT = range(4)
HEADER_NAME = "state.i64"
NO_STEP = -1  # created, not yet seeded: no complete step to continue from


def velocity_name(slot: int) -> str:
    return f"velocity-{slot}.f32"


class ServerState:
    def __init__(
        self,
        weights: list[np.ndarray],
        velocity: list[np.ndarray],
        header: np.ndarray,
        staleness: int,
    ) -> None:
        self.weight_slots = weights
        self.velocity_slots = velocity
        self.header = header
        self.staleness = staleness

    @classmethod
    def in_memory(cls, num_params: int, staleness: int) -> ServerState:
        n = exchange.num_weight_slots(staleness)
        header = np.array([MAGIC, num_params, staleness, NO_STEP], dtype=np.int64)
        weights = [np.zeros(num_params, dtype=np.float32) for _ in range(n)]
        velocity = [np.zeros(num_params, dtype=np.float32) for _ in range(2)]
        return cls(weights, velocity, header, staleness)

    @classmethod
    def create(cls, directory: Path, num_params: int, staleness: int) -> ServerState:
        """New files in ``directory``, replacing any there; no complete step until ``seed``."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        state = cls._map(directory, num_params, staleness, create=True)
        state.header[:STEP_AT] = (MAGIC, num_params, staleness)
        state.header[STEP_AT] = NO_STEP
        return state

    @classmethod
    def open(cls, directory: Path, num_params: int, staleness: int) -> ServerState:
        """The state a server before left in ``directory``, at its last complete step."""
        header = exchange.map_array(directory / HEADER_NAME, np.dtype(np.int64), 4, create=False)
        magic, params, k, step = (int(v) for v in header)
        if (magic, params, k) != (MAGIC, num_params, staleness):
            raise ValueError(
                f"{directory} holds a state of {params} params with staleness {k}, "
                f"expected {num_params} and {staleness}"
            )
        if step == NO_STEP:
            raise ValueError(f"{directory} holds no complete step")
        return cls._map(directory, num_params, staleness, create=False)

    @classmethod
    def _map(cls, directory: Path, num_params: int, staleness: int, create: bool) -> ServerState:
        f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
        n = exchange.num_weight_slots(staleness)
        weights = [
            exchange.map_array(directory / exchange.weights_name(i), f32, num_params, create)
            for i in range(n)
        ]
        velocity = [
            exchange.map_array(directory / velocity_name(i), f32, num_params, create)
            for i in range(2)
        ]
        header = exchange.map_array(directory / HEADER_NAME, i64, 4, create)
        return cls(weights, velocity, header, staleness)

    @property
    def step(self) -> int:
        """The last complete update."""
        return int(self.header[STEP_AT])

    def weights(self, j: int) -> np.ndarray:
        """The weights after update ``j`` (before the first: the initial ones, update 0)."""
        return self.weight_slots[max(j, 0) % len(self.weight_slots)]

    def velocity(self, j: int) -> np.ndarray:
        return self.velocity_slots[max(j, 0) % 2]

    def seed(
        self, params: np.ndarray, velocity: np.ndarray, step: int, history: np.ndarray | None
    ) -> None:
        """Write a snapshot's state (``history``: the weights after the k updates before
        ``step``, oldest first), then mark ``step`` complete."""
        k = self.staleness
        # No history: the weights were the same for the k updates before (a fresh start).
        older = [params] * k if history is None else list(history)
        for back, w in zip(range(k, 0, -1), older, strict=True):
            if step - back >= 0:  # before update 0 there is nothing to keep
                self.weights(step - back)[...] = w
        self.weights(step)[...] = params
        self.velocity(step)[...] = velocity
        self.commit(step)

    def commit(self, step: int) -> None:
        """Update ``step``'s slots are whole: one aligned 8-byte store makes it the current one."""
        self.header[STEP_AT] = step

    def history(self) -> np.ndarray | None:
        """The weights after the k updates before the current one, oldest first (a copy)."""
        k, t = self.staleness, self.step
        return np.stack([self.weights(j) for j in range(t - k, t)]) if k else None
