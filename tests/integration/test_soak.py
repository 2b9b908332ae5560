"""A soak in the spirit of Ray's chaos tests: warm-up, a clean run, then the same run with
several worker kills at random steps and one server kill, compared bit for bit; afterwards no
actor process, shared-memory file or port of the run is left and the cluster's CPUs are free.

Random, yet reproducible: the kill steps come from a seeded generator whose seed is printed on
failure (DTRAIN_SOAK_SEED picks another). Sized for a 2-core machine (80 steps per run).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from dtrain.service.observe.observers import Observer
from dtrain.service.observe.stats import StepStats
from dtrain.service.train import checkpoint
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("ray_local")

STEPS = 80
WORKER_KILLS = 4
SEED = int(os.environ.get("DTRAIN_SOAK_SEED", "13"))


def config(data: Path, run_dir: Path, steps: int = STEPS) -> TrainConfig:
    return TrainConfig(
        data_dir=data,
        run_dir=run_dir,
        epochs=1,
        num_workers=2,
        max_steps=steps,
        checkpoint_every=10,
        eval_every_epoch=False,
    )


class Chaos(Observer):
    """Kills actor processes at chosen steps; remembers every actor process it ever saw."""

    def __init__(self, trainer: list[Trainer], kills: dict[int, str]) -> None:
        self.trainer, self.kills = trainer, dict(kills)
        self.killed: list[tuple[int, str, int]] = []
        self.pids: set[int] = set()

    def _actors(self) -> list[object]:
        t = self.trainer[0]
        return [t.server, *t.workers]

    def on_health(self, workers_alive: int, restarts: int, failed_steps: int) -> None:
        if workers_alive:  # a (re)built group: note its processes
            self.pids |= set(ray.get([a.pid.remote() for a in self._actors()], timeout=60))

    def on_step(self, stats: StepStats) -> None:
        target = self.kills.pop(stats.step, None)
        if target is None:
            return
        t = self.trainer[0]
        actor = t.server if target == "server" else t.workers[int(target.removeprefix("worker-"))]
        try:
            pid = ray.get(actor.pid.remote(), timeout=60)
        except ray.exceptions.RayActorError:
            # Killed already: the driver hears a segment's steps together, so a kill planned
            # for a later step of the same segment can find its target dead, not yet rebuilt.
            return
        self.pids.add(pid)
        os.kill(pid, signal.SIGKILL)
        self.killed.append((stats.step, target, pid))


def chaos_plan(rng: random.Random) -> dict[int, str]:
    """WORKER_KILLS worker kills (ranks alternating, so none runs out of restarts) and one
    server kill, at distinct random steps past the first checkpoint."""
    steps = rng.sample(range(3, STEPS - 2), WORKER_KILLS)
    first_rank = rng.randrange(2)
    plan = {s: f"worker-{(first_rank + i) % 2}" for i, s in enumerate(steps)}
    # After the first checkpoint, so the rebuild has one to start from.
    plan[rng.choice([s for s in range(12, STEPS - 2) if s not in plan])] = "server"
    return plan


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_random_kills_change_no_bit_and_leave_nothing_behind(
    prepared_mnist: Path, tmp_path: Path
) -> None:
    Trainer(config(prepared_mnist, tmp_path / "warmup", steps=5)).run()
    Trainer(config(prepared_mnist, tmp_path / "clean")).run()
    clean = checkpoint.load(tmp_path / "clean" / "checkpoint.npz")

    plan = chaos_plan(random.Random(SEED))
    holder: list[Trainer] = []
    chaos = Chaos(holder, plan)
    trainer = Trainer(config(prepared_mnist, tmp_path / "faulted"), [chaos])
    holder.append(trainer)
    trainer.run()
    faulted = checkpoint.load(tmp_path / "faulted" / "checkpoint.npz")

    why = f"seed {SEED}, plan {plan}, killed {chaos.killed}"
    targets = [target for _, target, _ in chaos.killed]
    assert targets.count("server") == 1 and len(targets) >= 2, why
    # On one node every death rebuilds the group from the newest checkpoint; kills that land
    # in one segment share a rebuild.
    assert 1 <= faulted.meta["progress"]["restarts"] <= len(targets), why
    np.testing.assert_array_equal(faulted.params, clean.params, err_msg=why)
    np.testing.assert_array_equal(faulted.velocity, clean.velocity, err_msg=why)

    # Nothing left behind: every actor process of the run gone (with its ports), no
    # shared-memory exchange of it, and all the cluster's CPUs free again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [pid for pid in chaos.pids if running(pid)]
        free = ray.available_resources().get("CPU", 0.0) == ray.cluster_resources()["CPU"]
        if not left and free:
            break
        time.sleep(0.2)
    assert left == [], f"actor processes still running: {left} ({why})"
    assert free, f"CPUs still held: {ray.available_resources()} ({why})"
    assert len(chaos.pids) >= 2 * 3, chaos.pids  # both groups' processes were seen
    assert list(Path("/dev/shm").glob(f"dtrain-{os.getpid()}-*")) == []
