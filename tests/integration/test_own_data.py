"""Your own data end to end on a real local Ray: 8x8 digits written as .npz images and as a
Parquet table of feature vectors, prepared, trained, and scored well above chance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.service.train import checkpoint

pytestmark = pytest.mark.usefixtures("ray_local")

Digits = dict[str, tuple[np.ndarray, np.ndarray]]


def write_npz(digits: Digits, path: Path) -> Path:
    # uint8 pixels 0..255, as images are shipped: 3-D, so the manifest records 8x8.
    pixels = {k: (np.asarray(x) * 15.9375).astype(np.uint8) for k, (x, _) in digits.items()}
    np.savez(
        path,
        x_train=pixels["train"],
        y_train=np.asarray(digits["train"][1], np.int64),
        x_test=pixels["test"],
        y_test=np.asarray(digits["test"][1], np.int64),
    )
    return path


def write_parquet(digits: Digits, directory: Path) -> Path:
    # float32 features scaled to [0, 1] by the user, under column names of their own.
    directory.mkdir()
    for split, (x, y) in digits.items():
        rows = (np.asarray(x, np.float32) / 16).reshape(len(x), 64)
        table = pa.table(
            {
                "pixels": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), 64),
                "digit": pa.array(np.asarray(y), pa.int64()),
            }
        )
        pq.write_table(table, directory / f"{split}.parquet")
    return directory


def prepare_and_train(
    tmp_path: Path, prepare_args: list[str], train_args: list[str]
) -> tuple[dict[str, Any], Path]:
    runner = CliRunner()
    data = tmp_path / "data"
    prep = runner.invoke(cli, ["data", "prepare", *prepare_args, "--out", str(data)])
    assert prep.exit_code == 0, prep.output
    run = tmp_path / "run"
    args = ["train", "--data-dir", str(data), "--run-dir", str(run), "--json"]
    args += ["--batch-size", "64", "--epochs", "3", "--hidden-sizes", "32", *train_args]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1]), data


@pytest.mark.parametrize("container", ["npz", "parquet"])
def test_digits_train_from_the_manifest_well_above_chance(
    digits: Digits, tmp_path: Path, container: str
) -> None:
    if container == "npz":
        source = write_npz(digits, tmp_path / "digits.npz")
        # The default transports on one node: memory-mapped shards, shared-memory exchange.
        summary, data = prepare_and_train(tmp_path, ["--source", str(source)], [])
    else:
        source = write_parquet(digits, tmp_path / "tables")
        columns = ["--feature-column", "pixels", "--label-column", "digit"]
        # The other transports: float32 rows shipped through the object store, and weights
        # and gradients of the 64-input network through it too.
        transports = ["--data-transport", "object-store", "--exchange", "object-store"]
        summary, data = prepare_and_train(tmp_path, ["--source", str(source), *columns], transports)
    assert summary["data_transport"] == ("local" if container == "npz" else "object-store")
    manifest = json.loads((data / "manifest.json").read_text())
    assert (manifest["input_size"], manifest["num_classes"]) == (64, 10)
    assert manifest["image_shape"] == ([8, 8] if container == "npz" else None)
    assert manifest["feature_type"] == ("uint8" if container == "npz" else "float32")

    # The network was built from the manifest, and the checkpoint and config.json say so.
    ckpt = checkpoint.load(Path(summary["checkpoint"]))
    assert (ckpt.spec.input_size, ckpt.spec.hidden_sizes, ckpt.spec.num_classes) == (64, (32,), 10)
    saved = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
    assert (saved["model"]["input_size"], saved["model"]["num_classes"]) == (64, 10)
    assert summary["steps"] == 3 * 23  # 1437 rows in batches of 64, three epochs
    # Chance is 0.1; these digits are separable enough for an MLP to pass 0.8 in 69 steps.
    assert summary["test_accuracy"] > 0.8, summary["test_accuracy"]

    ev = CliRunner().invoke(
        cli, ["evaluate", summary["checkpoint"], "--data-dir", str(data), "--json"]
    )
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["test_accuracy"] == summary["test_accuracy"]


def test_resuming_onto_data_of_another_size_is_refused_in_one_line(
    digits: Digits, tmp_path: Path, prepared_mnist: Path
) -> None:
    runner = CliRunner()
    data, run = tmp_path / "data", tmp_path / "run"
    source = write_npz(digits, tmp_path / "digits.npz")
    prep = runner.invoke(cli, ["data", "prepare", "--source", str(source), "--out", str(data)])
    assert prep.exit_code == 0, prep.output
    args = ["train", "--data-dir", str(data), "--run-dir", str(run), "--max-steps", "3"]
    assert runner.invoke(cli, [*args, "--hidden-sizes", "8"]).exit_code == 0
    before = (run / "checkpoint.npz").read_bytes()

    again = runner.invoke(cli, ["train", "--resume", str(run), "--data-dir", str(prepared_mnist)])
    assert again.exit_code == 1
    message = again.output.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "the checkpoint's layers [(64, 8), (8, 10)] differ" in message
    assert "[(784, 8), (8, 10)]" in message
    assert (run / "checkpoint.npz").read_bytes() == before
