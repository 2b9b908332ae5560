"""Faults lose nothing: killed workers, a killed server, a killed driver, broken checkpoints.

Each fault run is compared bitwise with an uninterrupted run of the same seed: a step is
deterministic given the weights, the shard assignment, the seed and the step number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from dtrain.service.errors import DtrainError
from dtrain.service.observe.observers import Observer
from dtrain.service.observe.stats import StepStats
from dtrain.service.train import checkpoint
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.recovery import CHECKPOINT_DIR, latest_checkpoint
from dtrain.service.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("ray_local")

STEPS = 60


def config(data: Path, run_dir: Path, **kw) -> TrainConfig:
    base = {
        "data_dir": data,
        "run_dir": run_dir,
        "epochs": 1,
        "batch_size": 128,
        "num_workers": 2,
        "max_steps": STEPS,
        "checkpoint_every": 10,
        "eval_every_epoch": False,
    }
    base.update(kw)
    return TrainConfig(**base)


def final_weights(run_dir: Path) -> np.ndarray:
    return checkpoint.load(run_dir / "checkpoint.npz").params


@pytest.fixture(scope="module")
def reference(prepared_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The uninterrupted run every fault run must reproduce bit for bit."""
    run_dir = tmp_path_factory.mktemp("reference")
    Trainer(config(prepared_mnist, run_dir)).run()
    return final_weights(run_dir)


class Killer(Observer):
    """SIGKILLs an actor's process when the driver sees the given steps complete."""

    def __init__(self, trainer_ref: list[Trainer], at_steps: set[int], target: str) -> None:
        self.trainer_ref, self.at_steps, self.target = trainer_ref, at_steps, target
        self.killed: list[int] = []

    def on_step(self, stats: StepStats) -> None:
        if stats.step not in self.at_steps:
            return
        self.at_steps.discard(stats.step)
        trainer = self.trainer_ref[0]
        if self.target == "server":
            actor = trainer.server
        else:
            actor = trainer.workers[len(self.killed) % len(trainer.workers)]
        try:
            pid = ray.get(actor.pid.remote(), timeout=60)
        except ray.exceptions.RayActorError:
            # Already killed: the driver hears of a segment's steps together, after the kill
            # of an earlier one among them, and the rebuild has not happened yet.
            return
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)


def run_with_killer(cfg: TrainConfig, at: set[int], target: str) -> tuple[Trainer, Killer]:
    holder: list[Trainer] = []
    killer = Killer(holder, set(at), target)
    trainer = Trainer(cfg, [killer])
    holder.append(trainer)
    trainer.run()
    return trainer, killer


def test_killed_workers_are_restarted_and_the_weights_are_bitwise_equal(
    prepared_mnist: Path, tmp_path: Path, reference: np.ndarray
) -> None:
    _, killer = run_with_killer(config(prepared_mnist, tmp_path), {12, 31, 47}, "worker")
    assert len(killer.killed) == 3
    np.testing.assert_array_equal(final_weights(tmp_path), reference)


def test_through_ray_killed_workers_are_restarted_by_ray_and_rejoin_with_the_same_bits(
    prepared_mnist: Path, tmp_path: Path, reference: np.ndarray
) -> None:
    """Without shared memory Ray restarts a killed worker, whose segment re-runs from the
    server's current step: no rebuild, and the bits of the uninterrupted run."""
    cfg = config(prepared_mnist, tmp_path, exchange="object-store")
    _, killer = run_with_killer(cfg, {12, 31}, "worker")
    assert len(killer.killed) == 2
    assert checkpoint.load(tmp_path / "checkpoint.npz").meta["progress"]["restarts"] == 0
    np.testing.assert_array_equal(final_weights(tmp_path), reference)


def test_killed_server_is_rebuilt_from_the_last_checkpoint(
    prepared_mnist: Path, tmp_path: Path, reference: np.ndarray
) -> None:
    _, killer = run_with_killer(config(prepared_mnist, tmp_path), {25}, "server")
    assert len(killer.killed) == 1
    summary = checkpoint.load(tmp_path / "checkpoint.npz").meta["progress"]
    assert summary["restarts"] == 1 and summary["step"] == STEPS
    np.testing.assert_array_equal(final_weights(tmp_path), reference)


class Stopper(Observer):
    """SIGSTOPs a worker once the driver sees the given step: alive, but silent."""

    def __init__(self, trainer_ref: list[Trainer], at_step: int) -> None:
        self.trainer_ref, self.at_step = trainer_ref, at_step
        self.stopped: list[int] = []

    def on_step(self, stats: StepStats) -> None:
        if stats.step == self.at_step and not self.stopped:
            pid = ray.get(self.trainer_ref[0].workers[1].pid.remote(), timeout=60)
            os.kill(pid, signal.SIGSTOP)
            self.stopped.append(pid)


def test_a_stopped_worker_is_detected_within_the_step_timeout_and_rebuilt(
    prepared_mnist: Path, tmp_path: Path, reference: np.ndarray
) -> None:
    holder: list[Trainer] = []
    stopper = Stopper(holder, 12)
    trainer = Trainer(config(prepared_mnist, tmp_path, step_timeout_seconds=5), [stopper])
    holder.append(trainer)
    start = time.monotonic()
    try:
        trainer.run()
    finally:
        for pid in stopper.stopped:  # normally killed by the rebuild already
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert len(stopper.stopped) == 1
    assert time.monotonic() - start < 100  # one timeout and a rebuild, not a hang
    progress = checkpoint.load(tmp_path / "checkpoint.npz").meta["progress"]
    assert progress["restarts"] == 1
    np.testing.assert_array_equal(final_weights(tmp_path), reference)


