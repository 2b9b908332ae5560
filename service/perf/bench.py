"""``dtrain bench``: dtrain against the arithmetic floor and single-process loops, in one run.

Every variant trains the same network with the same optimizer on the same prepared data, from
the same initial weights, for the same number of steps (a warm-up, then the measured steps), so
the ratios in one report compare like with like even when the absolute numbers drift between
machines or with the load on this one. Variants:

- ``floor``: only the step's matrix products (sgemm on its exact shapes), no other work;
- ``numpy``: the plain loop: ``Network.loss_and_grad`` and ``Optimizer`` in one process, drawing
  batches exactly as a single dtrain worker does, so dtrain with one worker ends with the same
  weights up to sgemm rounding;
- ``torch``: the equivalent ``nn.Sequential`` with ``torch.optim.SGD`` (when torch imports);
- ``dtrain``: ``Trainer`` on Ray with 1, 2, ... workers, with a per-step breakdown from its
  ``StepStats`` and the peak resident memory of the driver and its actor processes.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np
from dtrain.service import __version__
from dtrain.service.data import dataset
from dtrain.service.errors import DtrainError
from dtrain.service.observe.observers import Observer
from dtrain.service.observe.stats import EpochStats, JobInfo, RunSummary, StepStats
from dtrain.service.ps.optim import Optimizer, OptimizerConfig
from dtrain.service.train import checkpoint
from dtrain.workers.model import ModelSpec, Network, init_params
from dtrain.workers.shards import ShardError, read_rows, to_float

Progress = Callable[[str], None]

SCHEMA = "dtrain-bench/1"
# Keys of the top-level JSON object (``dtrain bench --json``), documented in docs/performance.md.
REPORT_KEYS = frozenset(
    {
        "schema",
        "version",
        "created",
        "machine",
        "config",
        "results",
        "dtrain_breakdown",
        "transfer_probe",
        "targets",
        "torch",
        "simulation",
    }
)
ROW_KEYS = frozenset(
    {
        "variant",
        "batch_size",
        "workers",
        "steps",
        "total_steps",
        "steps_per_epoch",
        "step_seconds",
        "epoch_seconds",
        "samples_per_second",
        "ratio_to_numpy",
        "test_accuracy",
        "gflop_per_second",
    }
)

# The issue's targets for dtrain (sync, 2 workers) relative to the plain NumPy loop.
TARGET_RATIOS: dict[int, float] = {128: 1.3, 512: 1.1}
TARGET_WORKERS = 2
TARGET_PEAK_RSS_BYTES = 2 * 1024**3
# "Test accuracy unchanged": different shuffles (2 workers draw their halves separately) move
# the test accuracy after one epoch by a few tenths of a percent, not more.
ACCURACY_TOLERANCE = 0.005

# Steady-state defaults: the first steps pay for Ray's actor start, first-touch page faults
# and BLAS warm-up.
DEFAULT_WARMUP_STEPS = 20
QUICK_STEPS = 8
QUICK_WARMUP_STEPS = 2
# Steps of the zero-compute probe (fake workers); it needs fewer than training to settle.
PROBE_STEPS = 60
QUICK_PROBE_STEPS = 5
# A model with 6 parameters: the probe step whose payload is negligible.
TINY_SPEC = ModelSpec(input_size=2, hidden_sizes=(), num_classes=2)


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    data_dir: Path
    batch_sizes: tuple[int, ...] = (128, 512)
    workers: tuple[int, ...] = (1, 2)
    steps: int | None = None  # measured steps per variant; None: one epoch at each batch size
    warmup_steps: int = DEFAULT_WARMUP_STEPS
    use_torch: bool | None = None  # None: when torch is importable
    probe: bool = True
    probe_steps: int = PROBE_STEPS
    simulate: bool = False
    sim_workers: tuple[int, ...] = (1, 2, 4, 8, 16)
    seed: int = 0
    # dtrain's step exchange (TrainConfig.exchange); the probe always measures the object store.
    exchange: str = "auto"
    # dtrain's workers: "cpu", or "gpu" (CuPy) to compare GPU workers with the CPU loops.
    device: str = "cpu"
    model: ModelSpec = field(default_factory=ModelSpec)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("batch_sizes", "workers", "sim_workers"):
            values = tuple(getattr(self, name))
            object.__setattr__(self, name, values)
            if any(v < 1 for v in values):
                raise ValueError(f"{name} must all be >= 1, got {list(values)}")
        if not self.batch_sizes:
            raise ValueError("batch_sizes must name at least one batch size")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
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
            "sim_workers": (1, 2),
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        return d


# --- the arithmetic ---------------------------------------------------------------------------


def matmul_shapes(spec: ModelSpec, batch: int) -> list[tuple[str, int, int, int]]:
    """(role, m, k, n) of every (m, k) @ (k, n) product in one training step.

    Forward ``x @ W`` per layer; backward ``x.T @ grad_z`` (dW) per layer and ``grad_z @ W.T``
    (dx) for every layer but the first, whose input needs no gradient.
    """
    shapes = [
        (f"forward {i}", batch, n_in, n_out) for i, (n_in, n_out) in enumerate(spec.layer_shapes)
    ]
    for i, (n_in, n_out) in enumerate(spec.layer_shapes):
        shapes.append((f"dW {i}", n_in, batch, n_out))
        if i > 0:
            shapes.append((f"dx {i}", batch, n_out, n_in))
    return shapes


def step_flops(spec: ModelSpec, batch: int) -> int:
    """Floating-point operations of the step's matrix products (2 per multiply-add)."""
    return sum(2 * m * k * n for _, m, k, n in matmul_shapes(spec, batch))


