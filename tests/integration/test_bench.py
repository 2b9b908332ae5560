"""`dtrain bench` end to end on a real local Ray, in its quick (smoke) form."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.service.errors import DtrainError
from dtrain.service.perf.bench import run_bench
from dtrain.service.perf.config import QUICK_STEPS, BenchConfig
from dtrain.service.perf.report import REPORT_KEYS, ROW_KEYS, SCHEMA, BenchReport, format_report
from dtrain.service.perf.results import find_row
from dtrain.service.perf.variants import import_torch, step_flops
from dtrain.workers.model import ModelSpec

pytestmark = pytest.mark.usefixtures("ray_local")

BATCHES = (128, 512)
WORKERS = (1, 2)
STALENESS = (0, 1)


@pytest.fixture(scope="module")
def report(ray_local: object, prepared_mnist: Path) -> BenchReport:
    """One quick bench of every variant, shared by the tests that read it."""
    config = BenchConfig.quick(
        data_dir=prepared_mnist, batch_sizes=BATCHES, workers=WORKERS, staleness=STALENESS
    )
    return run_bench(config)


def test_every_variant_has_a_row_with_positive_numbers(report: BenchReport) -> None:
    torch_rows = import_torch() is not None
    assert report.torch["used"] is torch_rows
    want = {("floor", b, None, None) for b in BATCHES} | {("numpy", b, 1, None) for b in BATCHES}
    want |= {("dtrain", b, w, k) for b in BATCHES for w in WORKERS for k in STALENESS}
    if torch_rows:
        want |= {("torch", b, 1, None) for b in BATCHES}
    got = [(r.variant, r.batch_size, r.workers, r.staleness) for r in report.rows]
    assert sorted(got, key=str) == sorted(want, key=str)
    for r in report.rows:
        assert r.steps == QUICK_STEPS and r.total_steps == QUICK_STEPS + 2
        assert r.step_seconds > 0 and r.samples_per_second > 0 and r.ratio_to_numpy > 0
        assert r.steps_per_epoch == math.ceil(60000 / r.batch_size)
        assert math.isclose(r.epoch_seconds, r.step_seconds * r.steps_per_epoch)
        assert math.isclose(r.samples_per_second, r.batch_size / r.step_seconds)
    for b in BATCHES:
        assert find_row(report.rows, "numpy", b, 1).ratio_to_numpy == 1.0
        floor = find_row(report.rows, "floor", b, None)
        assert floor.gflop_per_second > 0
        assert floor.step_seconds == pytest.approx(
            step_flops(ModelSpec(), b) / floor.gflop_per_second / 1e9
        )


def test_dtrain_trains_what_the_plain_loop_trains(report: BenchReport) -> None:
    """Same batches, schedule and start: one worker ends where the loop ends, up to rounding."""
    for b in BATCHES:
        plain = find_row(report.rows, "numpy", b, 1)
        one = find_row(report.rows, "dtrain", b, 1)
        assert one.test_accuracy == pytest.approx(plain.test_accuracy, abs=0.002)
        (bd,) = [
            x for x in report.breakdown if x.batch_size == b and x.workers == 1 and not x.staleness
        ]
        assert bd.max_weight_difference_to_numpy < 1e-5  # another batch order: ~1e-3
        assert find_row(report.rows, "dtrain", b, 2).test_accuracy > 0.5
        assert find_row(report.rows, "dtrain", b, 2, staleness=1).test_accuracy > 0.5


def test_breakdown_adds_up_and_finds_every_process(report: BenchReport) -> None:
    assert sorted((b.batch_size, b.workers, b.staleness) for b in report.breakdown) == sorted(
        (b, w, k) for b in BATCHES for w in WORKERS for k in STALENESS
    )
    for b in report.breakdown:
        # A quick run's measured steps fit inside one look of the driver: too short to tell.
        assert b.driver_cpu_ratio is None or 0 <= b.driver_cpu_ratio <= 1
        parts = b.worker_compute_seconds + b.aggregate_seconds + b.update_seconds
        assert b.worker_compute_seconds > 0 and b.update_seconds > 0
        assert parts + b.overhead_seconds == pytest.approx(b.step_seconds)
        assert b.transfer_seconds >= 0
        assert b.transfer_seconds + b.scheduling_seconds == pytest.approx(b.overhead_seconds)
        roles = sorted(p["role"] for p in b.processes)
        assert roles == sorted(["driver", "ParameterServer"] + ["Worker"] * b.workers)
        assert all(p["peak_rss_bytes"] > 0 for p in b.processes)
        assert b.peak_rss_bytes == sum(p["peak_rss_bytes"] for p in b.processes)
        assert 0 < b.peak_rss_gib < 8
    assert [p.workers for p in report.probes] == list(WORKERS)
    assert all(p.full_step_seconds > 0 and p.tiny_step_seconds > 0 for p in report.probes)


def test_json_has_the_documented_keys_and_targets(report: BenchReport) -> None:
    out = json.loads(json.dumps(report.to_dict()))
    assert set(out) == REPORT_KEYS and out["schema"] == SCHEMA
    assert all(set(r) == ROW_KEYS for r in out["results"])
    assert out["config"]["batch_sizes"] == list(BATCHES)
    names = [t["name"] for t in out["targets"]]
    assert any("staleness 1, batch 128" in n and "s/epoch" in n for n in names)
    assert any("batch 128" in n and "s/epoch" in n for n in names)
    assert any("batch 512" in n and "s/epoch" in n for n in names)
    assert any("peak RSS" in n for n in names)
    # Quick runs stop before an epoch, where the accuracy comparison means nothing yet.
    assert not any("accuracy" in n for n in names)
    text = format_report(report)
    for needle in ("sgemm floor", "numpy loop", "dtrain per step", "targets", "peak RSS GiB"):
        assert needle in text


def test_without_torch_the_torch_loop_is_left_out(
    monkeypatch: pytest.MonkeyPatch, prepared_mnist: Path
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    config = BenchConfig.quick(data_dir=prepared_mnist, batch_sizes=(128,), workers=(), probe=False)
    report = run_bench(config)
    assert report.torch == {"used": False, "reason": "torch is not installed"}
    assert [r.variant for r in report.rows] == ["floor", "numpy"]
    assert "torch loop not run: torch is not installed" in format_report(report)
    with pytest.raises(DtrainError, match="PyTorch is not installed"):
        run_bench(BenchConfig.quick(data_dir=prepared_mnist, use_torch=True))


def test_cli_prints_one_json_object(prepared_mnist: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--quick",
            "--json",
            "--no-torch",
            "--no-probe",
            "--batch-sizes",
            "128",
            "--num-workers",
            "1",
            "--staleness",
            "0",
            "--data-dir",
            str(prepared_mnist),
            "--rounds",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["config"]["rounds"] == 2
    assert all(len(r["ratio_rounds"]) == 2 for r in out["results"])
    assert out["torch"] == {"used": False, "reason": "--no-torch"}
    assert [(r["variant"], r["workers"]) for r in out["results"]] == [
        ("floor", None),
        ("numpy", 1),
        ("dtrain", 1),
    ]
    # No probe, but the shared-memory exchange (auto on one node) moves no payload at all.
    assert out["transfer_probe"] == [] and out["dtrain_breakdown"][0]["transfer_seconds"] == 0.0
