"""dtrain on a real two-node Ray cluster on this machine (service/loopback.py: `ray start
--head` plus `ray start --address`, loopback only, a token of its own). Jobs go through the real
Jobs API with `dtrain submit`; teardown ends only this cluster's processes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtrain.service.loopback import BIN, LoopbackCluster

NODES = 2
CPUS_PER_NODE = 2


@pytest.fixture(scope="module")
def cluster(prepared_mnist: Path) -> Iterator[LoopbackCluster]:
    # Short and under /tmp: Ray's unix socket paths must stay below ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="dtrc-", dir="/tmp"))
    c = LoopbackCluster(
        root=root,
        num_nodes=NODES,
        cpus_per_node=CPUS_PER_NODE,
        extra_env={"DTRAIN_DATA_DIR": str(prepared_mnist), "DTRAIN_RUNS_DIR": str(root / "runs")},
    )
    try:
        c.start()
        yield c
    finally:
        c.stop()
        assert not c.processes(), "processes of the test cluster outlived its teardown"


def run(
    cluster: LoopbackCluster, *args: str, timeout: float = 240, **env: str | None
) -> subprocess.CompletedProcess[str]:
    full_env = {**cluster.env, **{k: v for k, v in env.items() if v is not None}}
    for key in [k for k, v in env.items() if v is None]:
        full_env.pop(key, None)
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        env=full_env,
        cwd=cluster.root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary_from_logs(logs: str) -> dict[str, Any]:
    """The job's last line of output: `dtrain train --json`'s summary."""
    lines = [line for line in logs.splitlines() if line.startswith('{"test_accuracy"')]
    assert lines, logs[-3000:]
    return json.loads(lines[-1])


def job_status(cluster: LoopbackCluster, job_id: str) -> dict[str, Any]:
    done = run(
        cluster, "dtrain", "jobs", "status", job_id, "--json", "--address", cluster.dashboard_url
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def submitted(cluster: LoopbackCluster) -> tuple[str, subprocess.CompletedProcess[str]]:
    """One full epoch (batch 512: 118 steps) submitted with --wait: (job id, the command)."""
    done = run(
        cluster,
        "dtrain",
        "submit",
        "--address",
        cluster.dashboard_url,
        "--wait",
        "--epochs",
        "1",
        "--batch-size",
        "512",
        "--num-workers",
        "2",
    )
    job_id = done.stdout.splitlines()[0] if done.stdout else ""
    return job_id, done


# --- a job that succeeds --------------------------------------------------------------------


def test_submitted_epoch_succeeds_with_workers_on_both_nodes(
    cluster: LoopbackCluster, submitted: tuple[str, subprocess.CompletedProcess[str]]
) -> None:
    job_id, done = submitted
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.fullmatch(r"dtrain-\d{8}-\d{6}-[0-9a-f]{4}", job_id)
    assert f"dtrain: job {job_id} succeeded" in done.stderr
    summary = summary_from_logs(done.stdout)  # --wait streamed the job's logs
    assert summary["epochs"] == 1 and summary["steps"] >= 117
    assert summary["test_accuracy"] > 0.9
    # No shared disk assumed on several nodes: the rows went through the object store.
    assert summary["data_transport"] == "object-store"
    assert len(summary["worker_nodes"]) == 2
    assert set(summary["worker_nodes"]) == cluster.node_ids()
    # The run directory is where $DTRAIN_RUNS_DIR put it on the head, named by the job.
    saved = json.loads((cluster.root / "runs" / job_id / "summary.json").read_text())
    assert saved["worker_nodes"] == summary["worker_nodes"]
    assert (cluster.root / "runs" / job_id / "checkpoint.npz").is_file()


def test_job_is_found_again_by_dtrain_and_by_ray(
    cluster: LoopbackCluster, submitted: tuple[str, subprocess.CompletedProcess[str]]
) -> None:
    job_id, _ = submitted
    listed = run(cluster, "dtrain", "jobs", "list", "--address", cluster.dashboard_url)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(job_id)]
    assert row.split()[1] == "SUCCEEDED"
    as_json = run(cluster, "dtrain", "jobs", "list", "--json", "--address", cluster.dashboard_url)
    records = {r["submission_id"]: r for r in json.loads(as_json.stdout)}
    assert records[job_id]["status"] == "SUCCEEDED"
    # The address from $RAY_ADDRESS, given as the cluster's GCS address as Ray's tools take it.
    by_gcs = run(cluster, "dtrain", "jobs", "list", RAY_ADDRESS=cluster.gcs_address)
    assert by_gcs.returncode == 0 and job_id in by_gcs.stdout, by_gcs.stderr
    ray_list = run(cluster, "ray", "job", "list", "--address", cluster.dashboard_url)
    assert ray_list.returncode == 0 and job_id in ray_list.stdout, ray_list.stderr[-2000:]
    status = job_status(cluster, job_id)
    assert status["status"] == "SUCCEEDED"
    assert "--batch-size 512" in status["entrypoint"]
    assert status["metadata"]["dtrain_version"]


def test_logs_come_back(
    cluster: LoopbackCluster, submitted: tuple[str, subprocess.CompletedProcess[str]]
) -> None:
    job_id, _ = submitted
    logs = run(cluster, "dtrain", "jobs", "logs", job_id, "--address", cluster.dashboard_url)
    assert logs.returncode == 0
    assert "epoch 1/1" in logs.stdout
    assert summary_from_logs(logs.stdout)["data_transport"] == "object-store"
    # Following a job that has ended prints the same and exits with its outcome.
    followed = run(
        cluster, "dtrain", "jobs", "logs", job_id, "--follow", "--address", cluster.dashboard_url
    )
    assert followed.returncode == 0 and "epoch 1/1" in followed.stdout


# --- jobs that fail, and jobs that are stopped --------------------------------------------


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        # Valid here, refused by the cluster: it has 4 CPUs.
        (["--num-workers", "64"], "the Ray cluster has 4 CPUs but 64 workers"),
        # Words after -- are not checked here; the job's own `dtrain train` refuses them.
        (["--", "--epochz", "1"], "No such option '--epochz'"),
    ],
)
def test_failing_job_exits_nonzero_with_its_error(
    cluster: LoopbackCluster, args: list[str], cause: str
) -> None:
    done = run(cluster, "dtrain", "submit", "--address", cluster.dashboard_url, "--wait", *args)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    job_id = done.stdout.splitlines()[0]
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"dtrain: error: job {job_id} FAILED: {last.split('FAILED: ', 1)[1]}"
    assert cause in last
    assert job_status(cluster, job_id)["status"] == "FAILED"


def test_stop_a_running_job(cluster: LoopbackCluster) -> None:
    done = run(cluster, "dtrain", "submit", "--address", cluster.dashboard_url, "--epochs", "20")
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()

    def training() -> bool:
        logs = run(cluster, "dtrain", "jobs", "logs", job_id, "--address", cluster.dashboard_url)
        return "dtrain: 2 workers" in logs.stdout

    wait_for(training, 120, "the job to start training")
    stopped = run(cluster, "dtrain", "jobs", "stop", job_id, "--address", cluster.dashboard_url)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"{job_id}: stopped"
    assert job_status(cluster, job_id)["status"] == "STOPPED"
    followed = run(
        cluster, "dtrain", "jobs", "logs", job_id, "--follow", "--address", cluster.dashboard_url
    )
    assert followed.returncode == 3  # a stopped job's outcome
    # Its actors went with its driver: the cluster's CPUs are all free again.
    wait_for(lambda: cpus_in_use(cluster) == 0.0, 60, "the stopped job's CPUs to be released")


def cpus_in_use(cluster: LoopbackCluster) -> float:
    status = run(cluster, "ray", "status", "--address", cluster.gcs_address)
    match = re.search(r"([\d.]+)/([\d.]+) CPU", status.stdout)
    assert match and float(match.group(2)) == NODES * CPUS_PER_NODE, status.stdout
    return float(match.group(1))


def test_stop_a_pending_job(cluster: LoopbackCluster) -> None:
    """Ray's own stop leaves a job that has not started PENDING (ray #58353); dtrain's ends it."""
    done = run(
        cluster,
        "dtrain",
        "submit",
        "--address",
        cluster.dashboard_url,
        "--entrypoint-num-cpus",
        "64",  # more than the cluster has: the job cannot start
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    time.sleep(2)
    assert job_status(cluster, job_id)["status"] == "PENDING"
    stopped = run(cluster, "dtrain", "jobs", "stop", job_id, "--address", cluster.dashboard_url)
    assert stopped.returncode == 0, stopped.stderr
    assert "was stopped before it started" in stopped.stdout
    assert job_status(cluster, job_id)["status"] in ("STOPPED", "FAILED")
    listed = run(cluster, "dtrain", "jobs", "list", "--json", "--address", cluster.dashboard_url)
    ids = [r["submission_id"] for r in json.loads(listed.stdout)]
    assert job_id in ids and not [i for i in ids if i.startswith(f"{job_id}-stop")]


# --- data on several nodes, through the Trainer ---------------------------------------------


def test_uri_and_object_store_give_the_same_run(
    cluster: LoopbackCluster, tmp_path: Path, prepared_mnist: Path
) -> None:
    """A file:// URI read by every worker, and a path shipped through the object store."""
    common = ["--address", cluster.gcs_address, "--epochs", "1", "--max-steps", "10", "--json"]
    uri = run(
        cluster,
        "dtrain",
        "train",
        *common,
        "--data-dir",
        prepared_mnist.as_uri(),
        "--run-dir",
        str(tmp_path / "uri"),
    )
    assert uri.returncode == 0, uri.stderr[-3000:]
    shipped = run(
        cluster,
        "dtrain",
        "train",
        *common,
        "--data-dir",
        str(prepared_mnist),
        "--data-transport",
        "object-store",
        "--run-dir",
        str(tmp_path / "shipped"),
    )
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    a, b = json.loads(uri.stdout.splitlines()[-1]), json.loads(shipped.stdout.splitlines()[-1])
    assert a["data_transport"] == "filesystem" and b["data_transport"] == "object-store"
    assert set(a["worker_nodes"]) == set(b["worker_nodes"]) == cluster.node_ids()
    # The same rows by either road: the same weights, so the same test loss to the last bit.
    assert a["steps"] == b["steps"] == 10
    assert a["test_loss"] == b["test_loss"]