@dataclass(frozen=True)
class Timed:
    """Per-step wall times of one variant and what it ended with."""

    step_seconds: list[float]
    params: np.ndarray | None = None
    test_accuracy: float | None = None


def time_floor(spec: ModelSpec, batch: int, total_steps: int, seed: int = 0) -> Timed:
    """The step's matrix products alone, with preallocated outputs and the same transposes."""
    rng = np.random.default_rng(seed)
    ops: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i, (n_in, n_out) in enumerate(spec.layer_shapes):
        x = rng.random((batch, n_in), dtype=np.float32)
        w = rng.random((n_in, n_out), dtype=np.float32)
        gz = rng.random((batch, n_out), dtype=np.float32)
        ops.append((x, w, np.empty((batch, n_out), np.float32)))  # (B, in) @ (in, out)
        ops.append((x.T, gz, np.empty((n_in, n_out), np.float32)))  # (in, B) @ (B, out)
        if i > 0:
            ops.append((gz, w.T, np.empty((batch, n_in), np.float32)))  # (B, out) @ (out, in)
    times = []
    for _ in range(total_steps):
        t0 = time.perf_counter()
        for a, b, out in ops:
            np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return Timed(times)


@dataclass(frozen=True)
class TrainData:
    train_x: np.ndarray  # (n, 784) float32 in [0, 1]
    train_y: np.ndarray  # (n,) int64
    test_x: np.ndarray
    test_y: np.ndarray  # (n,) uint8, as the driver evaluates

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])


def load_data(data_dir: Path) -> TrainData:
    manifest = dataset.ensure_prepared(data_dir)
    try:
        x, y = read_rows(data_dir, manifest, "train", 0, manifest["splits"]["train"]["num_samples"])
        tx, ty = read_rows(data_dir, manifest, "test", 0, manifest["splits"]["test"]["num_samples"])
    except ShardError as e:
        raise DtrainError(str(e)) from e
    return TrainData(to_float(x), y.astype(np.int64), to_float(tx), ty)


def single_worker_batches(
    num_samples: int, batch: int, total_steps: int, seed: int
) -> list[tuple[int, np.ndarray]]:
    """(epoch, sorted row indices) of each step, drawn as the rank-0 worker of a 1-worker run
    draws them (``WorkerCore.batch_indices``), so the loops and dtrain see the same batches."""
    spe = math.ceil(num_samples / batch)
    out: list[tuple[int, np.ndarray]] = []
    epoch = 0
    perm = np.arange(0)
    for step in range(total_steps):
        if step % spe == 0:
            epoch += 1
            perm = np.random.default_rng([seed, epoch, 0]).permutation(num_samples)
        s = step % spe
        out.append((epoch, np.sort(perm[s * batch : (s + 1) * batch])))
    return out


