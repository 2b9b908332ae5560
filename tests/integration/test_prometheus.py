"""A real Prometheus server scrapes a real training run on a real local Ray."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.service.observe.metrics import PrometheusMetrics
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("ray_local")


ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
# The run: 300 steps of batch 128 (the first epoch has 469), a checkpoint every 100.
STEPS, BATCH = 300, 128
# The endpoint's grace gives Prometheus many scrapes of the final values.
GRACE_SECONDS = 4.0


def documented_metric_names() -> set[str]:
    """dtrain_* names in the Grafana dashboard's queries and the README's metric table."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dtrain-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Watching a run") : readme.index("## How it works")]
    # Not the recording rules' own names (run:dtrain_samples:rate1m), which no scrape has.
    names = set(re.findall(r"(?<![\w:])dtrain_[a-z_]+", exprs + " " + section))
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
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Starts a Prometheus server on loopback scraping ``target`` every 100 ms; returns its URL.

    Stopped in teardown whatever the test did.
    """
    assert shutil.which("prometheus"), "the Debian package prometheus must be installed"
    procs: list[subprocess.Popen] = []
    log_path = tmp_path / "prometheus.log"

    def start(target: str) -> str:
        config = tmp_path / "prometheus.yml"
        # The shipped rules, evaluated every second.
        rule_files = "".join(f"  - {RULES / name}\n" for name in ("alerts.yml", "recording.yml"))
        config.write_text(
            # Scraped every 100 ms: a 300-step run takes about a second now, and the test
            # checks that Prometheus saw it between its start and its end.
            "global:\n  scrape_interval: 100ms\n  scrape_timeout: 100ms\n"
            "  evaluation_interval: 1s\n"
            f"rule_files:\n{rule_files}"
            "scrape_configs:\n  - job_name: dtrain\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        port = free_port()
        with log_path.open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        "prometheus",
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return base
            except OSError:
                pass
            assert procs[-1].poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LastExposition(threading.Thread):
    """Reads the exporter's /metrics until it closes: ``body`` is the last one it served."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.body = b""

    def run(self) -> None:
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.body = r.read()
            except OSError:
                return
            time.sleep(0.3)


