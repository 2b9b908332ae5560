"""Tests that need an NVIDIA GPU and CuPy: `make test-gpu` (pytest -m gpu) runs them.

They are deselected (not skipped) in the default suite, which runs where there is no GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dtrain.service.train.config import TrainConfig
from dtrain.service.train.trainer import Trainer
from dtrain.workers.core import WorkerCore
from dtrain.workers.device import array_module
from dtrain.workers.model import ModelSpec, init_params
from dtrain.workers.rows import TrainRows
from dtrain.workers.shards import read_rows


def test_gpu_gradients_match_cpu_gradients_on_the_same_batch(prepared_mnist: Path) -> None:
    from dtrain.service.data import dataset

    cupy = array_module("gpu")
    manifest = dataset.read_manifest(prepared_mnist)
    x, y = read_rows(prepared_mnist, manifest, "train", 0, 4096)
    spec = ModelSpec()
    params = init_params(spec, 0)
    kwargs = {
        "rank": 0,
        "spec": spec,
        "rows": TrainRows.of(x, y),
        "batch_size": 512,
        "parts": (0, 64),
        "seed": 0,
    }
    g_cpu, s_cpu = WorkerCore(**kwargs).compute_gradients(params, 1, 3)
    g_gpu, s_gpu = WorkerCore(**kwargs, xp=cupy).compute_gradients(params, 1, 3)
    assert type(g_gpu) is np.ndarray
    np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-3, atol=1e-4)  # float32, other summation
    assert s_gpu.correct == s_cpu.correct
    assert s_gpu.loss_sum == pytest.approx(s_cpu.loss_sum, rel=1e-5)


@pytest.mark.usefixtures("ray_local_gpu")
def test_mixed_cpu_and_gpu_workers_train(prepared_mnist: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        data_dir=prepared_mnist,
        run_dir=tmp_path / "r",
        device="gpu",
        num_workers=2,
        num_gpu_workers=1,
        epochs=1,
        max_steps=200,
    )
    summary = Trainer(config).run()
    assert summary.steps == 200 and summary.test_accuracy > 0.9