def numpy_loop(
    data: TrainData,
    spec: ModelSpec,
    optimizer: OptimizerConfig,
    batch: int,
    total_steps: int,
    seed: int,
) -> Timed:
    """The plain loop: the parameter server's arithmetic on the whole batch, one process.

    Mean gradient as ``ServerCore`` forms it (summed, then times 1/count in float32) and the
    cosine learning rate over ``total_steps``: a 1-worker dtrain run's arithmetic exactly, up to
    how many BLAS threads each runs sgemm with.
    """
    net = Network(spec)
    params = init_params(spec, seed)
    opt = Optimizer(optimizer, spec.num_params)
    grad = np.empty_like(params)
    times = []
    for step, (_, idx) in enumerate(
        single_worker_batches(data.num_train, batch, total_steps, seed)
    ):
        t0 = time.perf_counter()
        _, _, g = net.loss_and_grad(params, data.train_x[idx], data.train_y[idx], grad)
        g *= np.float32(1.0 / len(idx))
        opt.step(params, g, optimizer.learning_rate_at(step, total_steps))
        times.append(time.perf_counter() - t0)
    _, acc = net.evaluate(params, data.test_x, data.test_y)
    return Timed(times, params, acc)


def import_torch() -> ModuleType | None:
    try:
        import torch
    except ImportError:
        return None
    return cast(ModuleType, torch)


def torch_loop(
    torch: ModuleType,
    data: TrainData,
    spec: ModelSpec,
    optimizer: OptimizerConfig,
    batch: int,
    total_steps: int,
    seed: int,
    threads: int,
) -> Timed:
    """``nn.Sequential(Linear, ReLU, ..., Linear)`` with ``torch.optim.SGD``, same batches.

    Starts from dtrain's initial weights. torch's Nesterov and classical momentum are the
    chapter's formulas rewritten for a constant learning rate; under the cosine schedule they
    differ slightly, which shows only in the last digits of the accuracy.
    """
    torch.set_num_threads(threads)
    nn = torch.nn
    layers: list[Any] = []
    last = len(spec.layer_shapes) - 1
    init = Network(spec).layout.unflatten(init_params(spec, seed))
    for i, ((n_in, n_out), (w, b)) in enumerate(zip(spec.layer_shapes, init, strict=True)):
        linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))  # (out, in)
            linear.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(linear)
        if i < last:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    momentum = 0.0 if optimizer.name == "sgd" else optimizer.momentum
    opt = torch.optim.SGD(
        model.parameters(),
        lr=optimizer.learning_rate,
        momentum=momentum,
        nesterov=optimizer.name == "nesterov",
    )
    loss_fn = nn.CrossEntropyLoss()
    x_all = torch.from_numpy(data.train_x)
    y_all = torch.from_numpy(data.train_y)
    times = []
    for step, (_, idx) in enumerate(
        single_worker_batches(data.num_train, batch, total_steps, seed)
    ):
        t0 = time.perf_counter()
        rows = torch.from_numpy(idx)
        for group in opt.param_groups:
            group["lr"] = optimizer.learning_rate_at(step, total_steps)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_all[rows]), y_all[rows])
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        pred = model(torch.from_numpy(data.test_x)).argmax(dim=1).numpy()
    return Timed(times, None, float((pred == data.test_y).mean()))


# --- dtrain and its processes --------------------------------------------------------------------

# Ray titles an actor's process ``ray::<Class>`` (``ray::<Class>.<method>`` while it runs one).
ACTOR_TITLE = re.compile(r"^ray::(Worker|ParameterServer)(\.|$)")
PROC = Path("/proc")


