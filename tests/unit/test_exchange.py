"""Shared-memory exchange files: mapped views, and no leftovers from a killed driver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dtrain.workers import exchange


def test_buffers_are_shared_between_mappings(tmp_path: Path) -> None:
    slots = exchange.create(tmp_path / "x", num_params=10, num_workers=2, num_slots=2)
    slots[1][:] = np.arange(10, dtype=np.float32)
    again = exchange.open_weights(tmp_path / "x", 10, num_slots=2)
    np.testing.assert_array_equal(again[1], np.arange(10))
    grads = exchange.open_grads(tmp_path / "x", rank=1, num_params=10, num_slots=2)
    grads[0][3] = 7
    assert exchange.open_grads(tmp_path / "x", 1, 10, 2)[0][3] == 7


def test_a_file_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    exchange.create(tmp_path / "x", num_params=10, num_workers=1)
    with pytest.raises(ValueError, match="expected 44"):
        exchange.open_weights(tmp_path / "x", 11)


def test_directories_of_dead_drivers_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)  # that process has exited
    stale = tmp_path / f"dtrain-{dead_pid}-abcd"
    live = tmp_path / f"dtrain-{os.getpid()}-abcd"
    for d in (stale, live):
        exchange.create(d, num_params=4, num_workers=1)
    assert exchange.sweep_stale(tmp_path) == [stale]
    assert not stale.exists() and live.exists()