SHIPPED_ONLY = """
import json, os, shutil, sys
from pathlib import Path
import ray
from dtrain.service.data import transport
from dtrain.workers.actor import Worker
from dtrain.workers.model import ModelSpec
from dtrain.service.train.plan import plan_epoch

data = Path(sys.argv[1])
ray.init(address=os.environ["GCS_ADDRESS"], logging_level="ERROR")
manifest = transport.load_manifest(data)
plan = plan_epoch(manifest["splits"]["train"]["num_samples"], 2, 128)
source = transport.train_source("object-store", data, manifest)
shutil.rmtree(data)  # from here on the rows exist only in Ray's object store
cls = ray.remote(Worker).options(num_cpus=1, scheduling_strategy="SPREAD")
workers = [
    cls.remote(rank=r, spec=ModelSpec(), data_dir=None, manifest=manifest, batch_size=128,
               parts=parts, seed=0, source=source)
    for r, parts in enumerate(plan.parts)
]
print(json.dumps({"rows": ray.get([w.ready.remote() for w in workers]),
                  "nodes": ray.get([w.node_id.remote() for w in workers])}))
"""


def test_workers_need_no_data_dir_with_the_object_store(
    cluster: LoopbackCluster, tmp_path: Path, prepared_mnist: Path
) -> None:
    data = tmp_path / "mnist"
    shutil.copytree(prepared_mnist, data)
    done = run(cluster, "python", "-c", SHIPPED_ONLY, str(data), GCS_ADDRESS=cluster.gcs_address)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not data.exists()
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["rows"] == [60000, 60000]  # every worker holds every training row
    assert set(out["nodes"]) == cluster.node_ids()


