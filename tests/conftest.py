"""Shared fixtures, and the markers each test folder implies.

unit/ needs no Ray, integration/ starts a real local Ray or Prometheus, cluster/ a real
two-node loopback cluster, gpu/ an NVIDIA GPU. The folder is the single source of the marks, so
`pytest -m 'not ray'` or `-m gpu` cannot drift from where a test lives.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dtrain.service.data.dataset import prepare

MARKS_BY_FOLDER = {
    "unit": (),
    "integration": ("ray",),
    "cluster": ("cluster", "ray"),
    "gpu": ("gpu",),
}


# tryfirst: the marks must be on the items before pytest's own `-m` deselection reads them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(tests).parts[0]
        if folder not in MARKS_BY_FOLDER:
            raise pytest.UsageError(
                f"{item.nodeid}: every test lives in one of tests/{{{','.join(MARKS_BY_FOLDER)}}}"
            )
        for name in MARKS_BY_FOLDER[folder]:
            item.add_marker(name)
    # The fast folders first (a sorted() is stable, so the order inside a folder is kept): unit
    # failures show in seconds, and unit/ runs before any session Ray exists.
    order = list(MARKS_BY_FOLDER)
    items.sort(key=lambda item: order.index(item.path.relative_to(tests).parts[0]))


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


@pytest.fixture
def tiny_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset, free to damage."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "tiny"))


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


@pytest.fixture(scope="session")
def mnist_trained(prepared_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory (checkpoint.npz, config.json) of a 784-64-10 network trained in-process
    on MNIST: plain SGD, 300 steps of 128, no Ray; about 90% on the test set."""
    import json

    import numpy as np

    from dtrain.service.data import dataset
    from dtrain.service.train import checkpoint
    from dtrain.service.train.config import TrainConfig
    from dtrain.workers.model import ModelSpec, Network, init_params
    from dtrain.workers.shards import read_rows, to_float

    manifest = dataset.read_manifest(prepared_mnist)
    x, y = read_rows(prepared_mnist, manifest, "train", 0, 38400)
    xs, ys = to_float(x), y.astype(np.int64)
    spec = ModelSpec(hidden_sizes=(64,))
    net, params = Network(spec), init_params(spec, seed=0)
    for step in range(300):
        rows = slice(step * 128, (step + 1) * 128)
        _, _, grad = net.loss_and_grad(params, xs[rows], ys[rows])
        params -= np.float32(0.1 / 128) * grad
    run_dir = tmp_path_factory.mktemp("mnist-run")
    checkpoint.save(run_dir / "checkpoint.npz", checkpoint.Checkpoint(spec=spec, params=params))
    config = TrainConfig(data_dir=prepared_mnist, run_dir=run_dir, model=spec)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    return run_dir
