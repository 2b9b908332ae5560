"""A stopped or killed `dtrain train` loses nothing, exposes nothing and leaves nothing behind.

Real `dtrain train` processes with the local Ray they start, real signals, listening sockets
read from /proc/net/tcp{,6}. Each run is compared bit for bit with an uninterrupted one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dtrain.service.train import checkpoint
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.localray import running, start_time
from dtrain.service.train.recovery import CHECKPOINT_DIR, latest_checkpoint
from dtrain.service.train.trainer import Trainer

STEPS = 200
ARGS = ["--epochs", "1", "--max-steps", str(STEPS), "--checkpoint-every", "10"]
ARGS += ["--no-eval-every-epoch"]
DTRAIN = [sys.executable, "-m", "dtrain.cli.main"]


@pytest.fixture(scope="module")
def reference(
    prepared_mnist: Path, tmp_path_factory: pytest.TempPathFactory, ray_local: object
) -> np.ndarray:
    run_dir = tmp_path_factory.mktemp("reference")
    config = TrainConfig(
        data_dir=prepared_mnist,
        run_dir=run_dir,
        epochs=1,
        max_steps=STEPS,
        checkpoint_every=10,
        eval_every_epoch=False,
    )
    Trainer(config).run()
    return checkpoint.load(run_dir / "checkpoint.npz").params


def start_train(
    data: Path, run_dir: Path, log: Path, home: Path | None = None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if home is not None:  # a HOME of its own: where Ray keeps its token file
        env["HOME"] = str(home)
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.pop(name, None)
    with log.open("wb") as err:
        return subprocess.Popen(
            [*DTRAIN, "train", "--data-dir", str(data), "--run-dir", str(run_dir), *ARGS],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )


def wait_for_checkpoint(proc: subprocess.Popen[bytes], run_dir: Path, log: Path) -> None:
    deadline = time.monotonic() + 180
    while not list((run_dir / CHECKPOINT_DIR).glob("step-*.npz")):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def resume(run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DTRAIN, "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def history_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == "step"]


# --- processes and their sockets, from /proc --------------------------------------------------


def descendants(root: int) -> dict[int, str | None]:
    """Every process below ``root`` (Ray's GCS, raylet, agents, actors): pid -> start time."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: dict[int, str | None] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = start_time(child)
            todo.append(child)
    return found


def alive(procs: dict[int, str | None]) -> list[int]:
    """Those still running (a zombie is not: only its exit status is left)."""
    return [
        pid
        for pid, started in procs.items()
        if started and start_time(pid) == started and running(pid)
    ]


def listening(pids: list[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every TCP socket those processes listen on."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                found.append((inodes[cols[9]], decode_address(cols[1])))
    return found


def decode_address(hexed: str) -> str:
    host, port = hexed.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return f"{ipaddress.ip_address(raw)}:{int(port, 16)}"


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def shm_of(pid: int) -> list[Path]:
    return list(Path("/dev/shm").glob(f"dtrain-{pid}-*"))


# --- the tests ---------------------------------------------------------------------------------


def test_sigterm_stops_at_a_step_with_a_checkpoint_and_resumes_bitwise(
    prepared_mnist: Path, tmp_path: Path, reference: np.ndarray
) -> None:
    """What Kubernetes, systemd, Slurm and `ray job stop` send: Ctrl-C's stop, exit 143."""
    run_dir, log = tmp_path / "run", tmp_path / "driver.log"
    proc = start_train(prepared_mnist, run_dir, log)
    try:
        wait_for_checkpoint(proc, run_dir, log)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 143, text
    assert took < 60, f"SIGTERM took {took:.1f}s"
    assert "Traceback" not in text and "*** SIGTERM received" not in text, text
    stopped = latest_checkpoint(run_dir).meta["step"]
    assert 10 <= stopped < STEPS, "the run finished before the signal"
    assert text.splitlines()[-1] == (
        f"dtrain: interrupted; resume with: dtrain train --resume {run_dir} "
        f"(SIGTERM: stopped after step {stopped}, which is checkpointed)"
    )
    # The stop's checkpoint is of the very step the history reached: nothing to replay.
    assert history_steps(run_dir) == list(range(1, stopped + 1))
    done = resume(run_dir)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(checkpoint.load(run_dir / "checkpoint.npz").params, reference)
    assert history_steps(run_dir) == list(range(1, STEPS + 1))


def test_local_ray_listens_on_loopback_and_a_killed_driver_leaves_nothing(
    prepared_mnist: Path, tmp_path: Path, reference: np.ndarray
) -> None:
    """A laptop on a café network exposes nothing (no port beyond loopback, a token file only
    its owner reads); SIGKILL (OOM killer, kill -9) of the driver
    alone leaves no Ray process, port, shared-memory file or half-written checkpoint behind,
    and the resumed run logs no step twice."""
    run_dir, log, home = tmp_path / "run", tmp_path / "driver.log", tmp_path / "home"
    home.mkdir()
    proc = start_train(prepared_mnist, run_dir, log, home=home)
    try:
        wait_for_checkpoint(proc, run_dir, log)
        # Ray's token, which lets whoever reads it run code on the cluster: private.
        token = home / ".ray" / "auth_token"
        assert token.stat().st_mode & 0o777 == 0o600
        procs = descendants(proc.pid)
        comms = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in alive(procs)}
        # The agents are what used to outlive a killed driver, on 0.0.0.0, for minutes.
        assert {"ray::DashboardA", "ray::RuntimeEnv"} <= comms, comms
        sockets = listening([proc.pid, *procs])
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid, _ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        exposed = [(pid, addr) for pid, addr in sockets if not is_loopback(addr)]
        assert exposed == [], f"listening beyond loopback: {exposed}"
        assert shm_of(proc.pid), "expected the run's shared-memory exchange"
    finally:
        proc.send_signal(signal.SIGKILL)  # the driver only: Ray's processes are on their own
        proc.wait()
    deadline = time.monotonic() + 30
    while alive(procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:60] for pid in alive(procs)}
    assert left == {}, f"outlived the driver by 30 s: {left}"
    assert listening(list(procs)) == []
    # A SIGKILL during the final checkpoint leaves its temporary file: the next run sweeps it.
    stale = run_dir / ".checkpoint.npz.x1y2z3w4.tmp"
    stale.write_bytes(b"half a checkpoint")
    steps_before = history_steps(run_dir)
    resumed_from = latest_checkpoint(run_dir).meta["step"]
    assert max(steps_before) >= resumed_from  # what the killed run logged past its checkpoint
    done = resume(run_dir)
    assert done.returncode == 0, done.stderr
    assert not stale.exists()
    assert not shm_of(proc.pid), "the killed run's shared memory outlived the next run"
    np.testing.assert_array_equal(checkpoint.load(run_dir / "checkpoint.npz").params, reference)
    assert history_steps(run_dir) == list(range(1, STEPS + 1))


def test_a_resume_from_an_epochs_last_step_keeps_that_epochs_record(
    tiny_dataset: Path, tmp_path: Path, ray_local: object
) -> None:
    """A checkpoint at an epoch's last step precedes that epoch's record; the resumed run writes
    it, so history (file and checkpoint) holds every epoch once, as an uninterrupted run's."""
    import shutil

    def cfg(run_dir: Path) -> TrainConfig:  # 30 samples, batch 10: 3 steps an epoch
        return TrainConfig(
            data_dir=tiny_dataset, run_dir=run_dir, epochs=2, batch_size=10, checkpoint_every=3
        )

    from dtrain.service.observe.observers import HistoryWriter

    clean = tmp_path / "clean"
    Trainer(cfg(clean), [HistoryWriter(clean / "history.jsonl")]).run()
    resumed = tmp_path / "resumed"
    (resumed / CHECKPOINT_DIR).mkdir(parents=True)
    shutil.copy(clean / "config.json", resumed)
    shutil.copy(clean / CHECKPOINT_DIR / "step-00000003.npz", resumed / CHECKPOINT_DIR)
    lines = (clean / "history.jsonl").read_text().splitlines(keepends=True)
    # The killed run had logged its three steps, not yet epoch 1's record.
    (resumed / "history.jsonl").write_text("".join(lines[:3]))
    Trainer(cfg(resumed), [HistoryWriter(resumed / "history.jsonl")], resume=True).run()

    def epochs(run_dir: Path) -> list[tuple[int, int, float]]:
        history = checkpoint.load(run_dir / "checkpoint.npz").meta["progress"]["history"]
        return [(h["epoch"], h["steps"], h["train_loss"]) for h in history]

    assert epochs(resumed) == epochs(clean) and len(epochs(clean)) == 2
    records = [json.loads(line) for line in (resumed / "history.jsonl").read_text().splitlines()]
    assert [(r["kind"], r.get("step", r.get("epoch"))) for r in records] == [
        (json.loads(line)["kind"], json.loads(line).get("step", json.loads(line).get("epoch")))
        for line in lines
    ]
