"""The shipped alerting and recording rules: promtool's unit tests, and that they fit the project.

`promtool test rules` replays series through the rules (tests/unit/promtool/rules_test.yml);
the checks here make sure those rules are the ones the shipped config loads, that every alert is
tested and explained in the README, and that every series they read is really exported.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dtrain.service.observe.metrics import PrometheusMetrics
from dtrain.service.observe.stats import JobInfo

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
TEST_FILE = Path(__file__).parent / "promtool" / "rules_test.yml"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules(name: str) -> list[dict[str, Any]]:
    return [rule for group in load(RULES / name)["groups"] for rule in group["rules"]]


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = subprocess.run(
        ["promtool", "test", "rules", TEST_FILE.name],
        cwd=TEST_FILE.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_tests_cover_the_shipped_rules_as_the_config_loads_them() -> None:
    config = load(RULES / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml", "recording.yml"]
    tested = load(TEST_FILE)
    assert [(TEST_FILE.parent / f).resolve() for f in tested["rule_files"]] == [
        RULES / "alerts.yml",
        RULES / "recording.yml",
    ]
    alerts = {r["alert"] for r in rules("alerts.yml")}
    assert alerts == {
        "DtrainJobStalled",
        "DtrainDiverged",
        "DtrainWorkersLost",
        "DtrainRestartsRising",
        "DtrainCheckpointTooOld",
        "DtrainJobFailed",
        "DtrainJobVanished",
    }
    cases = [c for t in tested["tests"] for c in t.get("alert_rule_test", [])]
    for alert in alerts:
        mine = [c for c in cases if c["alertname"] == alert]
        # Each alert seen both quiet and firing.
        assert any(not c["exp_alerts"] for c in mine), alert
        assert any(c["exp_alerts"] for c in mine), alert
    records = {r["record"] for r in rules("recording.yml")}
    exprs = {e["expr"] for t in tested["tests"] for e in t.get("promql_expr_test", [])}
    assert records == exprs


def test_every_alert_is_explained_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Alerts") :]
    section = section[: section.index("\n## ")]
    for rule in rules("alerts.yml"):
        assert f"`{rule['alert']}`" in section, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert "{{ $labels.run_id }}" in rule["annotations"]["summary"]


def test_every_series_the_rules_read_is_exported() -> None:
    m = PrometheusMetrics()
    m.on_start(
        JobInfo(
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
    )
    text = generate_latest(m.registry).decode()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    exprs = [r["expr"] for name in ("alerts.yml", "recording.yml") for r in rules(name)]
    read = {n for e in exprs for n in re.findall(r"\bdtrain_[a-z_]+", e)}
    assert len(read) >= 10
    assert read <= exported, sorted(read - exported)