def test_a_worker_that_keeps_dying_is_given_up_on(prepared_mnist: Path, tmp_path: Path) -> None:
    cfg = config(prepared_mnist, tmp_path, max_restarts=1, step_timeout_seconds=30)
    with pytest.raises(DtrainError, match="giving up after 1 restarts"):
        run_with_killer(cfg, set(range(3, STEPS, 2)), "worker")


def dtrain(*args: str) -> list[str]:
    return [sys.executable, "-m", "dtrain.cli.main", *args]


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, log: Path) -> None:
    """Until a `dtrain train` subprocess has written its first periodic checkpoint."""
    deadline = time.monotonic() + 120
    while not list((run_dir / CHECKPOINT_DIR).glob("step-*.npz")):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_killed_driver_resumes_to_the_same_weights(
    prepared_mnist: Path, tmp_path: Path, reference: np.ndarray
) -> None:
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--data-dir",
        str(prepared_mnist),
        "--run-dir",
        str(run_dir),
        "--epochs",
        "1",
        "--max-steps",
        str(STEPS),
        "--checkpoint-every",
        "10",
        "--no-eval-every-epoch",
    ]
    log = tmp_path / "driver.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            dtrain(*args), start_new_session=True, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        wait_for_checkpoint(proc, run_dir, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    assert not (run_dir / "checkpoint.npz").exists(), "the run finished before it was killed"
    resumed_from = latest_checkpoint(run_dir).meta["step"]
    assert 0 < resumed_from < STEPS
    done = subprocess.run(
        dtrain("train", "--resume", str(run_dir)), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(final_weights(run_dir), reference)


def test_resume_refuses_an_incompatible_config(prepared_mnist: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dtrain.cli.main import cli

    Trainer(config(prepared_mnist, tmp_path, max_steps=10)).run()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "--resume", str(tmp_path), "--hidden-sizes", "256"])
    assert r.exit_code == 1 and "layers" in r.output and "differ" in r.output
    r = runner.invoke(cli, ["train", "--resume", str(tmp_path), "--batch-size", "64"])
    assert r.exit_code == 1 and "batch_size: checkpoint 128, now 64" in r.output
    r = runner.invoke(cli, ["train", "--resume", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "not a dtrain run directory" in r.output
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_resume_skips_a_truncated_newest_checkpoint(prepared_mnist: Path, tmp_path: Path) -> None:
    Trainer(config(prepared_mnist, tmp_path, max_steps=30)).run()
    (tmp_path / "checkpoint.npz").unlink()
    newest, older = sorted((tmp_path / CHECKPOINT_DIR).glob("step-*.npz"), reverse=True)[:2]
    newest.write_bytes(newest.read_bytes()[:1000])
    assert latest_checkpoint(tmp_path).meta["step"] == int(older.stem.split("-")[1])


class ArmAfterFirstCheckpoint(Observer):
    def __init__(self) -> None:
        self.armed = False

    def on_checkpoint(self, path: Path, step: int) -> None:
        self.armed = True


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_checkpoint_failure_stops_the_run_and_keeps_the_last_good_one(
    prepared_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    """ENOSPC at any point of a checkpoint write: a clear error, the previous one intact."""
    import dtrain.service.train.checkpoint as ck

    arm = ArmAfterFirstCheckpoint()  # the step-10 checkpoint goes through, step 20 fails

    def enospc() -> None:
        if arm.armed:
            raise OSError(28, "No space left on device")

    if fail_at == "write":
        real_fdopen = ck.os.fdopen

        class FullDisk:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                enospc()
                return self.f.write(data)

            def flush(self):
                self.f.flush()

            def fileno(self):
                return self.f.fileno()

        monkeypatch.setattr(ck.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    else:
        real = getattr(ck.os, fail_at)

        def failing(*args, **kwargs):
            enospc()
            return real(*args, **kwargs)

        monkeypatch.setattr(ck.os, fail_at, failing)
    with pytest.raises(DtrainError, match="No space left on device"):
        Trainer(config(prepared_mnist, tmp_path), [arm]).run()
    files = sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir())
    assert files == ["step-00000010.npz"], files
    assert latest_checkpoint(tmp_path).meta["step"] == 10


def test_killed_server_with_bounded_staleness_replays_the_same_bits(
    prepared_mnist: Path, tmp_path: Path
) -> None:
    """The snapshot carries the k older weights that the next k steps still read."""
    Trainer(config(prepared_mnist, tmp_path / "clean", staleness=2)).run()
    _, killer = run_with_killer(
        config(prepared_mnist, tmp_path / "faulty", staleness=2), {33}, "server"
    )
    assert len(killer.killed) == 1
    resumed = checkpoint.load(tmp_path / "faulty" / "checkpoint.npz")
    assert resumed.meta["progress"]["restarts"] == 1 and resumed.history.shape[0] == 2
    np.testing.assert_array_equal(resumed.params, final_weights(tmp_path / "clean"))


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(prepared_mnist: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [
        "train",
        "--data-dir",
        str(prepared_mnist),
        "--run-dir",
        str(run_dir),
        "--checkpoint-every",
        "20",
        "--no-eval-every-epoch",
    ]
    log = tmp_path / "driver.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(dtrain(*args), stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for_checkpoint(proc, run_dir, log)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert f"dtrain: interrupted; resume with: dtrain train --resume {run_dir}" in text
    assert "Traceback" not in text
    assert latest_checkpoint(run_dir).meta["step"] >= 20