def _ppid(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and ")", so split after the last ")".
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(root: int) -> set[int]:
    """Every process below ``root``: a local Ray's raylet, and so its actors, descend from the
    driver that started it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            parent = _ppid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def process_title(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """The process's peak resident set (VmHWM), or None where /proc does not say."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Restart this process's VmHWM from its current RSS (Linux >= 4.0: clear_refs "5")."""
    try:
        (PROC / "self" / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


class JobMemory:
    """Peak RSS of this driver and of the run's actor processes.

    The actors' processes are found by their title among this process's descendants, which holds
    when this process started the local Ray; processes already titled so before the run (a
    previous run's, being killed) are left out. Shared object-store pages count once per process
    that touched them, so the sum is an upper bound.
    """

    def __init__(self) -> None:
        self._before: set[int] = set()
        self.actors: dict[int, tuple[str, int]] = {}
        self.driver: int | None = None
        self.driver_reset = False

    def _actor_pids(self) -> dict[int, str]:
        if not PROC.is_dir():
            return {}
        out = {}
        for pid in descendants(os.getpid()):
            title = process_title(pid)
            if ACTOR_TITLE.match(title):
                out[pid] = title.split(".", 1)[0].removeprefix("ray::")
        return out

    def start(self) -> None:
        self._before = set(self._actor_pids())
        self.driver_reset = reset_peak_rss()

    def sample_actors(self) -> None:
        for pid, role in self._actor_pids().items():
            if pid in self._before:
                continue
            peak = peak_rss_bytes(pid)
            if peak is not None:
                self.actors[pid] = (role, max(peak, self.actors.get(pid, (role, 0))[1]))

    def sample_driver(self) -> None:
        self.driver = peak_rss_bytes()

    @property
    def total_bytes(self) -> int | None:
        if self.driver is None or not self.actors:
            return None
        return self.driver + sum(peak for _, peak in self.actors.values())

    def processes(self) -> list[dict[str, Any]]:
        rows = [{"role": "driver", "pid": os.getpid(), "peak_rss_bytes": self.driver}]
        rows += [
            {"role": role, "pid": pid, "peak_rss_bytes": peak}
            for pid, (role, peak) in sorted(self.actors.items())
        ]
        return rows


class StepRecorder(Observer):
    """Keeps every ``StepStats`` and samples the job's memory at the last step and the end."""

    def __init__(self, last_step: int) -> None:
        self.last_step = last_step
        self.steps: list[StepStats] = []
        self.memory = JobMemory()
        self.info: JobInfo | None = None
        self.epochs: list[EpochStats] = []

    def on_start(self, info: JobInfo) -> None:
        self.info = info
        self.memory.start()

    def on_step(self, stats: StepStats) -> None:
        self.steps.append(stats)
        # Actors are alive until the driver kills them after the last step; VmHWM only grows.
        if stats.step >= self.last_step:
            self.memory.sample_actors()

    def on_epoch(self, stats: EpochStats) -> None:
        self.epochs.append(stats)

    def on_end(self, summary: RunSummary | None, error: BaseException | None) -> None:
        self.memory.sample_driver()


@dataclass(frozen=True)
class DtrainRun:
    timed: Timed
    steps: list[StepStats]
    steps_per_epoch: int
    memory: JobMemory


def dtrain_run(
    cfg: BenchConfig, batch: int, workers: int, total_steps: int, run_root: Path
) -> DtrainRun:
    from dtrain.service.train.config import TrainConfig
    from dtrain.service.train.trainer import Trainer

    n_train = int(dataset.read_manifest(cfg.data_dir)["splits"]["train"]["num_samples"])
    epochs = math.ceil(total_steps / math.ceil(n_train / batch)) + 1  # enough; max_steps stops it
    config = TrainConfig(
        data_dir=cfg.data_dir,
        run_dir=run_root / f"dtrain-b{batch}-w{workers}",
        epochs=epochs,
        batch_size=batch,
        num_workers=workers,
        model=cfg.model,
        optimizer=cfg.optimizer,
        seed=cfg.seed,
        max_steps=total_steps,
        eval_every_epoch=False,
        exchange=cfg.exchange,
        device=cfg.device,
    )
    recorder = StepRecorder(total_steps)
    summary = Trainer(config, [recorder]).run()
    params = checkpoint.load(Path(summary.checkpoint)).params
    if len(recorder.steps) != total_steps or recorder.info is None:
        raise DtrainError(
            f"dtrain reported {len(recorder.steps)} steps, expected {total_steps}: "
            "the bench cannot time it"
        )
    timed = Timed([s.step_seconds for s in recorder.steps], params, summary.test_accuracy)
    return DtrainRun(timed, recorder.steps, recorder.info.steps_per_epoch, recorder.memory)


# --- the report ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Row:
    variant: str
    batch_size: int
    workers: int | None
    steps: int  # measured
    total_steps: int  # warm-up and measured: what the model trained for
    steps_per_epoch: int
    step_seconds: float
    epoch_seconds: float
    samples_per_second: float
    ratio_to_numpy: float | None = None
    test_accuracy: float | None = None
    gflop_per_second: float | None = None


def make_row(
    variant: str,
    batch: int,
    workers: int | None,
    timed: Timed,
    warmup: int,
    steps_per_epoch: int,
    flops: int | None = None,
) -> Row:
    measured = timed.step_seconds[warmup:] or timed.step_seconds
    step = statistics.fmean(measured)
    return Row(
        variant=variant,
        batch_size=batch,
        workers=workers,
        steps=len(measured),
        total_steps=len(timed.step_seconds),
        steps_per_epoch=steps_per_epoch,
        step_seconds=step,
        epoch_seconds=step * steps_per_epoch,
        samples_per_second=batch / step,
        test_accuracy=timed.test_accuracy,
        gflop_per_second=flops / step / 1e9 if flops else None,
    )


@dataclass(kw_only=True)
class Breakdown:
    """Mean seconds per measured dtrain step, split by where the time went."""

    batch_size: int
    workers: int
    step_seconds: float
    worker_compute_seconds: float  # the slowest worker's forward and backward
    aggregate_seconds: float  # the server summing and averaging the gradients
    update_seconds: float  # the server's optimizer step
    overhead_seconds: float  # the rest: serialization, transfer, scheduling, the driver
    transfer_seconds: float | None  # of the overhead, the probe's payload cost (see below)
    scheduling_seconds: float | None  # the overhead less the transfer
    peak_rss_bytes: int | None
    peak_rss_gib: float | None
    processes: list[dict[str, Any]]
    # 1 worker only: the same batches, schedule and arithmetic as the numpy loop, so the final
    # weights differ only by the rounding of sgemm run with Ray's 1 BLAS thread (OMP_NUM_THREADS=1
    # in a 1-CPU actor) instead of the loop's 2: 1e-8 after a step, 1e-6 after an epoch, where
    # another batch order gives 1e-3.
    max_weight_difference_to_numpy: float | None


def make_breakdown(
    run: DtrainRun, batch: int, workers: int, warmup: int, numpy_params: np.ndarray | None
) -> Breakdown:
    measured = run.steps[warmup:] or run.steps
    step = statistics.fmean(s.step_seconds for s in measured)
    compute = statistics.fmean(max(s.worker_compute_seconds, default=0.0) for s in measured)
    aggregate = statistics.fmean(s.aggregate_seconds for s in measured)
    update = statistics.fmean(s.update_seconds for s in measured)
    total = run.memory.total_bytes
    diff = None
    if workers == 1 and numpy_params is not None and run.timed.params is not None:
        diff = float(np.abs(run.timed.params - numpy_params).max())
    return Breakdown(
        batch_size=batch,
        workers=workers,
        step_seconds=step,
        worker_compute_seconds=compute,
        aggregate_seconds=aggregate,
        update_seconds=update,
        overhead_seconds=step - compute - aggregate - update,
        transfer_seconds=None,
        scheduling_seconds=None,
        peak_rss_bytes=total,
        peak_rss_gib=total / 1024**3 if total is not None else None,
        processes=run.memory.processes(),
        max_weight_difference_to_numpy=diff,
    )


@dataclass(frozen=True, kw_only=True)
class Probe:
    """A step with the math taken out (fake workers, the real ParameterServer), two payloads.

    ``transfer_seconds`` is the difference between the full-size and the 6-float payload in
    what remains of a step after the server's own work: serialization and object-store moves.
    """

    workers: int
    steps: int
    full_step_seconds: float
    tiny_step_seconds: float
    transfer_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_probe(spec: ModelSpec, workers: int, steps: int, warmup: int) -> Probe:
    import ray
    from dtrain.service.perf.simulate import simulate, start_fake_workers

    fakes = start_fake_workers(workers, spec.num_params)
    try:
        full = simulate(fakes, spec=spec, steps=steps, warmup_steps=warmup)
        tiny = simulate(fakes, spec=TINY_SPEC, steps=steps, warmup_steps=warmup)
    finally:
        for f in fakes:
            ray.kill(f)

    def rest(s: Any) -> float:
        return cast(float, s.step_seconds - s.aggregate_seconds - s.update_seconds)

    return Probe(
        workers=workers,
        steps=steps,
        full_step_seconds=full.step_seconds,
        tiny_step_seconds=tiny.step_seconds,
        transfer_seconds=rest(full) - rest(tiny),
    )


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    limit: str
    measured: str
    met: bool


@dataclass(kw_only=True)
class BenchReport:
    config: BenchConfig
    machine: dict[str, Any]
    rows: list[Row]
    breakdown: list[Breakdown]
    probes: list[Probe]
    targets: list[Target]
    torch: dict[str, Any]
    simulation: dict[str, Any] | None = None
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": __version__,
            "created": self.created,
            "machine": self.machine,
            "config": self.config.to_dict(),
            "results": [asdict(r) for r in self.rows],
            "dtrain_breakdown": [asdict(b) for b in self.breakdown],
            "transfer_probe": [p.to_dict() for p in self.probes],
            "targets": [asdict(t) for t in self.targets],
            "torch": self.torch,
            "simulation": self.simulation,
        }


def machine_info(torch: ModuleType | None) -> dict[str, Any]:
    import ray

    blas = None
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]["name"]
    except (TypeError, KeyError):
        pass
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "ray": ray.__version__,
        "torch": getattr(torch, "__version__", None),
    }