# --- what a user gets wrong ---------------------------------------------------------------


def test_wrong_or_missing_token_is_one_line(cluster: LoopbackCluster, tmp_path: Path) -> None:
    wrong = run(
        cluster,
        "dtrain",
        "jobs",
        "list",
        "--address",
        cluster.dashboard_url,
        RAY_AUTH_TOKEN="not-the-token",
    )
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.strip() == (
        f"Error: the Ray cluster at {cluster.dashboard_url} rejected the token from "
        "$RAY_AUTH_TOKEN: it is not this cluster's token"
    )
    # No token anywhere (HOME elsewhere hides ~/.ray/auth_token): the cluster asks for one.
    missing = run(
        cluster,
        "dtrain",
        "jobs",
        "list",
        "--address",
        cluster.dashboard_url,
        RAY_AUTH_TOKEN=None,
        HOME=str(tmp_path),
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"Error: the Ray cluster at {cluster.dashboard_url} requires a token and no token was "
        "found: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
    ]
    # A submission with the wrong token uploads nothing and says the same.
    submit = run(
        cluster,
        "dtrain",
        "submit",
        "--address",
        cluster.dashboard_url,
        RAY_AUTH_TOKEN="not-the-token",
    )
    assert submit.returncode == 1 and "rejected the token" in submit.stderr


