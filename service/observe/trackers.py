"""Experiment trackers the driver writes to, besides Prometheus: TensorBoard and MLflow.

Each tracker is an ``Observer`` built here from its option; its package is an optional extra,
imported when the option is given, so a missing one is a one-line error before Ray starts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtrain.service.errors import DtrainError
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

    mlflow: str | None = field(
        default=None,
        metadata={
            "help": "Track the run in MLflow: parameters, per-step and per-epoch metrics, the "
            "final checkpoint and summary as artifacts. The value is the tracking URI; "
            "--mlflow alone uses a local ./mlruns store. Needs pip install 'dtrain[mlflow]'. "
            "[default: none]",
            "flag_value": "mlruns",
            "metavar": "[TRACKING_URI]",
        },
    )

    def build(self, run_id: str) -> list[Observer]:
        trackers: list[Observer] = []
        if self.tensorboard is not None:
            from dtrain.service.observe.tensorboard_events import TensorBoardWriter

            trackers.append(TensorBoardWriter(self.tensorboard, run_id))
        if self.mlflow is not None:
            from dtrain.service.observe.mlflow_run import MlflowRun

            trackers.append(MlflowRun(self.mlflow, run_id))
        return trackers


def require(module: str, option: str, extra: str) -> Any:
    """Import an optional tracker's package, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DtrainError(
            f"{option} needs the {module} package: pip install 'dtrain[{extra}]'"
        ) from None
