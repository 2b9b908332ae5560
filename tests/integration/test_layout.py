"""The layout's promises: dtrain's own import namespace, and the same bits as before the move."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dtrain.service.train import checkpoint
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.trainer import Trainer

# sha256 of the final weights of a 30-step run (seed 0, batch 128, the embedded MNIST in the
# default 8 + 2 shards). Taken before the restructure (commit 84ecab0), then re-pinned once for
# the worker-independent sampling (workers.sampling: one permutation of all rows per epoch, cut
# into parts); the 1-worker digest did not change (its rows and order are the same as before).
# A change here is a change of the math or the sampling, never of the layout.
PINNED = {
    (2, 0): "258a30ef19be39982c058786493e7af9bd2f36db97d2198b0fb246f1fbce7bcd",
    (1, 0): "2198e28fd9a5589c5b59064a00ce49e26027a57107a43671d5767f4b374507ee",
    (2, 1): "ac666f21a9821b1e10f3915abedb2fc81515f5be2107b86698254634da44d639",
    (2, 2): "fbbff723d5b5a4d0bcb53b34f2ecc6b32942599c3fe764b734a1725e95b6da7d",
}


# Both step engines: pipes over shared memory, and workers calling the server through Ray.
CASES = [(*key, "shared-memory") for key in sorted(PINNED)] + [
    (2, 0, "object-store"),
    (2, 2, "object-store"),
]


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize(("num_workers", "staleness", "exchange"), CASES)
def test_weights_match_the_digest_pinned_before_the_restructure(
    prepared_mnist: Path, tmp_path: Path, num_workers: int, staleness: int, exchange: str
) -> None:
    config = TrainConfig(
        data_dir=prepared_mnist,
        run_dir=tmp_path,
        epochs=1,
        max_steps=30,
        num_workers=num_workers,
        staleness=staleness,
        exchange=exchange,
        checkpoint_every=0,
        eval_every_epoch=False,
    )
    Trainer(config).run()
    params = checkpoint.load(tmp_path / "checkpoint.npz").params
    assert hashlib.sha256(params.tobytes()).hexdigest() == PINNED[(num_workers, staleness)]


def test_train_runs_from_a_directory_of_decoy_packages(
    prepared_mnist: Path, tmp_path: Path
) -> None:
    """A user's own service/, workers/ and cli/ packages in the working directory (and on
    PYTHONPATH) must not replace dtrain's in the driver or in Ray's actors."""
    decoy = tmp_path / "project"
    for name in ("service", "workers", "cli"):
        (decoy / name).mkdir(parents=True)
        (decoy / name / "__init__.py").write_text(f"raise ImportError('decoy {name} imported')\n")
    env = {**os.environ, "PYTHONPATH": str(decoy)}
    dtrain = shutil.which("dtrain", path=str(Path(sys.executable).parent))
    assert dtrain is not None
    args = ["--data-dir", str(prepared_mnist), "--run-dir", str(tmp_path / "run")]
    done = subprocess.run(
        [dtrain, "train", *args, "--max-steps", "3", "--epochs", "1", "--json"],
        cwd=decoy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "decoy" not in done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 3