def find_row(rows: Sequence[Row], variant: str, batch: int, workers: int | None) -> Row | None:
    for r in rows:
        if r.variant == variant and r.batch_size == batch and r.workers == workers:
            return r
    return None


def evaluate_targets(rows: Sequence[Row], breakdown: Sequence[Breakdown]) -> list[Target]:
    targets = []
    for batch, limit in TARGET_RATIOS.items():
        row = find_row(rows, "dtrain", batch, TARGET_WORKERS)
        if row is not None and row.ratio_to_numpy is not None:
            targets.append(
                Target(
                    name=f"dtrain {TARGET_WORKERS} workers, batch {batch}: s/epoch vs numpy loop",
                    limit=f"<= {limit}x",
                    measured=f"{row.ratio_to_numpy:.2f}x",
                    met=row.ratio_to_numpy <= limit,
                )
            )
    peaks = [b.peak_rss_bytes for b in breakdown if b.peak_rss_bytes is not None]
    if peaks:
        peak = max(peaks)
        targets.append(
            Target(
                name="peak RSS of the whole job (driver + server + workers)",
                limit=f"< {TARGET_PEAK_RSS_BYTES / 1024**3:.0f} GiB",
                measured=f"{peak / 1024**3:.2f} GiB",
                met=peak < TARGET_PEAK_RSS_BYTES,
            )
        )
    for r in rows:
        # Before an epoch is done, the accuracy still moves by points from step to step.
        if r.variant != "dtrain" or r.test_accuracy is None or r.total_steps < r.steps_per_epoch:
            continue
        ref = find_row(rows, "numpy", r.batch_size, 1)
        if ref is None or ref.test_accuracy is None:
            continue
        delta = r.test_accuracy - ref.test_accuracy
        targets.append(
            Target(
                name=f"test accuracy, dtrain {r.workers} workers, batch {r.batch_size} vs numpy",
                limit=f"|delta| <= {ACCURACY_TOLERANCE}",
                measured=f"{r.test_accuracy:.4f} vs {ref.test_accuracy:.4f}",
                met=abs(delta) <= ACCURACY_TOLERANCE,
            )
        )
    return targets


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> BenchReport:
    """Every variant at every batch size; Ray is joined if initialised, else started locally."""
    from dtrain.service.train.trainer import ray_session

    say = progress or (lambda _msg: None)
    if cfg.use_torch is False:
        torch, torch_status = None, {"used": False, "reason": "--no-torch"}
    else:
        torch = import_torch()
        if torch is None and cfg.use_torch:
            raise DtrainError("--torch: PyTorch is not installed (pip install torch)")
        torch_status = {
            "used": torch is not None,
            "reason": None if torch is not None else "torch is not installed",
        }
    manifest = dataset.ensure_prepared(cfg.data_dir)
    n_train = int(manifest["splits"]["train"]["num_samples"])
    plans = {
        b: (
            cfg.steps if cfg.steps is not None else math.ceil(n_train / b),
            math.ceil(n_train / b),
        )
        for b in cfg.batch_sizes
    }
    warm = cfg.warmup_steps
    runs: dict[tuple[int, int], DtrainRun] = {}
    probes: list[Probe] = []
    simulation = None
    num_cpus = max(os.cpu_count() or 1, max(cfg.workers, default=1))
    # dtrain first: the driver's memory peak is then its own, not the loops' copies of the data.
    with ray_session(None, num_cpus), tempfile.TemporaryDirectory(prefix="dtrain-bench-") as tmp:
        for batch, (steps, _) in plans.items():
            for w in cfg.workers:
                say(f"dtrain: batch {batch}, {w} workers, {warm} + {steps} steps")
                runs[(batch, w)] = dtrain_run(cfg, batch, w, warm + steps, Path(tmp))
        if cfg.probe:
            for w in cfg.workers:
                say(f"probe: {w} fake workers, full and tiny payload")
                probes.append(run_probe(cfg.model, w, cfg.probe_steps, min(warm, 5)))
        if cfg.simulate:
            from dtrain.service.perf.simulate import run_simulation

            steps = cfg.probe_steps
            simulation = run_simulation(
                spec=cfg.model,
                worker_counts=cfg.sim_workers,
                steps=steps,
                warmup_steps=min(warm, 5),
                progress=say,
            ).to_dict()

    say("loading the training data for the single-process loops")
    data = load_data(cfg.data_dir)
    rows: list[Row] = []
    breakdown: list[Breakdown] = []
    threads = os.cpu_count() or 1
    for batch, (steps, spe) in plans.items():
        total = warm + steps
        say(f"floor and loops: batch {batch}")
        floor = time_floor(cfg.model, batch, total, cfg.seed)
        rows.append(make_row("floor", batch, None, floor, warm, spe, step_flops(cfg.model, batch)))
        plain = numpy_loop(data, cfg.model, cfg.optimizer, batch, total, cfg.seed)
        rows.append(make_row("numpy", batch, 1, plain, warm, spe))
        if torch is not None:
            timed = torch_loop(
                torch, data, cfg.model, cfg.optimizer, batch, total, cfg.seed, threads
            )
            rows.append(make_row("torch", batch, 1, timed, warm, spe))
        for w in cfg.workers:
            run = runs[(batch, w)]
            rows.append(make_row("dtrain", batch, w, run.timed, warm, run.steps_per_epoch))
            breakdown.append(make_breakdown(run, batch, w, warm, plain.params))
    for r in rows:
        ref = find_row(rows, "numpy", r.batch_size, 1)
        if ref is not None:
            r.ratio_to_numpy = r.epoch_seconds / ref.epoch_seconds
    # The probe prices moving the arrays through the object store; the shared-memory exchange
    # (what "auto" picks on this single-node local Ray) moves none, so none of its overhead is
    # that payload.
    by_workers = {p.workers: p for p in probes}
    for b in breakdown:
        probe = by_workers.get(b.workers)
        if cfg.exchange != "object-store":
            b.transfer_seconds = 0.0
            b.scheduling_seconds = b.overhead_seconds
        elif probe is not None:
            b.transfer_seconds = min(max(probe.transfer_seconds, 0.0), max(b.overhead_seconds, 0.0))
            b.scheduling_seconds = b.overhead_seconds - b.transfer_seconds
    return BenchReport(
        config=cfg,
        machine=machine_info(torch),
        rows=rows,
        breakdown=breakdown,
        probes=probes,
        targets=evaluate_targets(rows, breakdown),
        torch=torch_status,
        simulation=simulation,
    )


