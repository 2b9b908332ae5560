"""The parts of `dtrain bench` that need no Ray: its option checks and the sgemm floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.service.perf.config import BenchConfig
from dtrain.service.perf.report import BenchReport, format_report
from dtrain.service.perf.results import Breakdown, Row, median_round, set_ratios
from dtrain.service.perf.variants import matmul_shapes, step_flops, time_floor
from dtrain.workers.model import ModelSpec


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "1", "--num-workers", "2"], "smaller than 2 workers"),
        (["--batch-sizes", "128,x"], "not a comma-separated list"),
        (["--num-workers", "0"], "must be >= 1"),
        (["--two-node", "--exchange", "shared-memory"], "two_node: the two-node cluster's"),
        (["--rounds", "0"], "0 is not in the range x>=1"),
    ],
)
def test_cli_rejects_bad_options_in_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_the_floor_times_the_steps_exact_products() -> None:
    spec = ModelSpec()
    shapes = matmul_shapes(spec, 128)
    assert [s[0] for s in shapes] == ["forward 0", "forward 1", "dW 0", "dW 1", "dx 1"]
    # 98 GFLOP per epoch of 60,000 samples: the figure docs/performance.md derives.
    per_sample = step_flops(spec, 1)
    assert per_sample == 2 * (784 * 512 + 512 * 10) * 2 + 2 * 10 * 512
    assert per_sample * 60000 / 1e9 == pytest.approx(98.2, abs=0.1)
    timed = time_floor(spec, 16, 3)
    assert len(timed.step_seconds) == 3 and min(timed.step_seconds) > 0
    assert np.isfinite(timed.step_seconds).all()


def _round(loop: float, dtrain: float, rss: int, cpu: float) -> tuple[list[Row], list[Breakdown]]:
    """One round's numpy and dtrain rows (seconds per step) and dtrain's breakdown."""
    rows = [
        Row(
            variant=variant,
            batch_size=128,
            workers=workers,
            steps=10,
            total_steps=12,
            steps_per_epoch=469,
            step_seconds=step,
            epoch_seconds=step * 469,
            samples_per_second=128 / step,
            staleness=staleness,
        )
        for variant, workers, staleness, step in [
            ("numpy", 1, None, loop),
            ("dtrain", 2, 0, dtrain),
        ]
    ]
    set_ratios(rows)
    breakdown = Breakdown(
        batch_size=128,
        workers=2,
        staleness=0,
        step_seconds=dtrain,
        worker_compute_seconds=dtrain / 2,
        aggregate_seconds=0.0,
        update_seconds=0.0,
        overhead_seconds=dtrain / 2,
        transfer_seconds=0.0,
        scheduling_seconds=dtrain / 2,
        peak_rss_bytes=rss,
        peak_rss_gib=rss / 1024**3,
        driver_cpu_ratio=cpu,
        processes=[{"role": "driver", "peak_rss_bytes": rss}],
        max_weight_difference_to_numpy=None,
    )
    return rows, [breakdown]


def test_rounds_report_the_median_ratio_round_and_the_worst_memory() -> None:
    # Ratios 1.5, 1.2, 1.4 (each against its own round's loop); the driver's share worst in 3.
    rounds = [_round(2.0, 3.0, 700, 0.02), _round(1.0, 1.2, 900, 0.01), _round(1.5, 2.1, 800, 0.04)]
    rows, (b,) = median_round(rounds)
    numpy_row, dtrain_row = rows
    assert dtrain_row.ratio_to_numpy == pytest.approx(1.4)  # round 3's row, whole
    assert dtrain_row.step_seconds == 2.1 and b.step_seconds == 2.1
    assert dtrain_row.ratio_rounds == pytest.approx([1.5, 1.2, 1.4])
    assert numpy_row.step_seconds == 1.5  # the loops: the median by seconds
    assert (b.peak_rss_bytes, b.processes[0]["peak_rss_bytes"]) == (700, 700)  # round 1's
    assert b.driver_cpu_ratio == 0.04
    # An even count: the higher middle round, the less flattering ratio.
    rows, _ = median_round(rounds[:2])
    assert rows[1].ratio_to_numpy == pytest.approx(1.5)
    # One round: as it was measured, no per-round column.
    assert median_round(rounds[:1])[0][1].ratio_rounds is None


def test_the_table_shows_every_rounds_ratio() -> None:
    rows, breakdown = median_round(
        [_round(2.0, 3.0, 700, 0.02), _round(1.0, 1.2, 900, 0.01), _round(1.5, 2.1, 800, 0.04)]
    )
    report = BenchReport(
        config=BenchConfig(data_dir=Path("unused"), rounds=3),
        machine={"cpus": 2, "numpy": "2", "blas": "openblas", "ray": "2", "torch": None},
        rows=rows,
        breakdown=breakdown,
        probes=[],
        targets=[],
        torch={"used": False, "reason": "--no-torch"},
    )
    text = format_report(report)
    assert "x numpy by round" in text and "3 rounds: each row" in text
    (line,) = [x for x in text.splitlines() if x.startswith("dtrain   ")]
    assert line.split()[-3:] == ["1.50", "1.20", "1.40"] and " 1.40 " in line
