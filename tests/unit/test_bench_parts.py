"""The parts of `dtrain bench` that need no Ray: its option checks and the sgemm floor."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.service.perf.variants import matmul_shapes, step_flops, time_floor
from dtrain.workers.model import ModelSpec


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "1", "--num-workers", "2"], "smaller than 2 workers"),
        (["--batch-sizes", "128,x"], "not a comma-separated list"),
        (["--num-workers", "0"], "must be >= 1"),
        (["--two-node", "--exchange", "shared-memory"], "two_node: the two-node cluster's"),
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
