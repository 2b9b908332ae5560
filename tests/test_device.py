"""The array-module code path of GPU workers, exercised on the CPU (CI has no GPU)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from dtrain.service.errors import DtrainError
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.trainer import Trainer
from dtrain.workers.core import WorkerCore
from dtrain.workers.device import DeviceError, array_module, to_host
from dtrain.workers.model import ModelSpec, init_params

SPEC = ModelSpec(input_size=20, hidden_sizes=(16,), num_classes=10)


class DeviceArray(np.ndarray):
    """Stands in for a cupy.ndarray: same arithmetic, but must be copied out with .get()."""

    def get(self) -> np.ndarray:
        return np.asarray(self).copy()


def fake_device_module() -> types.ModuleType:
    """A module that behaves like NumPy but keeps every array it makes "on the device"."""
    mod = types.ModuleType("fakecupy")
    for name in dir(np):
        if not name.startswith("_"):
            setattr(mod, name, getattr(np, name))
    mod.asarray = lambda a, dtype=None: np.asarray(a, dtype=dtype).view(DeviceArray)
    mod.empty = lambda *a, **k: np.empty(*a, **k).view(DeviceArray)
    return mod


def test_cpu_is_numpy_and_unknown_devices_are_refused() -> None:
    assert array_module("cpu") is np
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        array_module("tpu")


def test_gpu_without_cupy_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(DeviceError, match=r"pip install 'dtrain\[gpu\]'") as info:
        array_module("gpu")
    assert "\n" not in str(info.value)


def test_device_worker_returns_host_gradients_equal_to_the_cpu_worker() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((64, 20), dtype=np.float32)
    y = rng.integers(0, 10, 64).astype(np.uint8)
    params = init_params(SPEC, 0)
    kwargs = {"rank": 0, "spec": SPEC, "images": x, "labels": y, "batch_slice": 16, "seed": 1}
    cpu = WorkerCore(**kwargs)
    dev = WorkerCore(**kwargs, xp=fake_device_module())
    assert isinstance(dev.x, DeviceArray)  # rows were moved to the "device" once
    g_cpu, s_cpu = cpu.compute_gradients(params, 1, 2)
    g_dev, s_dev = dev.compute_gradients(params, 1, 2)
    assert type(g_dev) is np.ndarray  # what reaches the server is a host array
    np.testing.assert_array_equal(g_dev, g_cpu)
    assert (s_dev.loss_sum, s_dev.correct, s_dev.count) == (s_cpu.loss_sum, s_cpu.correct, 16)


def test_to_host_copies_device_arrays_and_passes_numpy_through() -> None:
    a = np.arange(3.0)
    assert to_host(a) is a
    d = a.view(DeviceArray)
    assert type(to_host(d)) is np.ndarray


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


def test_gpu_worker_count_is_validated() -> None:
    with pytest.raises(ValueError, match="num_gpu_workers must be between 0 and num_workers"):
        TrainConfig(data_dir=".", run_dir=".", num_workers=2, num_gpu_workers=3)


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
