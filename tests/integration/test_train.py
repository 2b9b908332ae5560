"""Training on a real local Ray: the whole path from Arrow shards to a checkpoint."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from dtrain.cli.main import cli
from dtrain.service.data import dataset
from dtrain.service.errors import Diverged, DtrainError
from dtrain.service.observe.metrics import PrometheusMetrics
from dtrain.service.ps.optim import OptimizerConfig
from dtrain.service.ps.server import ServerCore
from dtrain.service.train import checkpoint
from dtrain.service.train.config import TrainConfig
from dtrain.service.train.plan import plan_epoch
from dtrain.service.train.trainer import Trainer
from dtrain.workers.core import WorkerCore
from dtrain.workers.exchange import exchange_root
from dtrain.workers.model import init_params
from dtrain.workers.rows import TrainRows
from dtrain.workers.shards import read_rows

pytestmark = pytest.mark.usefixtures("ray_local")


def small_config(data_dir: Path, run_dir: Path, **overrides) -> TrainConfig:
    kwargs = {
        "data_dir": data_dir,
        "run_dir": run_dir,
        "epochs": 1,
        "batch_size": 128,
        "num_workers": 2,
        "max_steps": 25,
    }
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def test_train_writes_checkpoint_history_and_summary(prepared_mnist: Path, tmp_path: Path) -> None:
    config = small_config(prepared_mnist, tmp_path / "run")
    summary = Trainer(config).run()
    assert summary.steps == 25 and summary.epochs == 1
    assert summary.test_accuracy > 0.8  # 25 steps of 128 already learn most of MNIST
    ckpt = checkpoint.load(Path(summary.checkpoint))
    assert ckpt.spec == config.model and ckpt.meta["step"] == 25
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["test_accuracy"] == summary.test_accuracy
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 128


@pytest.mark.parametrize("staleness", [0, 2])
def test_ray_run_equals_the_plain_loop(
    prepared_mnist: Path, tmp_path: Path, staleness: int
) -> None:
    """The actors add no math: 10 steps on Ray give the weights of the same steps in-process.

    With bounded staleness k, step t's gradients are taken at the weights after update
    max(0, t - 1 - k), exactly as the emulation below does it.
    """
    config = small_config(
        prepared_mnist, tmp_path / "run", max_steps=10, num_workers=3, staleness=staleness
    )
    summary = Trainer(config).run()
    got = checkpoint.load(Path(summary.checkpoint)).params

    manifest = dataset.read_manifest(prepared_mnist)
    n = manifest["splits"]["train"]["num_samples"]
    x, y = read_rows(prepared_mnist, manifest, "train", 0, n)
    workers = [
        WorkerCore(
            rank=rank,
            spec=config.model,
            rows=TrainRows.of(x, y),
            batch_size=128,
            parts=parts,
            seed=config.seed,
        )
        for rank, parts in enumerate(plan_epoch(n, 3, 128).parts)
    ]
    server = ServerCore(
        spec=config.model,
        optimizer=config.optimizer,
        params=init_params(config.model, config.seed),
        total_steps=10,
    )
    history = [server.params.copy()]  # history[j]: the weights after update j
    for step in range(1, 11):
        weights = history[max(0, step - 1 - staleness)]
        res = [w.compute_gradients(weights, 1, step - 1) for w in workers]
        server.apply_gradients(step, [r[0].copy() for r in res], [r[1] for r in res])
        history.append(server.params.copy())
    # BLAS thread counts differ between the actors and this process, so allow rounding noise.
    np.testing.assert_allclose(got, server.params, rtol=0, atol=1e-5)
    assert not np.array_equal(got, init_params(config.model, config.seed))


def test_same_seed_same_weights(prepared_mnist: Path, tmp_path: Path) -> None:
    a = Trainer(small_config(prepared_mnist, tmp_path / "a", max_steps=8)).run()
    b = Trainer(small_config(prepared_mnist, tmp_path / "b", max_steps=8)).run()
    c = Trainer(small_config(prepared_mnist, tmp_path / "c", max_steps=8, seed=1)).run()
    wa, wb, wc = (checkpoint.load(Path(s.checkpoint)).params for s in (a, b, c))
    np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(wa, wc)


def test_divergence_stops_with_the_step_named(prepared_mnist: Path, tmp_path: Path) -> None:
    config = small_config(
        prepared_mnist,
        tmp_path / "run",
        max_steps=60,
        optimizer=OptimizerConfig(learning_rate=1e30, schedule="constant"),
    )
    metrics = PrometheusMetrics()
    with pytest.raises(Diverged, match=r"diverged at step \d+ .*learning-rate") as caught:
        Trainer(config, [metrics]).run()
    # No periodic checkpoint was due before it (every 200 steps): none is named.
    assert str(caught.value).endswith("and start again; no checkpoint was written")
    assert not (tmp_path / "run" / "checkpoints").exists()
    # The metrics say so, for the alert: the job failed, diverged, and its loss is not finite.
    text = generate_latest(metrics.registry).decode()
    assert "dtrain_diverged 1.0" in text and "dtrain_job_success 0.0" in text
    assert not math.isfinite(caught.value.loss)


def test_a_diverging_run_ends_in_one_line_not_numpy_warnings(
    prepared_mnist: Path, tmp_path: Path
) -> None:
    """As a user sees it: a separate `dtrain train`, its stderr whole (Ray forwards actor logs)."""
    run_dir = tmp_path / "run"
    args = ["--data-dir", str(prepared_mnist), "--run-dir", str(run_dir), "--max-steps", "60"]
    args += ["--learning-rate", "1e6", "--lr-schedule", "constant", "--checkpoint-every", "2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "dtrain.cli.main", "train", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 1, done.stderr
    assert "RuntimeWarning" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    # The checkpoint it names exists: periodic ones were written before the bad step.
    match = re.fullmatch(
        r"Error: training diverged at step (\d+) \(epoch 1\): .* lower --learning-rate "
        r"\(now 1e\+06\) and start again; the weights before it are in (\S+)",
        last,
    )
    assert match, done.stderr
    assert Path(match[2]).is_file() and Path(match[2]).parent == run_dir / "checkpoints"


def test_more_workers_than_samples_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    config = small_config(tiny_dataset, tmp_path / "run", num_workers=40, batch_size=64)
    with pytest.raises(DtrainError, match=r"num_workers \(40\) is more than the \d+ training"):
        Trainer(config).run()


def test_too_few_cluster_cpus_is_an_error_not_a_hang(prepared_mnist: Path, tmp_path: Path) -> None:
    config = small_config(prepared_mnist, tmp_path / "run", num_cpus_per_worker=1000)
    with pytest.raises(DtrainError, match=r"cluster has .* CPUs"):
        Trainer(config).run()


def test_cli_train_json_and_evaluate_predict(prepared_mnist: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run_dir = tmp_path / "run"
    job = tmp_path / "job.toml"
    job.write_text("[train]\nmax-steps = 15\nbatch_size = 64\nhidden-sizes = [32]\nepochs = 3\n")
    result = runner.invoke(
        cli,
        [
            "train",
            "--config",
            str(job),
            "--epochs",
            "1",
            "--data-dir",
            str(prepared_mnist),
            "--run-dir",
            str(run_dir),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for key in (
        "test_accuracy",
        "test_loss",
        "train_accuracy",
        "epochs",
        "steps",
        "num_workers",
        "batch_size",
        "wall_seconds",
        "train_seconds",
        "samples_per_second",
        "checkpoint",
    ):
        assert key in summary
    assert summary["steps"] == 15 and summary["batch_size"] == 64 and summary["epochs"] == 1
    assert checkpoint.load(Path(summary["checkpoint"])).spec.hidden_sizes == (32,)

    ev = runner.invoke(
        cli, ["evaluate", summary["checkpoint"], "--data-dir", str(prepared_mnist), "--json"]
    )
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["test_accuracy"] == pytest.approx(summary["test_accuracy"])

    pr = runner.invoke(
        cli,
        [
            "predict",
            summary["checkpoint"],
            "--test-samples",
            "5",
            "--data-dir",
            str(prepared_mnist),
            "--json",
        ],
    )
    assert pr.exit_code == 0, pr.output
    rows = [json.loads(line) for line in pr.stdout.splitlines()]
    assert len(rows) == 5 and all(0 <= r["prediction"] <= 9 for r in rows)

    images = tmp_path / "imgs.npy"
    x, _ = read_rows(prepared_mnist, dataset.read_manifest(prepared_mnist), "test", 0, 3)
    np.save(images, x.reshape(3, 28, 28))
    pr2 = runner.invoke(cli, ["predict", summary["checkpoint"], str(images), "--json"])
    assert pr2.exit_code == 0, pr2.output
    assert [json.loads(r)["prediction"] for r in pr2.stdout.splitlines()] == [
        r["prediction"] for r in rows[:3]
    ]


def test_shared_memory_and_object_store_exchanges_give_the_same_bits(
    prepared_mnist: Path, tmp_path: Path
) -> None:
    runs = {}
    for exchange in ("shared-memory", "object-store"):
        for k in (0, 1):
            cfg = small_config(
                prepared_mnist,
                tmp_path / f"{exchange}{k}",
                max_steps=12,
                exchange=exchange,
                staleness=k,
            )
            runs[exchange, k] = checkpoint.load(Path(Trainer(cfg).run().checkpoint)).params
    np.testing.assert_array_equal(runs["shared-memory", 0], runs["object-store", 0])
    np.testing.assert_array_equal(runs["shared-memory", 1], runs["object-store", 1])
    assert not np.array_equal(runs["shared-memory", 0], runs["shared-memory", 1])
    assert not list(exchange_root().glob(f"dtrain-{os.getpid()}-*")), "shared files left behind"
