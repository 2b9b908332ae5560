"""Which array module a worker computes with: NumPy on the CPU, CuPy on an NVIDIA GPU.

The network's math (``workers.model``) is written against an array module ``xp``, so a GPU worker
differs from a CPU one only in where its rows live and in one host<->device copy of the weights
in and the gradient out per step.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, cast

import numpy as np

DEVICES = ("cpu", "gpu")


class DeviceError(RuntimeError):
    """A device was asked for that this process cannot use (a one-line message)."""


def array_module(device: str) -> ModuleType:
    if device == "cpu":
        return np
    if device != "gpu":
        raise DeviceError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    try:
        import cupy
    except ImportError:
        raise DeviceError(
            "--device gpu needs CuPy on the worker nodes: pip install 'dtrain[gpu]' "
            "(cupy-cuda12x, for CUDA 12)"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError and driver load failures alike
        raise DeviceError(f"CuPy is installed but no CUDA device is usable: {e}") from None
    if count < 1:
        raise DeviceError("CuPy is installed but this node has no CUDA device")
    return cast(ModuleType, cupy)


def to_host(array: Any) -> np.ndarray:
    """A NumPy array of ``array``'s values; CuPy arrays are copied from the device."""
    get = getattr(array, "get", None)
    return get() if callable(get) else np.asarray(array)
