"""A real Pushgateway keeps every run, and a real Prometheus alerts on what the gateway keeps.

Debian's prometheus-pushgateway and prometheus (`make test` installs both): two runs push their
final values, Prometheus scrapes the gateway with the shipped job's honor_labels and evaluates
the shipped rules, and the failed, diverged run is told apart from the good one by its run_id.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dtrain.service.errors import Diverged
from dtrain.service.observe.metrics import PrometheusMetrics
from dtrain.service.observe.stats import JobInfo, RunSummary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
INFO = JobInfo(
    version="0.1.0",
    run_dir="/tmp/r",
    num_workers=2,
    batch_size=128,
    optimizer="nesterov",
    learning_rate=0.1,
    momentum=0.9,
    epochs=1,
    steps_per_epoch=3,
    hidden_sizes=(512,),
    num_params=407050,
    num_train_samples=300,
    num_test_samples=100,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return bytes(r.read())


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(gateway URL, Prometheus URL): a gateway, and a Prometheus scraping it every second."""
    for binary in ("prometheus-pushgateway", "prometheus"):
        assert shutil.which(binary), f"the Debian package {binary} must be installed"
    gw_port, prom_port = free_port(), free_port()
    shipped = yaml.safe_load((RULES / "prometheus.yml").read_text())
    (gateway_job,) = [s for s in shipped["scrape_configs"] if s["job_name"] == "pushgateway"]
    gateway_job["static_configs"] = [{"targets": [f"127.0.0.1:{gw_port}"]}]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / name) for name in shipped["rule_files"]],
        "scrape_configs": [gateway_job],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "servers.log").open("wb")
    procs = [
        subprocess.Popen(
            [
                "prometheus-pushgateway",
                f"--web.listen-address=127.0.0.1:{gw_port}",
                # Debian's default keeps groups in /var/lib across restarts: a test's own file.
                f"--persistence.file={tmp_path / 'pushgateway.data'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        ),
    ]
    urls = (f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{prom_port}")
    try:
        deadline = time.monotonic() + 60
        for url in urls:
            while True:
                try:
                    get(f"{url}/-/ready")
                    break
                except OSError:
                    assert all(p.poll() is None for p in procs), (
                        tmp_path / "servers.log"
                    ).read_text()
                    assert time.monotonic() < deadline, f"{url} did not become ready"
                    time.sleep(0.2)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


def query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    body = json.loads(get(url))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def finished_run(run_id: str, gateway: str, ok: bool) -> None:
    m = PrometheusMetrics(pushgateway=gateway, labels={"run_id": run_id})
    m.on_start(INFO)
    m.on_health(2, 0, 0)
    if ok:
        summary = RunSummary(
            test_accuracy=0.97,
            test_loss=0.1,
            train_accuracy=0.98,
            train_loss=0.05,
            epochs=1,
            steps=3,
            num_workers=2,
            batch_size=128,
            learning_rate=0.1,
            optimizer="nesterov",
            wall_seconds=2.0,
            train_seconds=1.0,
            samples_per_second=384.0,
            checkpoint="c",
            run_dir="r",
        )
        m.on_end(summary, None)
    else:
        m.on_end(None, Diverged("training diverged at step 2 (epoch 1)", step=2, loss=math.nan))


def test_two_runs_on_one_gateway_are_kept_apart_and_the_bad_one_alerts(
    servers: tuple[str, str],
) -> None:
    gateway, prom = servers
    finished_run("good-run", gateway, ok=True)
    finished_run("bad-run", gateway, ok=False)
    # The gateway keeps both groups: the second push did not replace the first.
    groups = json.loads(get(f"{gateway}/api/v1/metrics"))["data"]
    assert sorted(g["labels"]["run_id"] for g in groups) == ["bad-run", "good-run"]
    for g in groups:
        assert g["labels"]["job"] == "dtrain"

    deadline = time.monotonic() + 60
    while True:
        firing = query(prom, 'ALERTS{alertstate="firing"}')
        names = sorted((a["metric"]["alertname"], a["metric"]["run_id"]) for a in firing)
        if len(names) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # Only the bad run alerts, and each alert names it.
    assert names == [("DtrainDiverged", "bad-run"), ("DtrainJobFailed", "bad-run")], firing
    # honor_labels: the pushed job and run labels, as the endpoint would have them.
    success = {
        r["metric"]["run_id"]: float(r["value"][1])
        for r in query(prom, 'dtrain_job_success{job="dtrain"}')
    }
    assert success == {"good-run": 1.0, "bad-run": 0.0}
    (loss,) = query(prom, 'dtrain_train_loss{run_id="bad-run"}')
    assert loss["value"][1] == "NaN"
