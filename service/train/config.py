"""The training job's configuration: one frozen, keyword-only dataclass, validated on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtrain.service.data.transport import TRANSPORTS
from dtrain.service.ps.optim import OptimizerConfig
from dtrain.workers.model import ModelSpec
from dtrain.workers.shards import is_uri

EXCHANGES: tuple[str, ...] = ("auto", "shared-memory", "object-store")
DEVICES: tuple[str, ...] = ("cpu", "gpu", "auto")


def option(help: str, *, name: str | None = None, **limits: Any) -> dict[str, Any]:
    """A field's command-line option: its help, its name if not the field's, and its bounds
    (``min``, ``max``, ``min_open``) or ``choices``; type and default are the field's own.
    """
    return {"help": help, "option": name, **limits}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training run. Each field's ``metadata`` is its ``dtrain train`` option: the CLI, job
    files and ``dtrain submit`` are generated from it (cli/options.py), so a field and its
    option cannot drift apart. A field without metadata is not an option.
    """

    # A local directory, or a pyarrow.fs URI (s3://..., file:///...) kept as a string.
    data_dir: Path | str = field(
        metadata=option(
            "Prepared Arrow dataset: a directory (the embedded MNIST is prepared there if "
            "missing) or a pyarrow.fs URI every node can read, e.g. s3://bucket/mnist or "
            "file:///shared/mnist. [default: $DTRAIN_DATA_DIR or ~/.cache/dtrain/mnist]"
        )
    )
    run_dir: Path = field(
        metadata=option("Where the checkpoint, history and summary go. [default: runs/<time>-<id>]")
    )
    # The chapter's Keras run.
    epochs: int = field(default=5, metadata=option("Passes over the training set.", min=1))
    # The chapter's Keras run.
    batch_size: int = field(
        default=128,
        metadata=option("Global mini-batch size, split across the workers.", min=1),
    )
    # One per core on the 2-core reference machine.
    num_workers: int = field(
        default=2, metadata=option("Worker actors computing gradients.", min=1)
    )
    model: ModelSpec = field(default_factory=ModelSpec)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    seed: int = field(
        default=0,
        metadata=option("Seed for the initial weights and every epoch's shuffle.", min=0),
    )
    num_cpus_per_worker: float = field(
        default=1.0,
        metadata=option("Ray CPUs reserved by each worker actor.", name="cpus-per-worker", min=0),
    )
    # Stop early after this many updates (smoke runs, tests).
    max_steps: int | None = field(
        default=None,
        metadata=option("Stop after this many updates (a quick smoke run).", min=1),
    )
    eval_every_epoch: bool = field(
        default=True,
        metadata=option("Evaluate on the test set after every epoch, not only at the end."),
    )
    # A step that takes longer than this is a hung or dead worker, not a slow one.
    step_timeout_seconds: float = field(
        default=120.0,
        metadata=option(
            "Seconds a step may take before its actors are declared hung and rebuilt.",
            name="step-timeout",
            min=0,
            min_open=True,
        ),
    )
    # Steps between checkpoints of the server's full state (0: only the final one).
    checkpoint_every: int = field(
        default=200,
        metadata=option(
            "Steps between checkpoints of the full training state (0: only the final one).",
            min=0,
        ),
    )
    # How weights and gradients move each step: "shared-memory" (one node, /dev/shm), the
    # "object-store" (any cluster), or "auto" (shared memory when the cluster has one node).
    exchange: str = field(
        default="auto",
        metadata=option(
            "How weights and gradients move per step: shared memory on one node, Ray's object "
            "store on any cluster; auto picks shared memory on a single-node cluster.",
            choices=EXCHANGES,
        ),
    )
    # Bounded staleness: step t's gradients use the weights after update max(0, t - 1 - k), so
    # the workers compute step t while the server applies step t - 1 (0: synchronous SGD).
    staleness: int = field(
        default=0,
        metadata=option(
            "Asynchronous steps: gradients may use weights up to this many updates old, so "
            "workers compute while the server updates (0: synchronous).",
            min=0,
        ),
    )
    # "cpu", "gpu" (CuPy workers, one GPU each) or "auto" (GPU workers where the cluster has GPUs).
    device: str = field(
        default="cpu",
        metadata=option(
            "Where workers compute: NumPy on CPUs, CuPy on GPUs (one each), or GPUs where present.",
            choices=DEVICES,
        ),
    )
    # With device "gpu": how many of the workers use a GPU (None: all); the rest stay on CPUs.
    num_gpu_workers: int | None = field(
        default=None,
        metadata=option(
            "With --device gpu: how many workers use a GPU; the rest compute on CPUs. "
            "[default: all]",
            name="gpu-workers",
            min=0,
        ),
    )
    # Rebuilds of lost actors (and Ray restarts of each worker) before the run gives up.
    max_restarts: int = field(
        default=3,
        metadata=option(
            "Actor restarts (per worker, and rebuilds from a checkpoint) before giving up.", min=0
        ),
    )
    # How training rows reach the workers: "local" (each reads data_dir), "object-store" (the
    # driver ships them), "auto" (object store for a local path on a multi-node cluster).
    data_transport: str = field(
        default="auto",
        metadata=option(
            "How training rows reach the workers: local: each reads --data-dir itself (a path "
            "on its node, or the URI); object-store: the driver ships them through Ray's object "
            "store, for nodes that cannot see its disk; auto: object-store for a path on a "
            "multi-node cluster.",
            choices=TRANSPORTS,
        ),
    )

    def __post_init__(self) -> None:
        # Path() would fold the "//" of a URI, so URIs stay strings.
        if not is_uri(self.data_dir):
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("checkpoint_every", "max_restarts", "staleness"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name, choices in (
            ("exchange", EXCHANGES),
            ("data_transport", TRANSPORTS),
            ("device", DEVICES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
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
        # Written by runs from before the step engine, which has no per-step submission to
        # pipeline: their directories still resume.
        d.pop("pipeline_depth", None)
        d["model"] = ModelSpec(**{**d.get("model", {})})
        d["optimizer"] = OptimizerConfig(**d.get("optimizer", {}))
        return cls(**d)
