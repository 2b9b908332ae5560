"""The session's real local Ray, joined by every test here that runs the driver in-process."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local() -> object:
    """One real local Ray for the session; the driver joins it instead of starting its own.

    4 logical CPUs on the 2-core machine so that 3-worker runs can be placed.
    """
    import logging

    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
