"""What one ``dtrain bench`` run measures: batch sizes, worker counts, steps, the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dtrain.service.ps.optim import OptimizerConfig
from dtrain.service.train.config import MAX_STALENESS, option
from dtrain.workers.model import ModelSpec
from dtrain.workers.sampling import MAX_WORKERS

# Steady-state defaults: the first steps pay for Ray's actor start, first-touch page faults
# and BLAS warm-up.
DEFAULT_WARMUP_STEPS = 20
QUICK_STEPS = 8
QUICK_WARMUP_STEPS = 2
# Steps of the zero-compute probe (fake workers); it needs fewer than training to settle.
# The simulation (--simulate, benchmarks/simulate.py) runs as many steps.
PROBE_STEPS = 60
QUICK_PROBE_STEPS = 5
# The probe and the simulation have no BLAS or first-touch cost to wait out: a few steps do.
PROBE_WARMUP_STEPS = 5
# Fake worker counts of the simulation: the trend up to 16, or a smoke run.
SIM_WORKERS = (1, 2, 4, 8, 16)
QUICK_SIM_WORKERS = (1, 2)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    data_dir: Path
    batch_sizes: tuple[int, ...] = (128, 512)
    workers: tuple[int, ...] = (1, 2)
    # dtrain's bounded staleness: a run per value at every batch size and worker count.
    staleness: tuple[int, ...] = (0, 1)
    steps: int | None = None  # measured steps per variant; None: one epoch at each batch size
    warmup_steps: int = DEFAULT_WARMUP_STEPS
    use_torch: bool | None = None  # None: when torch is importable
    probe: bool = True
    probe_steps: int = PROBE_STEPS
    simulate: bool = False
    sim_workers: tuple[int, ...] = SIM_WORKERS
    seed: int = 0
    # dtrain's step exchange (TrainConfig.exchange); the probe always measures the object store.
    exchange: str = "auto"
    # dtrain's workers: "cpu", or "gpu" (CuPy) to compare GPU workers with the CPU loops.
    device: str = "cpu"
    # The only bench option defined by its field (cli/bench_cmd.py): the others predate that.
    two_node: bool = field(
        default=False,
        metadata=option(
            "Also time dtrain on a two-node Ray cluster that the bench starts on loopback "
            "(token auth, both nodes on this machine, stopped at the end): rows marked "
            "'2-node' with their ratio to the same NumPy loop. The step exchange then goes "
            "through Ray's object store; on a machine with few cores the two nodes share them "
            "(oversubscribed), so the rows price the multi-node path, not a speed-up."
        ),
    )
    rounds: int = field(
        default=1,
        metadata=option(
            "Run every variant this many times, each round with its own NumPy loop, and report "
            "each row from its median round by the ratio to that round's loop (the higher "
            "middle one for an even count), with every round's ratio beside it: on a shared "
            "machine one round's ratio is a draw from the host's load. The probe, the "
            "simulation and the peak memory are the first round's.",
            min=1,
        ),
    )
    model: ModelSpec = field(default_factory=ModelSpec)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("batch_sizes", "workers", "sim_workers"):
            values = tuple(getattr(self, name))
            object.__setattr__(self, name, values)
            if any(v < 1 for v in values):
                raise ValueError(f"{name} must all be >= 1, got {list(values)}")
        object.__setattr__(self, "staleness", tuple(self.staleness))
        if not self.staleness or any(k < 0 for k in self.staleness):
            raise ValueError(f"staleness must name values >= 0, got {list(self.staleness)}")
        # Each dtrain variant is a TrainConfig: past its bounds it would fail only when that
        # variant's turn came, after minutes of the variants before it.
        if any(w > MAX_WORKERS for w in self.workers):
            raise ValueError(f"workers must all be <= {MAX_WORKERS}, got {list(self.workers)}")
        if any(k > MAX_STALENESS for k in self.staleness):
            raise ValueError(
                f"staleness must name values <= {MAX_STALENESS}, got {list(self.staleness)}"
            )
        if not self.batch_sizes:
            raise ValueError("batch_sizes must name at least one batch size")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.two_node and self.exchange == "shared-memory":
            raise ValueError(
                "two_node: the two-node cluster's step exchange goes through the object store, "
                "not --exchange shared-memory (use auto)"
            )
        for b in self.batch_sizes:
            for w in self.workers:
                if b < w:
                    raise ValueError(f"batch size {b} is smaller than {w} workers")

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A smoke run for CI: every variant, a handful of steps (not steady-state numbers)."""
        kwargs: dict[str, Any] = {
            "steps": QUICK_STEPS,
            "warmup_steps": QUICK_WARMUP_STEPS,
            "probe_steps": QUICK_PROBE_STEPS,
            "sim_workers": QUICK_SIM_WORKERS,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_options(cls, *, quick: bool = False, **options: Any) -> BenchConfig:
        """From ``dtrain bench``'s options: one left unset (None) takes its default, and a
        ``data_dir`` left unset is the one ``dtrain train`` uses."""
        from dtrain.service.data.dataset import default_data_dir

        kwargs = {k: v for k, v in options.items() if v is not None}
        kwargs.setdefault("data_dir", default_data_dir())
        return cls.quick(**kwargs) if quick else cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        return d
