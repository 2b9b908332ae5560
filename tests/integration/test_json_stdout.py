"""`dtrain train --json` prints the JSON alone on stdout, even when Ray has something to say
(a killed worker's `(raylet) A worker died ...`): Ray's lines go to stderr."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def steps_done(history: Path) -> int:
    try:
        return history.read_text().count('"kind": "step"')
    except OSError:
        return 0


def test_json_stdout_survives_a_killed_worker(prepared_mnist: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "dtrain.cli.main", "train", "--json"]
    args += ["--data-dir", str(prepared_mnist)]
    args += ["--run-dir", str(run_dir), "--max-steps", "300", "--checkpoint-every", "20"]
    args += ["--hidden-sizes", "64", "--no-eval-every-epoch"]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    killed = None
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            if steps_done(run_dir / "history.jsonl") >= 5:
                workers = [p for p in descendants(proc.pid) if cmdline(p).startswith("ray::Worker")]
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    killed = workers[0]
            time.sleep(0.05)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed is not None, "the run ended before a worker could be killed"
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out)  # the whole of stdout is one JSON object
    assert summary["steps"] == 300
    assert "worker" in err.lower(), err[-3000:]  # Ray's notice went to stderr, not nowhere