VARIANT_NAMES = {
    "floor": "sgemm floor",
    "numpy": "numpy loop",
    "torch": "torch loop",
    "dtrain": "dtrain",
}


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def format_report(report: BenchReport) -> str:
    lines = [
        f"dtrain bench {report.created}: {report.machine['cpus']} CPUs, numpy "
        f"{report.machine['numpy']} ({report.machine['blas']}), ray {report.machine['ray']}, "
        f"torch {report.machine['torch'] or 'not used'}",
        "",
        f"{'variant':<13}{'batch':>6}{'workers':>8}{'steps':>7}{'s/epoch':>9}{'samples/s':>11}"
        f"{'x numpy':>9}{'test acc':>10}",
    ]
    for r in report.rows:
        lines.append(
            f"{VARIANT_NAMES[r.variant]:<13}{r.batch_size:>6}{_fmt(r.workers, 'd'):>8}"
            f"{r.steps:>7}{r.epoch_seconds:>9.3f}{r.samples_per_second:>11,.0f}"
            f"{_fmt(r.ratio_to_numpy, '.2f'):>9}{_fmt(r.test_accuracy, '.4f'):>10}"
        )
    if report.breakdown:
        lines += [
            "",
            "dtrain per step, ms (mean over the measured steps)",
            f"{'batch':>6}{'workers':>8}{'step':>8}{'compute':>9}{'sum':>7}{'update':>8}"
            f"{'overhead':>10}{'transfer':>10}{'sched.':>8}{'peak RSS GiB':>14}",
        ]
        for b in report.breakdown:
            lines.append(
                f"{b.batch_size:>6}{b.workers:>8}{b.step_seconds * 1e3:>8.2f}"
                f"{b.worker_compute_seconds * 1e3:>9.2f}{b.aggregate_seconds * 1e3:>7.2f}"
                f"{b.update_seconds * 1e3:>8.2f}{b.overhead_seconds * 1e3:>10.2f}"
                f"{_ms(b.transfer_seconds):>10}{_ms(b.scheduling_seconds):>8}"
                f"{_fmt(b.peak_rss_gib, '.2f'):>14}"
            )
        lines.append(
            "overhead = step - compute - sum - update; transfer = its payload part, from a "
            "zero-compute probe (full vs 6-float gradients); sched. = the rest"
        )
    if report.probes:
        lines += ["", "zero-compute probe (fake workers, real ParameterServer), ms per step"]
        for p in report.probes:
            lines.append(
                f"  {p.workers} workers: full payload {p.full_step_seconds * 1e3:.2f}, "
                f"6 floats {p.tiny_step_seconds * 1e3:.2f}, transfer {p.transfer_seconds * 1e3:.2f}"
            )
    if report.targets:
        lines += ["", "targets"]
        for t in report.targets:
            mark = "met" if t.met else "NOT MET"
            lines.append(f"  [{mark:>7}] {t.name}: {t.measured} (target {t.limit})")
    if report.simulation is not None:
        from dtrain.service.perf.simulate import (
            CapacityResult,
            SimResult,
            SimulationReport,
            format_simulation,
        )

        sim = SimulationReport(
            sims=[SimResult(**s) for s in report.simulation["simulation"]],
            capacity=[CapacityResult(**c) for c in report.simulation["server_capacity"]],
        )
        lines += ["", format_simulation(sim)]
    if not report.torch["used"]:
        lines += ["", f"torch loop not run: {report.torch['reason']}"]
    return "\n".join(lines)


def default_progress(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)
