"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from dtrain.service.data.dataset import prepare


@pytest.fixture(scope="session")
def prepared_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded MNIST prepared once per session (8 train, 2 test shards); read-only."""
    out = tmp_path_factory.mktemp("mnist") / "prepared"
    prepare(out)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 training and 10 test images of random pixels, prepared through the .npz code path."""
    import numpy as np

    rng = np.random.default_rng(0)
    src = tmp_path_factory.mktemp("tiny") / "tiny.npz"
    np.savez(
        src,
        x_train=rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, size=30, dtype=np.uint8),
        x_test=rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, size=10, dtype=np.uint8),
    )
    out = src.parent / "prepared"
    prepare(out, source=src, num_shards=2, num_test_shards=1)
    return out


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


@pytest.fixture(scope="session")
def ray_local_gpu() -> object:
    """A local Ray that sees the machine's GPUs (for `pytest -m gpu` on a GPU machine)."""
    import logging

    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture
def pushgateway() -> object:
    """A stand-in Pushgateway on loopback: yields (url, pushes), each push (method, path, body)."""
    import http.server
    import threading

    received: list[tuple[str, str, bytes]] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", received
    finally:
        server.shutdown()
        server.server_close()
