"""A real local Ray that sees the GPUs, for `make test-gpu`."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_local_gpu() -> object:
    """A local Ray that sees the machine's GPUs (for `pytest -m gpu` on a GPU machine)."""
    import logging

    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
