"""A real Prometheus server scrapes a real training run on a real local Ray."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import TrainConfig
from service.driver import Trainer
from service.metrics import PrometheusMetrics

pytestmark = pytest.mark.usefixtures("ray_local")


ROOT = Path(__file__).resolve().parents[1]


def documented_metric_names() -> set[str]:
    """dtrain_* names in the Grafana dashboard's queries and the README's metric table."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dtrain-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Watching a run") : readme.index("## How it works")]
    names = set(re.findall(r"\bdtrain_[a-z_]+", exprs + " " + section))
    assert len(names) >= 25, sorted(names)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, **params: object) -> dict:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus server on loopback; the test writes the scrape target into its config."""
    assert shutil.which("prometheus"), "the Debian package prometheus must be installed"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    yield f"http://127.0.0.1:{port}", config
    # (started by start_prometheus, stopped by its own finalizer)


def start_prometheus(base: str, config: Path, target: str, tmp_path: Path) -> subprocess.Popen:
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: dtrain\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = base.rsplit(":", 1)[1]
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        assert time.monotonic() < deadline, "prometheus did not become ready"
        time.sleep(0.2)


def test_prometheus_scrapes_a_run_and_agrees_with_its_summary(
    prepared_mnist: Path, tmp_path: Path, prometheus: tuple[str, Path]
) -> None:
    base, config = prometheus
    metrics = PrometheusMetrics(grace_seconds=4.0)  # >= 2 scrapes of the final values
    port = metrics.serve("127.0.0.1", 0)
    proc = start_prometheus(base, config, f"127.0.0.1:{port}", tmp_path)
    try:
        # Wait for a first scrape, so the run is watched from its start.
        deadline = time.monotonic() + 30
        while not api(base, "query", query='up{job="dtrain"} == 1')["result"]:
            assert time.monotonic() < deadline, "prometheus never scraped the exporter"
            time.sleep(0.3)
        start = time.time()
        cfg = TrainConfig(
            data_dir=prepared_mnist,
            run_dir=tmp_path / "run",
            epochs=2,
            max_steps=300,
            checkpoint_every=100,
        )
        summary = Trainer(cfg, [metrics]).run()
        end = time.time()

        def latest(query: str) -> float:
            # At a moment of the grace period: once the endpoint closes, Prometheus marks the
            # series stale and an instant query at "now" finds nothing.
            result = api(base, "query", query=query, time=end - 1.0)["result"]
            assert result, f"no series for {query}"
            return float(result[0]["value"][1])

        assert latest("dtrain_steps_total") == summary.steps == 300
        assert latest("dtrain_samples_total") == 300 * 128
        assert latest("dtrain_test_accuracy_ratio") == pytest.approx(summary.test_accuracy)
        assert latest("dtrain_epoch") == 1  # 300 steps of the first epoch's 469
        assert latest("dtrain_job_success") == 1
        assert latest("dtrain_checkpoints_written_total") == 3  # steps 100, 200 and the end
        assert latest('dtrain_step_phase_duration_seconds_count{phase="compute"}') == 300
        assert latest("count(dtrain_worker_compute_duration_seconds_count)") == 2
        assert latest('dtrain_job_info{optimizer="nesterov",batch_size="128"}') == 1

        # Every series the dashboard and the README name is in what Prometheus really scraped.
        scraped = set(api(base, "label/__name__/values"))
        assert "dtrain_steps_total" in scraped
        # A histogram is named by its family (README) and scraped as _bucket/_sum/_count.
        missing = {n for n in documented_metric_names() if not {n, f"{n}_count"} & scraped}
        assert not missing, f"named but never scraped: {sorted(missing)}"

        # Counters only grow, and the run was scraped while it ran, not only at the end.
        series = api(
            base,
            "query_range",
            query="dtrain_steps_total",
            start=start - 2,
            end=end + 1,
            step="0.5",
        )["result"]
        values = [float(v) for _, v in series[0]["values"]]
        assert values == sorted(values), values
        assert len(set(values)) >= 2, values
    finally:
        metrics.close()
        proc.terminate()
        proc.wait(timeout=30)
