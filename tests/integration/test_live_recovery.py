"""A lost actor costs no step: the run continues from the step reached, not a checkpoint.

The kills are triggered by the server's own state, not by a sleep: a thread watches the step
counter in the exchange directory (``service.ps.state``) and SIGKILLs its target once the
server has committed a given step. The driver polls rarely here (``POLL_SECONDS``), so it has
heard of none of the segment's steps when the kill comes: their stats must come from the
shared-memory ring, exactly once each.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from dtrain.service.observe.observers import Observer
from dtrain.service.observe.stats import StepStats
from dtrain.service.ps import state as server_state
from dtrain.service.train import checkpoint, loop
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.trainer import Trainer
from dtrain.workers import exchange

pytestmark = pytest.mark.usefixtures("ray_local")

STEPS = 60
KILL_AT = 25  # after the checkpoint at step 20, before the one at 30


def config(data: Path, run_dir: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "data_dir": data,
        "run_dir": run_dir,
        "epochs": 1,
        "batch_size": 128,
        "num_workers": 2,
        "max_steps": STEPS,
        "checkpoint_every": 10,
        "eval_every_epoch": False,
        "exchange": "shared-memory",
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


class Steps(Observer):
    """Every step the driver reports, in the order reported."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.samples = 0
        self.checkpoints: list[int] = []
        self.rebuilt_at: list[int] = []  # the last step reported when the actors were rebuilt

    def on_step(self, stats: StepStats) -> None:
        self.seen.append(stats.step)
        self.samples += stats.samples

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.checkpoints.append(step)

    def on_health(self, workers_alive: int, restarts: int, failed_steps: int) -> None:
        if failed_steps:
            self.rebuilt_at.append(self.seen[-1])


class StepWatcher(threading.Thread):
    """SIGKILLs the first group's server or a worker once its server has committed ``at``."""

    def __init__(self, trainer: Trainer, at: int, target: str) -> None:
        super().__init__(daemon=True)
        self.trainer, self.at, self.target = trainer, at, target
        self.killed_at: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as e:  # reported by the test, not lost in the thread
            self.error = e

    def _watch(self) -> None:
        deadline = time.monotonic() + 300
        header = None
        while header is None:
            assert time.monotonic() < deadline, "no exchange directory appeared"
            group = self.trainer.group
            path = group and group.exchange_dir and group.exchange_dir / server_state.HEADER_NAME
            if path and path.exists() and group.workers:
                header = exchange.map_array(path, np.dtype(np.int64), 4, create=False)
            else:
                time.sleep(0.001)
        group = self.trainer.group
        assert group is not None
        actor = group.server if self.target == "server" else group.workers[1]
        pid = ray.get(actor.pid.remote(), timeout=60)
        while int(header[server_state.STEP_AT]) < self.at:
            assert time.monotonic() < deadline, f"the server never reached step {self.at}"
            time.sleep(0.0005)
        os.kill(pid, signal.SIGKILL)
        self.killed_at = int(header[server_state.STEP_AT])


def run_with_kill(cfg: TrainConfig, target: str) -> tuple[Steps, StepWatcher]:
    steps = Steps()
    trainer = Trainer(cfg, [steps])
    watcher = StepWatcher(trainer, KILL_AT, target)
    watcher.start()
    trainer.run()
    watcher.join(timeout=10)
    assert watcher.error is None, watcher.error
    return steps, watcher


