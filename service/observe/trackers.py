"""Experiment trackers the driver writes to, besides Prometheus: TensorBoard (and the options).

Each tracker is an ``Observer`` built here from its option; its package is an optional extra,
imported when the option is given, so a missing one is a one-line error before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dtrain.service.observe.observers import Observer


@dataclass(frozen=True, kw_only=True)
class TrackerConfig:
    """Where a run is tracked. Each field's ``metadata`` is its ``dtrain train`` option."""

    tensorboard: Path | None = field(
        default=None,
        metadata={
            "help": "Write TensorBoard event files under DIR/<run id> (per-step loss, accuracy, "
            "learning rate, norms, step time by phase; per-epoch train and test); needs "
            "pip install 'dtrain[tensorboard]'. [default: none]"
        },
    )

    def build(self, run_id: str) -> list[Observer]:
        trackers: list[Observer] = []
        if self.tensorboard is not None:
            from dtrain.service.observe.tensorboard_events import TensorBoardWriter

            trackers.append(TensorBoardWriter(self.tensorboard, run_id))
        return trackers
