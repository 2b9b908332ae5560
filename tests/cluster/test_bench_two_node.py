"""`dtrain bench --two-node`: the bench starts its own two-node loopback cluster, times dtrain
there beside the single-node rows, and leaves nothing of that cluster running, even on Ctrl-C."""

from __future__ import annotations

import json
import math
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from dtrain.service.loopback import BIN

# The bench says where its cluster lives: "... on 127.0.0.1, under /tmp/dtrb-..., sharing ...".
ROOT = re.compile(r"under (/tmp/dtrb-[^,\s]+),")


def bench_command(data_dir: Path) -> list[str]:
    return [
        str(BIN / "dtrain"),
        "bench",
        "--quick",
        "--two-node",
        "--json",
        "--no-torch",
        "--no-probe",
        "--batch-sizes",
        "128",
        "--num-workers",
        "2",
        "--staleness",
        "0",
        "--data-dir",
        str(data_dir),
    ]


def bench_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}


def cluster_processes(root: str) -> list[str]:
    """Every process whose command line or environment names the cluster's directory: its
    raylets, GCS, agents and workers all do (--temp-dir, session dirs, the cluster marker)."""
    needle = root.encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if needle in cmdline or needle in environ:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found


def test_two_node_rows_beside_the_single_node_ones(prepared_mnist: Path) -> None:
    done = subprocess.run(
        bench_command(prepared_mnist),
        env=bench_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    match = ROOT.search(done.stderr)
    assert match, done.stderr[-3000:]
    root = match.group(1)
    # Torn down by the time the bench exits: no raylet, GCS, agent or worker, no directory.
    assert cluster_processes(root) == []
    assert not Path(root).exists()

    out = json.loads(done.stdout)
    assert out["config"]["two_node"] is True
    assert out["machine"]["two_node_cluster"]["nodes"] == 2
    rows = {(r["variant"], r["workers"]): r for r in out["results"]}
    assert set(rows) == {("floor", None), ("numpy", 1), ("dtrain", 2), ("dtrain-two-node", 2)}
    two, one = rows[("dtrain-two-node", 2)], rows[("dtrain", 2)]
    for r in (two, one):
        for key in ("step_seconds", "epoch_seconds", "samples_per_second", "ratio_to_numpy"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["steps"] == 8 and r["staleness"] == 0
    # The same NumPy loop of the same run is the reference of both.
    numpy_epoch = rows[("numpy", 1)]["epoch_seconds"]
    assert math.isclose(two["ratio_to_numpy"], two["epoch_seconds"] / numpy_epoch)
    # Same batches, same arithmetic: the object-store path ends where shared memory ends.
    assert two["test_accuracy"] == one["test_accuracy"]

    (bd,) = [b for b in out["dtrain_breakdown"] if b["variant"] == "dtrain-two-node"]
    assert bd["step_seconds"] > 0 and bd["worker_compute_seconds"] > 0
    # The actors were found among the cluster's processes, not the driver's children.
    roles = sorted(p["role"] for p in bd["processes"])
    assert roles == ["ParameterServer", "Worker", "Worker", "driver"]
    assert all(p["peak_rss_bytes"] > 0 for p in bd["processes"])
    # The targets judge the single-node engine only.
    assert not any("two" in t["name"] for t in out["targets"])


def test_ctrl_c_leaves_no_node_running(prepared_mnist: Path) -> None:
    lines: queue.Queue[str] = queue.Queue()
    root = None
    seen: list[str] = []
    with subprocess.Popen(
        bench_command(prepared_mnist),
        env=bench_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:

        def read() -> None:
            for line in proc.stderr or ():
                lines.put(line)

        # A reader thread, so that a bench that goes quiet fails the wait instead of hanging.
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 400
            while not seen or "dtrain, two nodes:" not in seen[-1]:  # up and training on it
                try:
                    seen.append(lines.get(timeout=max(deadline - time.monotonic(), 0.1)))
                except queue.Empty:
                    raise AssertionError("".join(seen)[-3000:]) from None
                match = ROOT.search(seen[-1])
                root = root or (match.group(1) if match else None)
            assert root is not None, "".join(seen)[-3000:]
            assert cluster_processes(root), "the cluster should be running now"
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=30)  # EOF once the bench is gone
    assert proc.returncode != 0
    assert cluster_processes(root) == []
    assert not Path(root).exists()