@pytest.fixture(scope="module")
def reference(prepared_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    run_dir = tmp_path_factory.mktemp("reference")
    Trainer(config(prepared_mnist, run_dir)).run()
    return checkpoint.load(run_dir / "checkpoint.npz").params


@pytest.fixture
def slow_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver drains the server only when a segment ends or an actor fails."""
    monkeypatch.setattr(loop, "POLL_SECONDS", 5.0)


@pytest.mark.usefixtures("slow_poll")
@pytest.mark.parametrize("target", ["server", "worker"])
def test_a_killed_actor_costs_no_step_and_no_bit(
    prepared_mnist: Path, tmp_path: Path, reference: np.ndarray, target: str, capfd
) -> None:
    cfg = config(prepared_mnist, tmp_path, max_restarts=1)
    steps, watcher = run_with_kill(cfg, target)
    assert watcher.killed_at is not None and KILL_AT <= watcher.killed_at <= 30
    # The rebuild came after the step the server reached (not the step-20 checkpoint), with
    # the steps the driver had not heard of recorded from the ring; then every step once, in
    # order: nothing redone, nothing lost.
    assert len(steps.rebuilt_at) == 1 and steps.rebuilt_at[0] >= watcher.killed_at
    assert steps.seen == list(range(1, STEPS + 1))
    ckpt = checkpoint.load(tmp_path / "checkpoint.npz")
    progress = ckpt.meta["progress"]
    assert progress["restarts"] == 1 and progress["step"] == STEPS
    assert progress["total_samples"] == steps.samples == STEPS * 128
    np.testing.assert_array_equal(ckpt.params, reference)
    restarted = re.findall(
        r"restarting the actors from step (\d+), the step reached", capfd.readouterr().err
    )
    assert len(restarted) == 1 and watcher.killed_at <= int(restarted[0]) <= 30
    # Every checkpoint once; the lost segment's (30) is written after the rebuild.
    assert steps.checkpoints == [10, 20, 30, 40, 50, 60]  # 60: the final one
    # Nothing left in /dev/shm: the run's exchange directory went with it.
    assert not list(exchange.exchange_root().glob(f"dtrain-{os.getpid()}-*"))


@pytest.mark.usefixtures("slow_poll")
def test_a_killed_server_with_bounded_staleness_continues_from_its_slots(
    prepared_mnist: Path, tmp_path: Path
) -> None:
    """The k older weights the next steps read are in the state's slots, whole."""
    Trainer(config(prepared_mnist, tmp_path / "clean", staleness=2)).run()
    steps, watcher = run_with_kill(
        config(prepared_mnist, tmp_path / "faulty", staleness=2), "server"
    )
    assert watcher.killed_at is not None and steps.rebuilt_at[0] >= watcher.killed_at
    assert steps.seen == list(range(1, STEPS + 1))
    clean = checkpoint.load(tmp_path / "clean" / "checkpoint.npz")
    faulty = checkpoint.load(tmp_path / "faulty" / "checkpoint.npz")
    assert faulty.meta["progress"]["restarts"] == 1
    np.testing.assert_array_equal(faulty.params, clean.params)
    np.testing.assert_array_equal(faulty.history, clean.history)


class KillOnStep(Steps):
    """SIGKILLs ``target`` (the server, or worker 1) when the driver reports the given steps."""

    def __init__(self, trainer_ref: list[Trainer], at: set[int], target: str) -> None:
        super().__init__()
        self.trainer_ref, self.at, self.target = trainer_ref, at, target
        self.killed: list[int] = []

    def on_step(self, stats: StepStats) -> None:
        super().on_step(stats)
        if stats.step not in self.at:
            return
        self.at.discard(stats.step)  # once: a step redone after a rollback is reported again
        trainer = self.trainer_ref[0]
        actor = trainer.server if self.target == "server" else trainer.workers[1]
        pid = ray.get(actor.pid.remote(), timeout=60)
        os.kill(pid, signal.SIGKILL)
        self.killed.append(stats.step)


def run_killing_on_steps(cfg: TrainConfig, at: set[int], target: str) -> KillOnStep:
    holder: list[Trainer] = []
    killer = KillOnStep(holder, at, target)
    holder.append(Trainer(cfg, [killer]))
    holder[0].run()
    return killer


def test_through_ray_a_worker_out_of_restarts_costs_no_step(
    prepared_mnist: Path, tmp_path: Path, reference: np.ndarray, capfd
) -> None:
    """Ray restarts the worker once; killed again, it is lost for good, and the actors are
    rebuilt from the live server's state, not from the step-30 checkpoint."""
    cfg = config(prepared_mnist, tmp_path, exchange="object-store", max_restarts=1)
    killer = run_killing_on_steps(cfg, {12, 35}, "worker")
    assert killer.killed == [12, 35]
    assert len(killer.rebuilt_at) == 1 and killer.rebuilt_at[0] >= 35
    assert killer.seen == list(range(1, STEPS + 1))
    assert "the step reached" in capfd.readouterr().err
    ckpt = checkpoint.load(tmp_path / "checkpoint.npz")
    assert ckpt.meta["progress"]["restarts"] == 1
    assert ckpt.meta["progress"]["total_samples"] == STEPS * 128
    np.testing.assert_array_equal(ckpt.params, reference)


def test_through_ray_a_killed_server_falls_back_to_the_newest_checkpoint(
    prepared_mnist: Path, tmp_path: Path, reference: np.ndarray, capfd
) -> None:
    """Its state died with it: the steps since the step-20 checkpoint are redone, reported
    again, and give the same bits."""
    cfg = config(prepared_mnist, tmp_path, exchange="object-store")
    killer = run_killing_on_steps(cfg, {25}, "server")
    assert killer.killed == [25]
    assert "from step 20, the newest checkpoint" in capfd.readouterr().err
    assert killer.seen[: killer.seen.index(25) + 1] == list(range(1, 26))
    assert killer.seen[-STEPS + 20 :] == list(range(21, STEPS + 1))
    ckpt = checkpoint.load(tmp_path / "checkpoint.npz")
    assert ckpt.meta["progress"]["restarts"] == 1
    np.testing.assert_array_equal(ckpt.params, reference)
