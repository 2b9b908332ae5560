"""evaluate and predict score a checkpoint on its own run's data (config.json beside it), not on
whatever the default dataset is, and refuse data of another input size in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.service.data import dataset
from dtrain.service.train import checkpoint, runinfo
from dtrain.service.train.config import TrainConfig
from dtrain.workers.model import ModelSpec, Network, init_params
from dtrain.workers.shards import read_rows, to_float


@pytest.fixture(scope="module")
def inverted(prepared_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another dataset of the same shape: MNIST with its pixels inverted (600 test images)."""
    manifest = dataset.read_manifest(prepared_mnist)
    x_tr, y_tr = read_rows(prepared_mnist, manifest, "train", 0, 200)
    x_te, y_te = read_rows(prepared_mnist, manifest, "test", 0, 600)
    src = tmp_path_factory.mktemp("inverted") / "inverted.npz"
    np.savez(
        src,
        x_train=(255 - x_tr).reshape(-1, 28, 28),
        y_train=y_tr,
        x_test=(255 - x_te).reshape(-1, 28, 28),
        y_test=y_te,
    )
    out = src.parent / "prepared"
    dataset.prepare(out, source=src, num_shards=1, num_test_shards=1)
    return out


def direct_accuracy(ckpt_path: Path, data_dir: Path) -> float:
    ckpt = checkpoint.load(ckpt_path)
    manifest = dataset.read_manifest(data_dir)
    n = manifest["splits"]["test"]["num_samples"]
    x, y = read_rows(data_dir, manifest, "test", 0, n)
    return Network(ckpt.spec).evaluate(ckpt.params, to_float(x), y.astype(np.int64))[1]


def run_on(run_dir: Path, data_dir: Path, tmp: Path, *, step_file: bool = False) -> Path:
    """A copy of ``run_dir`` whose config.json names ``data_dir``; its checkpoint's path."""
    out = Path(shutil.copytree(run_dir, tmp / "run"))
    config = json.loads((out / "config.json").read_text())
    config["data_dir"] = str(data_dir)
    (out / "config.json").write_text(json.dumps(config))
    if not step_file:
        return out / "checkpoint.npz"
    (out / "checkpoints").mkdir()
    return Path(shutil.move(out / "checkpoint.npz", out / "checkpoints" / "step-000300.npz"))


def evaluate(*args: str | Path) -> tuple[dict[str, float], str]:
    result = CliRunner().invoke(cli, ["evaluate", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


@pytest.mark.parametrize("step_file", [False, True], ids=["checkpoint.npz", "step-N.npz"])
def test_evaluate_scores_on_the_runs_own_data(
    mnist_trained: Path, inverted: Path, prepared_mnist: Path, tmp_path: Path, step_file: bool
) -> None:
    ckpt = run_on(mnist_trained, inverted, tmp_path, step_file=step_file)
    scores, stderr = evaluate(ckpt)
    assert scores["num_samples"] == 600
    assert scores["test_accuracy"] == direct_accuracy(ckpt, inverted)
    # Not MNIST's score: the two datasets give clearly different numbers for this network.
    assert abs(scores["test_accuracy"] - direct_accuracy(ckpt, prepared_mnist)) > 0.05
    assert str(inverted) in stderr and "config.json" in stderr


def test_data_dir_option_wins_over_the_run(
    mnist_trained: Path, inverted: Path, prepared_mnist: Path, tmp_path: Path
) -> None:
    ckpt = run_on(mnist_trained, inverted, tmp_path)
    scores, stderr = evaluate(ckpt, "--data-dir", prepared_mnist)
    assert scores["test_accuracy"] == direct_accuracy(ckpt, prepared_mnist)
    assert "--data-dir" in stderr


def test_predict_test_samples_come_from_the_runs_data(
    mnist_trained: Path, inverted: Path, tmp_path: Path
) -> None:
    ckpt = run_on(mnist_trained, inverted, tmp_path)
    result = CliRunner().invoke(cli, ["predict", str(ckpt), "--test-samples", "20", "--json"])
    assert result.exit_code == 0, result.output
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    manifest = dataset.read_manifest(inverted)
    assert labels == read_rows(inverted, manifest, "test", 0, 20)[1].tolist()


def test_without_a_run_config_the_default_data_is_named(
    mnist_trained: Path, prepared_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DTRAIN_DATA_DIR", str(prepared_mnist))
    lone = tmp_path / "lone.npz"
    shutil.copy(mnist_trained / "checkpoint.npz", lone)
    scores, stderr = evaluate(lone)
    assert scores["test_accuracy"] == direct_accuracy(lone, prepared_mnist)
    assert "the default" in stderr


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_a_missing_run_data_dir_is_refused_not_filled_with_mnist(
    mnist_trained: Path, tmp_path: Path
) -> None:
    gone = tmp_path / "gone"
    ckpt = run_on(mnist_trained, gone, tmp_path)
    line = one_line_error(["evaluate", str(ckpt)])
    assert str(gone) in line and "no prepared dataset there" in line
    assert "the data dir of the run's" in line and "config.json" in line
    assert not gone.exists()


def test_data_of_another_input_size_is_refused(prepared_mnist: Path, tmp_path: Path) -> None:
    # An 8x8 model whose run names 28x28 data.
    spec = ModelSpec(input_size=64, hidden_sizes=(16,))
    run_dir = tmp_path / "digits-run"
    checkpoint.save(
        run_dir / "checkpoint.npz", checkpoint.Checkpoint(spec=spec, params=init_params(spec, 0))
    )
    config = TrainConfig(data_dir=prepared_mnist, run_dir=run_dir, model=spec)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    for args in (["evaluate"], ["predict", "--test-samples", "3"]):
        line = one_line_error([args[0], str(run_dir / "checkpoint.npz"), *args[1:]])
        assert "takes 64 inputs per sample" in line and "has 784" in line


def test_a_checkpoint_foreign_to_its_run_config_is_refused(
    mnist_trained: Path, prepared_mnist: Path, tmp_path: Path
) -> None:
    ckpt = run_on(mnist_trained, prepared_mnist, tmp_path)
    config = json.loads((ckpt.parent / "config.json").read_text())
    config["model"]["input_size"] = 64
    (ckpt.parent / "config.json").write_text(json.dumps(config))
    line = one_line_error(["evaluate", str(ckpt)])
    assert "does not belong to that run" in line


def test_a_relative_data_dir_is_the_runs_from_any_directory(
    mnist_trained: Path, inverted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dtrain train --data-dir prepared` (the README's own form), then `dtrain evaluate` from
    another directory: config.json named `prepared`, relative, and evaluate found nothing there."""
    run = Path(shutil.copytree(mnist_trained, tmp_path / "run"))
    monkeypatch.chdir(inverted.parent)
    config = TrainConfig(
        data_dir=Path(inverted.name), run_dir=run, model=ModelSpec(hidden_sizes=(64,))
    )
    (run / runinfo.CONFIG_NAME).write_text(json.dumps(runinfo.config_record(config)))
    monkeypatch.chdir(tmp_path)
    scores, stderr = evaluate(run / "checkpoint.npz")
    assert scores["test_accuracy"] == direct_accuracy(run / "checkpoint.npz", inverted)
    assert str(inverted) in stderr


def test_a_uri_data_dir_is_recorded_as_given(tmp_path: Path) -> None:
    config = TrainConfig(data_dir="s3://bucket/mnist", run_dir=tmp_path)
    assert runinfo.config_record(config)["data_dir"] == "s3://bucket/mnist"
