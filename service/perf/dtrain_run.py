"""The dtrain variant: ``Trainer`` on Ray, recorded step by step, and the zero-compute probe."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dtrain.service.data import dataset
from dtrain.service.errors import DtrainError
from dtrain.service.observe.observers import Observer
from dtrain.service.observe.stats import EpochStats, JobInfo, RunSummary, StepStats
from dtrain.service.perf.config import BenchConfig
from dtrain.service.perf.cpu import CpuShare
from dtrain.service.perf.memory import JobMemory
from dtrain.service.perf.variants import Timed
from dtrain.service.train import checkpoint
from dtrain.workers.model import ModelSpec

# A model with 6 parameters: the probe step whose payload is negligible.
TINY_SPEC = ModelSpec(input_size=2, hidden_sizes=(), num_classes=2)


class StepRecorder(Observer):
    """Keeps every ``StepStats``, samples the job's memory at the last step and the end, and
    the CPU time of the driver and the actors over the measured steps (after ``warmup``)."""

    def __init__(
        self,
        last_step: int,
        warmup: int = 0,
        processes: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        self.last_step = last_step
        self.warmup = warmup
        self.steps: list[StepStats] = []
        self.memory = JobMemory(processes)
        self.cpu = CpuShare(self.memory)
        self._measuring = False
        self.info: JobInfo | None = None
        self.epochs: list[EpochStats] = []

    def on_start(self, info: JobInfo) -> None:
        self.info = info
        self.memory.start()

    def on_step(self, stats: StepStats) -> None:
        self.steps.append(stats)
        if stats.step > self.warmup and not self._measuring:
            self._measuring = True
            self.cpu.first()
        # Actors are alive until the driver kills them after the last step; VmHWM only grows.
        if stats.step >= self.last_step:
            self.memory.sample_actors()
            self.cpu.last()

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
    staleness: int = 0
    driver_cpu_ratio: float | None = None


def dtrain_run(
    cfg: BenchConfig,
    batch: int,
    workers: int,
    total_steps: int,
    run_root: Path,
    staleness: int = 0,
    processes: Callable[[], Iterable[int]] | None = None,
) -> DtrainRun:
    """``processes``: where the run's actor processes are (JobMemory); by default this
    process's descendants, as on the local Ray it starts."""
    from dtrain.service.train.config import TrainConfig
    from dtrain.service.train.trainer import Trainer

    n_train = int(dataset.read_manifest(cfg.data_dir)["splits"]["train"]["num_samples"])
    epochs = math.ceil(total_steps / math.ceil(n_train / batch)) + 1  # enough; max_steps stops it
    config = TrainConfig(
        data_dir=cfg.data_dir,
        run_dir=run_root / f"dtrain-b{batch}-w{workers}-s{staleness}",
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
        staleness=staleness,
    )
    recorder = StepRecorder(total_steps, cfg.warmup_steps, processes)
    summary = Trainer(config, [recorder]).run()
    params = checkpoint.load(Path(summary.checkpoint)).params
    if len(recorder.steps) != total_steps or recorder.info is None:
        raise DtrainError(
            f"dtrain reported {len(recorder.steps)} steps, expected {total_steps}: "
            "the bench cannot time it"
        )
    timed = Timed([s.step_seconds for s in recorder.steps], params, summary.test_accuracy)
    return DtrainRun(
        timed,
        recorder.steps,
        recorder.info.steps_per_epoch,
        recorder.memory,
        staleness,
        recorder.cpu.driver_ratio,
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
        return float(s.step_seconds - s.aggregate_seconds - s.update_seconds)

    return Probe(
        workers=workers,
        steps=steps,
        full_step_seconds=full.step_seconds,
        tiny_step_seconds=tiny.step_seconds,
        transfer_seconds=rest(full) - rest(tiny),
    )
