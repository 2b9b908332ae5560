"""`dtrain train` on a real local Ray writes the history that `dtrain report` draws."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.service.observe.report import read_history


@pytest.mark.usefixtures("ray_local")
def test_report_of_a_real_run(prepared_mnist: Path, tmp_path: Path) -> None:
    """`dtrain train` writes the history, `dtrain report` draws it: one epoch of 20 steps."""
    run_dir = tmp_path / "run"
    runner = CliRunner()
    trained = runner.invoke(
        cli,
        [
            "train",
            "--data-dir",
            str(prepared_mnist),
            "--run-dir",
            str(run_dir),
            "--max-steps",
            "20",
            "--hidden-sizes",
            "32",
        ],
    )
    assert trained.exit_code == 0, trained.output
    steps, epochs = read_history(run_dir)
    assert [s["step"] for s in steps] == list(range(1, 21))
    assert len(epochs) == 1 and epochs[0]["test_accuracy"] > 0.5
    assert all(len(s["worker_compute_seconds"]) == 2 for s in steps)
    drawn = runner.invoke(cli, ["report", str(run_dir)])
    assert drawn.exit_code == 0, drawn.output
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
