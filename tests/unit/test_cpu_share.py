"""The driver's CPU share the bench reports: read from /proc, None when it cannot tell."""

from __future__ import annotations

import time

import pytest

from dtrain.service.perf.cpu import MIN_JOB_CPU_SECONDS, CpuShare, cpu_seconds
from dtrain.service.perf.memory import PROC, JobMemory

pytestmark = pytest.mark.skipif(not PROC.is_dir(), reason="needs /proc")


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_seconds_counts_this_process_and_grows_with_work() -> None:
    before = cpu_seconds()
    assert before is not None and before > 0
    burn(0.1)
    after = cpu_seconds()
    assert after is not None and after - before >= 0.05
    assert cpu_seconds(2**22 + 12345) is None  # no such process


def test_share_is_none_until_enough_cpu_was_spent_then_all_the_drivers() -> None:
    memory = JobMemory()
    memory.start()
    share = CpuShare(memory)
    assert share.driver_ratio is None  # no samples yet
    share.first()
    share.last()
    assert share.driver_ratio is None  # nothing measurable in between
    share.first()
    burn(MIN_JOB_CPU_SECONDS + 0.1)
    share.last()
    assert share.driver_ratio == 1.0  # no actor processes: the driver is the whole job
