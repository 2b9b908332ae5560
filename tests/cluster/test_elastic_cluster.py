"""Elastic runs on a real multi-node Ray cluster on loopback: a node leaves, a node joins.

Each test has a cluster of its own (it changes the cluster's nodes mid-run) and drives
`dtrain train --address` as a user would, following the run through its run directory.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtrain.service.loopback import BIN, LoopbackCluster
from dtrain.service.train.loop import POLL_SECONDS


@pytest.fixture
def make_cluster(prepared_mnist: Path) -> Iterator[Any]:
    made: list[LoopbackCluster] = []

    def make(num_nodes: int, cpus_per_node: int) -> LoopbackCluster:
        root = Path(tempfile.mkdtemp(prefix="dtre-", dir="/tmp"))
        cluster = LoopbackCluster(
            root=root,
            num_nodes=num_nodes,
            cpus_per_node=cpus_per_node,
            extra_env={"DTRAIN_DATA_DIR": str(prepared_mnist)},
        )
        made.append(cluster)
        cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()
            assert not cluster.processes(), "processes of the test cluster outlived its teardown"


def train(cluster: LoopbackCluster, run_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(BIN / "dtrain"),
            "train",
            "--address",
            cluster.gcs_address,
            "--run-dir",
            str(run_dir),
            "--json",
            "--no-eval-every-epoch",
            *args,
        ],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    path = run_dir / "history.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def wait_for_step(proc: subprocess.Popen[str], run_dir: Path, step: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["step"] >= step for r in records(run_dir, "step")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"the run did not reach step {step}"
        time.sleep(0.2)


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    summary: dict[str, Any] = json.loads(out.splitlines()[-1])
    summary["stderr"] = err
    return summary


def test_a_node_that_leaves_takes_its_worker_and_the_run_finishes_on_the_head(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = make_cluster(num_nodes=2, cpus_per_node=1)
    run_dir = tmp_path / "run"
    proc = train(
        cluster,
        run_dir,
        "--num-workers",
        "1:2",
        "--max-restarts",
        "0",
        "--max-steps",
        "160",
        "--checkpoint-every",
        "20",
        "--batch-size",
        "512",
    )
    wait_for_step(proc, run_dir, 30, timeout=300)
    cluster.stop_node(1)
    # The driver records the server's steps every POLL_SECONDS: after two polls the history
    # holds every step applied before the node left (seen once: 31 read at once, 36 applied).
    time.sleep(2 * POLL_SECONDS)
    # Steps recorded until now may have been computed by both workers, and stay recorded: the
    # server (placed on either node of a loopback cluster, whose nodes share one address) may
    # have left with the node, and then the run goes on from the newest checkpoint.
    seen = max(r["step"] for r in records(run_dir, "step"))
    summary = finish(proc)
    assert summary["steps"] == 160
    steps = [r["step"] for r in records(run_dir, "step")]
    assert steps == list(range(1, 161)), "a step was recorded twice or skipped"
    changes = records(run_dir, "membership")
    assert [(c["before"], c["after"]) for c in changes] == [(2, 1)], summary["stderr"][-3000:]
    assert changes[0]["reason"] in ("worker_lost", "unplaceable")
    assert changes[0]["step"] <= seen + 1
    # Every step first recorded after the node left was computed by the one worker left.
    after = [r for r in records(run_dir, "step") if r["step"] > seen]
    assert after and {len(r["worker_compute_seconds"]) for r in after} == {1}


def test_a_node_that_joins_grows_the_run_up_to_max(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(num_nodes=1, cpus_per_node=2)
    run_dir = tmp_path / "run"
    # Long enough to outlast a node's start; stopped with SIGTERM once it has grown.
    proc = train(
        cluster,
        run_dir,
        "--num-workers",
        "1:3",
        "--epochs",
        "50",
        "--checkpoint-every",
        "20",
        "--batch-size",
        "512",
    )
    wait_for_step(proc, run_dir, 10, timeout=300)
    assert {len(r["worker_compute_seconds"]) for r in records(run_dir, "step")} == {2}
    cluster.add_node()
    deadline = time.monotonic() + 300
    while not any(len(r["worker_compute_seconds"]) == 3 for r in records(run_dir, "step")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run did not grow to the new node"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # stops at a step boundary, checkpointed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    steps = records(run_dir, "step")
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    changes = records(run_dir, "membership")
    assert [(c["before"], c["after"], c["reason"]) for c in changes] == [(2, 3, "capacity")]
    first = changes[0]["step"]
    assert first % 20 == 1 or first % 118 == 1  # at a segment boundary
    assert {len(r["worker_compute_seconds"]) for r in steps if r["step"] < first} == {2}
    assert {len(r["worker_compute_seconds"]) for r in steps if r["step"] >= first} == {3}
