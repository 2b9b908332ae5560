"""The training job's configuration: one frozen, keyword-only dataclass, validated on creation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtrain.service.data.transport import TRANSPORTS
from dtrain.service.paths import non_utf8
from dtrain.service.ps.optim import OptimizerConfig
from dtrain.workers.model import ModelSpec
from dtrain.workers.sampling import MAX_WORKERS
from dtrain.workers.shards import is_uri

EXCHANGES: tuple[str, ...] = ("auto", "shared-memory", "object-store")
DEVICES: tuple[str, ...] = ("cpu", "gpu", "auto")

# Bounds that keep a run inside what one machine's memory, file descriptors and NumPy accept;
# each is an option's max (cli/options.py), and each message names the field, so a user sees
# the limit instead of an OS error mid-run.
MAX_SEED = 2**32 - 1  # NumPy's seeding range
# Step t may use weights up to k updates old; every one of the k + 1 versions is a buffer (a
# shared-memory file per version), so k is bounded well below the open-file limit.
MAX_STALENESS = 32
MAX_CPUS_PER_WORKER = 1024.0
MAX_STEP_TIMEOUT_SECONDS = 7 * 24 * 3600.0
# float32 weights, velocity and k stale copies must fit in memory: 2**28 params are 1 GiB each.
MAX_PARAMS = 2**28


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
    # One per core on the 2-core reference machine; with ``min_workers`` below it, the most.
    # At most one per part of a batch (workers.sampling): a worker owns whole parts.
    num_workers: int = field(
        default=2,
        metadata=option(
            "Worker actors computing gradients: N, or MIN:MAX for an elastic run that goes on "
            "with as few as MIN workers when some are lost and grows back to MAX when the "
            "cluster has room (see README, Elastic runs).",
            min=1,
            max=MAX_WORKERS,
            lower_bound="min_workers",
            metavar="N|MIN:MAX",
        ),
    )
    # Only in an elastic run: its membership records the move, so a resume replays it.
    rebalance_stragglers: bool = field(
        default=True,
        metadata=option(
            "In an elastic run (--num-workers MIN:MAX), move parts of every batch from a "
            "straggler to the faster workers."
        ),
    )
    # The fewest workers an elastic run goes on with (None: num_workers, a fixed-size run).
    # Set through --num-workers MIN:MAX, so it has no option of its own.
    min_workers: int | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    seed: int = field(
        default=0,
        metadata=option(
            "Seed for the initial weights and every epoch's shuffle.", min=0, max=MAX_SEED
        ),
    )
    num_cpus_per_worker: float = field(
        default=1.0,
        metadata=option(
            "Ray CPUs reserved by each worker actor.",
            name="cpus-per-worker",
            min=0,
            max=MAX_CPUS_PER_WORKER,
        ),
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
            max=MAX_STEP_TIMEOUT_SECONDS,
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
            max=MAX_STALENESS,
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
        # Strict types: job files and config.json reach here too, and `epochs = true` or
        # `run-dir = [1, 2]` is a mistake to name, not a value to coerce.
        for name in ("data_dir", "run_dir"):
            if not isinstance(getattr(self, name), str | Path):
                raise TypeError(f"{name} must be a path string, got {getattr(self, name)!r}")
            if str(getattr(self, name)) == "":  # Path("") is the current directory
                raise ValueError(f"{name} must not be empty")
        # Path() would fold the "//" of a URI, so URIs stay strings.
        if not is_uri(self.data_dir):
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        for name in ("data_dir", "run_dir"):
            shown = non_utf8(getattr(self, name))
            if shown is not None:
                raise ValueError(
                    f"{name} {shown}: the name is not valid UTF-8, which Arrow and Ray need"
                )
        for name, kind in (("model", ModelSpec), ("optimizer", OptimizerConfig)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__}")
        for name in ("epochs", "batch_size"):
            check_int(name, getattr(self, name), 1)
        check_int("num_workers", self.num_workers, 1, MAX_WORKERS)
        for name in ("checkpoint_every", "max_restarts"):
            check_int(name, getattr(self, name), 0)
        check_int("staleness", self.staleness, 0, MAX_STALENESS)
        check_int("seed", self.seed, 0, MAX_SEED)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, 1)
        if self.num_gpu_workers is not None:
            check_int("num_gpu_workers", self.num_gpu_workers, 0)
        if self.min_workers is not None:
            check_int("min_workers", self.min_workers, 1, MAX_WORKERS)
            if self.min_workers > self.num_workers:
                raise ValueError(
                    f"num_workers MIN:MAX must have MIN <= MAX, got "
                    f"{self.min_workers}:{self.num_workers}"
                )
        for flag in ("eval_every_epoch", "rebalance_stragglers"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        for name, choices in (
            ("exchange", EXCHANGES),
            ("data_transport", TRANSPORTS),
            ("device", DEVICES),
        ):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string, got {value!r}")
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if self.num_gpu_workers is not None and not 0 <= self.num_gpu_workers <= self.num_workers:
            raise ValueError(
                f"num_gpu_workers must be between 0 and num_workers ({self.num_workers}), "
                f"got {self.num_gpu_workers}"
            )
        if self.num_gpu_workers is not None and self.device != "gpu":
            # Only device "gpu" reads it: elsewhere it would be dropped without a word.
            raise ValueError(
                f"num_gpu_workers applies to device gpu only, not {self.device}: give "
                "--device gpu with it, or leave it out"
            )
        check_float("num_cpus_per_worker", self.num_cpus_per_worker, 0.0, MAX_CPUS_PER_WORKER)
        check_float(
            "step_timeout_seconds", self.step_timeout_seconds, 0.0, MAX_STEP_TIMEOUT_SECONDS
        )
        if self.step_timeout_seconds == 0:
            raise ValueError("step_timeout_seconds must be > 0, got 0")
        if self.model.num_params > MAX_PARAMS:
            raise ValueError(
                f"hidden_sizes {list(self.model.hidden_sizes)} make {self.model.num_params} "
                f"parameters, more than the {MAX_PARAMS} one run can hold"
            )
        if self.batch_size < self.num_workers:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be >= num_workers ({self.num_workers}): "
                "a smaller batch leaves workers without samples"
            )

    @property
    def fewest_workers(self) -> int:
        """MIN of an elastic run; a fixed-size run's only size."""
        return self.num_workers if self.min_workers is None else self.min_workers

    @property
    def elastic(self) -> bool:
        return self.fewest_workers < self.num_workers

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["data_dir"] = str(self.data_dir)
        d["run_dir"] = str(self.run_dir)
        d["model"]["hidden_sizes"] = list(self.model.hidden_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict`` (a run's config.json); unknown keys are an error."""
        if not isinstance(d, dict):
            raise TypeError(f"the config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        # Written by runs from before the step engine, which has no per-step submission to
        # pipeline: their directories still resume.
        d.pop("pipeline_depth", None)
        for key, kind in (("model", ModelSpec), ("optimizer", OptimizerConfig)):
            section = d.get(key, {})
            if not isinstance(section, dict):
                raise TypeError(f"{key} must be an object, got {section!r}")
            unknown = sorted(set(section) - {f.name for f in dataclasses.fields(kind)})
            if unknown:
                raise TypeError(f"{key} has unknown keys: {', '.join(map(str, unknown))}")
        d["model"] = ModelSpec(**d.get("model", {}))
        d["optimizer"] = OptimizerConfig(**d.get("optimizer", {}))
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown keys: {', '.join(map(str, unknown))}")
        return cls(**d)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    # bool is an int to Python, but `epochs = true` in a job file is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")


def check_float(name: str, value: Any, low: float, high: float) -> None:
    # FiniteFloat refuses nan and inf on the command line; config.json and job files come here.
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}")
