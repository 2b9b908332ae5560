"""The training job's configuration: one frozen, keyword-only dataclass, validated on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.optim import OptimizerConfig
from workers.model import ModelSpec


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    data_dir: Path
    run_dir: Path
    epochs: int = 5  # the chapter's Keras run
    batch_size: int = 128  # the chapter's Keras run
    num_workers: int = 2  # one per core on the 2-core reference machine
    model: ModelSpec = field(default_factory=ModelSpec)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    seed: int = 0
    num_cpus_per_worker: float = 1.0
    max_steps: int | None = None  # stop early after this many updates (smoke runs, tests)
    eval_every_epoch: bool = True
    # A step that takes longer than this is a hung or dead worker, not a slow one.
    step_timeout_seconds: float = 120.0
    # Steps the driver submits ahead of the one it waits for: hides the driver's own latency.
    pipeline_depth: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pipeline_depth": self.pipeline_depth,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.num_cpus_per_worker < 0:
            raise ValueError(f"num_cpus_per_worker must be >= 0, got {self.num_cpus_per_worker}")
        if not self.step_timeout_seconds > 0:
            raise ValueError(f"step_timeout_seconds must be > 0, got {self.step_timeout_seconds}")
        if self.batch_size < self.num_workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be >= num_workers ({self.num_workers}): "
                "every worker takes at least one sample per step"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data_dir"] = str(self.data_dir)
        d["run_dir"] = str(self.run_dir)
        d["model"]["hidden_sizes"] = list(self.model.hidden_sizes)
        return d