def train_joining(
    cluster: LoopbackCluster, run_dir: Path, *args: str, **env: str | None
) -> subprocess.CompletedProcess[str]:
    """`dtrain train --address` of the cluster's GCS, as a user who set no RAY_AUTH_MODE."""
    return run(
        cluster,
        "dtrain",
        "train",
        "--address",
        cluster.gcs_address,
        "--run-dir",
        str(run_dir),
        *args,
        RAY_AUTH_MODE=None,
        **env,
    )


def test_train_joins_with_only_the_token_exported(cluster: LoopbackCluster, tmp_path: Path) -> None:
    """The README has a user export RAY_AUTH_TOKEN, nothing else: `dtrain train --address`
    sends it (Ray's client sends a token only with RAY_AUTH_MODE=token set on its side too)."""
    done = train_joining(cluster, tmp_path / "run", "--epochs", "1", "--max-steps", "3", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["steps"] == 3


def test_train_with_a_wrong_or_no_token_is_one_line_at_once(
    cluster: LoopbackCluster, tmp_path: Path
) -> None:
    """ray.init retries a refused token for 20 s, a line a second, then says only "Failed to
    connect"; dtrain asks the GCS once and names the token."""
    start = time.monotonic()
    wrong = train_joining(cluster, tmp_path / "wrong", RAY_AUTH_TOKEN="not-the-token")
    assert time.monotonic() - start < 15
    assert wrong.returncode == 1 and not (tmp_path / "wrong").exists()
    assert "Traceback" not in wrong.stderr, wrong.stderr
    assert [line for line in wrong.stderr.splitlines() if "warning" not in line] == [
        (
            f"Error: the Ray cluster at {cluster.gcs_address} rejected the token from "
            "$RAY_AUTH_TOKEN: it is not this cluster's token"
        )
    ]
    missing = train_joining(cluster, tmp_path / "missing", RAY_AUTH_TOKEN=None, HOME=str(tmp_path))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"Error: the Ray cluster at {cluster.gcs_address} requires a token and no token was "
        "found: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
    ]


@pytest.mark.parametrize("command", ["status", "logs", "stop"])
def test_unknown_job_id_is_one_line(cluster: LoopbackCluster, command: str) -> None:
    done = run(
        cluster, "dtrain", "jobs", command, "no-such-job", "--address", cluster.dashboard_url
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error: no job 'no-such-job' on the Ray cluster at {cluster.dashboard_url}"
    )


def test_a_port_that_is_not_the_jobs_api_is_one_line(cluster: LoopbackCluster) -> None:
    # The GCS port answers TCP but not HTTP.
    done = run(cluster, "dtrain", "jobs", "list", "--address", f"http://{cluster.gcs_address}")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert f"no Ray Jobs API answers at http://{cluster.gcs_address}" in line
