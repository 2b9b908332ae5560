"""The training job's configuration: one frozen, keyword-only dataclass, validated on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtrain.service.ps.optim import OptimizerConfig
from dtrain.workers.model import ModelSpec
from dtrain.workers.shards import is_uri


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    # A local directory, or a pyarrow.fs URI (s3://..., file:///...) kept as a string.
    data_dir: Path | str
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
    # Steps between checkpoints of the server's full state (0: only the final one).
    checkpoint_every: int = 200
    # How weights and gradients move each step: "shared-memory" (one node, /dev/shm), the
    # "object-store" (any cluster), or "auto" (shared memory when the cluster has one node).
    exchange: str = "auto"
    # Bounded staleness: step t's gradients use the weights after update max(0, t - 1 - k), so
    # the workers compute step t while the server applies step t - 1 (0: synchronous SGD).
    staleness: int = 0
    # "cpu", "gpu" (CuPy workers, one GPU each) or "auto" (GPU workers where the cluster has GPUs).
    device: str = "cpu"
    # With device "gpu": how many of the workers use a GPU (None: all); the rest stay on CPUs.
    num_gpu_workers: int | None = None
    # Rebuilds of lost actors (and Ray restarts of each worker) before the run gives up.
    max_restarts: int = 3
    # How training rows reach the workers: "local" (each reads data_dir), "object-store" (the
    # driver ships them), "auto" (object store for a local path on a multi-node cluster).
    data_transport: str = "auto"

    def __post_init__(self) -> None:
        # Path() would fold the "//" of a URI, so URIs stay strings.
        if not is_uri(self.data_dir):
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
        for name in ("checkpoint_every", "max_restarts", "staleness"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.exchange not in ("auto", "shared-memory", "object-store"):
            raise ValueError(
                f"exchange must be one of auto, shared-memory, object-store, got {self.exchange!r}"
            )
        if self.data_transport not in ("auto", "local", "object-store"):
            raise ValueError(
                "data_transport must be one of auto, local, object-store, "
                f"got {self.data_transport!r}"
            )
        if self.device not in ("cpu", "gpu", "auto"):
            raise ValueError(f"device must be one of cpu, gpu, auto, got {self.device!r}")
        if self.num_gpu_workers is not None and not 0 <= self.num_gpu_workers <= self.num_workers:
            raise ValueError(
                f"num_gpu_workers must be between 0 and num_workers ({self.num_workers}), "
                f"got {self.num_gpu_workers}"
            )
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict`` (a run's config.json); unknown keys are an error."""
        d = dict(d)
        d["model"] = ModelSpec(**{**d.get("model", {})})
        d["optimizer"] = OptimizerConfig(**d.get("optimizer", {}))
        return cls(**d)
