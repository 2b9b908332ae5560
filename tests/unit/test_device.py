"""The array-module code path of GPU workers, exercised on the CPU (CI has no GPU)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from dtrain.service.train.config import TrainConfig
from dtrain.workers.core import WorkerCore
from dtrain.workers.device import DeviceError, array_module, to_host
from dtrain.workers.model import ModelSpec, init_params
from dtrain.workers.rows import TrainRows

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
    rows = TrainRows.of(x, y)
    kwargs = {"rank": 0, "spec": SPEC, "rows": rows, "batch_size": 16, "parts": (0, 64), "seed": 1}
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


def test_gpu_worker_count_is_validated() -> None:
    with pytest.raises(ValueError, match="num_gpu_workers must be between 0 and num_workers"):
        TrainConfig(data_dir=".", run_dir=".", num_workers=2, num_gpu_workers=3)