def test_prometheus_scrapes_a_run_and_agrees_with_its_summary(
    prepared_mnist: Path, tmp_path: Path, prometheus: Callable[[str], str]
) -> None:
    metrics = PrometheusMetrics(grace_seconds=GRACE_SECONDS, labels={"run_id": "scraped-run"})
    port = metrics.serve("127.0.0.1", 0)
    base = prometheus(f"127.0.0.1:{port}")
    try:
        # Wait for a first scrape, so the run is watched from its start.
        deadline = time.monotonic() + 30
        while not api(base, "query", query='up{job="dtrain"} == 1')["result"]:
            assert time.monotonic() < deadline, "prometheus never scraped the exporter"
            time.sleep(0.3)
        reader = LastExposition(f"http://127.0.0.1:{port}/metrics")
        reader.start()
        start = time.time()
        run_dir = tmp_path / "run"
        cfg = TrainConfig(
            data_dir=prepared_mnist,
            run_dir=run_dir,
            epochs=2,
            max_steps=STEPS,
            batch_size=BATCH,
            checkpoint_every=100,
        )
        Trainer(cfg, [metrics]).run()
        end = time.time()
        reader.join(timeout=30)
    finally:
        metrics.close()
    summary = json.loads((run_dir / "summary.json").read_text())

    def latest(query: str) -> float:
        # At a moment of the grace period: once the endpoint closes, Prometheus marks the
        # series stale and an instant query at "now" finds nothing.
        result = api(base, "query", query=query, time=end - 1.0)["result"]
        assert result, f"no series for {query}"
        return float(result[0]["value"][1])

    # What Prometheus holds agrees with what the run wrote in its own summary.json.
    assert summary["steps"] == STEPS
    assert latest("dtrain_steps_total") == latest("dtrain_global_step") == summary["steps"]
    assert latest("dtrain_samples_total") == summary["steps"] * summary["batch_size"]
    assert latest("dtrain_test_accuracy_ratio") == pytest.approx(summary["test_accuracy"])
    assert latest("dtrain_test_loss") == pytest.approx(summary["test_loss"])
    assert latest("dtrain_epoch_train_loss") == pytest.approx(summary["train_loss"])
    assert latest("dtrain_epoch_train_accuracy_ratio") == pytest.approx(summary["train_accuracy"])
    assert latest("dtrain_epoch") == summary["epochs"] == 1  # 300 steps of the first 469
    assert latest("dtrain_job_success") == 1
    assert latest("dtrain_worker_restarts_total") == summary["restarts"] == 0
    assert latest("dtrain_checkpoints_written_total") == 3  # steps 100, 200 and the end
    assert latest('dtrain_step_phase_duration_seconds_count{phase="compute"}') == STEPS
    assert latest("count(dtrain_worker_compute_duration_seconds_count)") == 2
    assert latest('dtrain_job_info{optimizer="nesterov",batch_size="128",num_workers="2"}') == 1
    samples_per_second = summary["history"][-1]["samples_per_second"]
    assert latest("dtrain_samples_per_second") == pytest.approx(samples_per_second)

    # Every series the dashboard and the README name is in what Prometheus really scraped.
    scraped = set(api(base, "label/__name__/values"))
    assert "dtrain_steps_total" in scraped
    # A histogram is named by its family (README) and scraped as _bucket/_sum/_count.
    missing = {n for n in documented_metric_names() if not {n, f"{n}_count"} & scraped}
    assert not missing, f"named but never scraped: {sorted(missing)}"

    # Every dashboard query, as Grafana sends it for this job and run, answers with data.
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dtrain-dashboard.json").read_text())
    assert api(base, "label/run_id/values") == ["scraped-run"]
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(queries) >= 24
    for query in queries:
        sent = query.replace("$job", "dtrain").replace("$run", "scraped-run")
        result = api(base, "query", query=sent, time=end - 1.0)["result"]
        assert [r["metric"].get("run_id") for r in result][:1] == ["scraped-run"], query
    # The checkpoint age of an ended job: from its newest checkpoint (the final one) to its end.
    age = next(q for q in queries if "dtrain_last_checkpoint" in q)
    age = age.replace("$job", "dtrain").replace("$run", "scraped-run")
    assert 0 <= float(api(base, "query", query=age, time=end - 1.0)["result"][0]["value"][1]) < 5

    # The shipped rules load and evaluate on the real scrape: throughput per run, no alert
    # for a run that ended well.
    groups = api(base, "rules")["groups"]
    assert {g["name"] for g in groups} == {"dtrain", "dtrain-throughput"}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
    rate = api(base, "query", query="run:dtrain_samples:rate1m", time=end - 1.0)["result"]
    assert rate and rate[0]["metric"]["run_id"] == "scraped-run", rate
    assert float(rate[0]["value"][1]) > 0
    assert api(base, "query", query="ALERTS", time=end - 1.0)["result"] == []

    # Counters and histogram counts only grow, and the run was scraped while it ran.
    series = api(
        base,
        "query_range",
        query='{__name__=~"dtrain_.+_total|dtrain_.+_count|dtrain_global_step"}',
        start=start - 2,
        end=end + 1,
        step="0.5",
    )["result"]
    assert len(series) >= 12, [s["metric"] for s in series]
    for s in series:
        values = [float(v) for _, v in s["values"]]
        assert values == sorted(values), (s["metric"], values)
    steps = next(s for s in series if s["metric"]["__name__"] == "dtrain_steps_total")
    assert len({float(v) for _, v in steps["values"]}) >= 3, steps["values"]

    # The exposition the exporter served last (during the grace) passes promtool's lint.
    assert b'dtrain_job_success{run_id="scraped-run"} 1.0' in reader.body
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=reader.body, capture_output=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    assert (lint.stdout + lint.stderr).strip() == b""


def test_cli_serves_on_a_free_port_and_pushes_the_final_values(
    prepared_mnist: Path,
    tmp_path: Path,
    pushgateway: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    url, received = pushgateway
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data-dir",
            str(prepared_mnist),
            "--run-dir",
            str(tmp_path / "run"),
            "--max-steps",
            "5",
            "--hidden-sizes",
            "32",
            "--no-eval-every-epoch",
            "--metrics-port",
            "0",
            "--metrics-grace",
            "0",
            "--pushgateway",
            url,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    printed = re.search(r"dtrain: metrics at http://127\.0\.0\.1:(\d+)/metrics", result.stderr)
    assert printed and int(printed.group(1)) > 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # The run's own group on the gateway, named by its run directory.
    assert len(received) == 1 and received[0][1] == "/metrics/job/dtrain/run_id/run"
    body = received[0][2]
    assert f'dtrain_global_step{{run_id="run"}} {summary["steps"]:.1f}'.encode() in body
    assert b'dtrain_steps_total{run_id="run"} 5.0' in body
    assert b'dtrain_job_success{run_id="run"} 1.0' in body
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
