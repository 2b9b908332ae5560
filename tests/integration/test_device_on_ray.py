"""The device choice met by a real local Ray that has no GPU: a clear error, or CPU workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtrain.service.errors import DtrainError
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.trainer import Trainer


@pytest.mark.usefixtures("ray_local")
def test_gpu_on_a_cluster_without_gpus_is_an_error_not_a_hang(
    prepared_mnist: Path, tmp_path: Path
) -> None:
    config = TrainConfig(data_dir=prepared_mnist, run_dir=tmp_path / "r", device="gpu", max_steps=2)
    with pytest.raises(DtrainError, match="needs 2 GPUs but the Ray cluster has 0"):
        Trainer(config).run()
    assert not (tmp_path / "r").exists()


@pytest.mark.usefixtures("ray_local")
def test_auto_falls_back_to_cpu_workers(prepared_mnist: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        data_dir=prepared_mnist, run_dir=tmp_path / "r", device="auto", max_steps=3, epochs=1
    )
    assert Trainer(config).run().steps == 3


@pytest.mark.usefixtures("ray_local")
def test_bench_on_gpu_without_a_gpu_is_one_line(prepared_mnist: Path) -> None:
    from click.testing import CliRunner

    from dtrain.cli.main import cli

    args = [
        "bench",
        "--quick",
        "--device",
        "gpu",
        "--no-torch",
        "--no-probe",
        "--batch-sizes",
        "128",
        "--num-workers",
        "1",
        "--data-dir",
        str(prepared_mnist),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "needs 1 GPUs but the Ray cluster has 0" in result.output
    assert "Traceback" not in result.output
