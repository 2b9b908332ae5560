"""`dtrain evaluate` and `dtrain predict`: a checkpoint's test score and its predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from dtrain.cli.options import data_dir_option, json_option
from dtrain.service.errors import DtrainError


@click.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(path_type=Path))
@data_dir_option("Prepared dataset whose test split is evaluated. [default: as for train]")
@json_option("one object")
def evaluate(checkpoint_path: Path, data_dir: Path | None, as_json: bool) -> None:
    """Test loss and accuracy of a checkpoint."""
    from dtrain.service.data import dataset
    from dtrain.service.train import checkpoint
    from dtrain.workers.model import Network
    from dtrain.workers.shards import ShardError, read_rows, to_float

    ckpt = checkpoint.load(checkpoint_path)
    data_dir = data_dir or dataset.default_data_dir()
    manifest = dataset.ensure_prepared(data_dir)
    n = int(manifest["splits"]["test"]["num_samples"])
    try:
        x, y = read_rows(data_dir, manifest, "test", 0, n)
    except ShardError as e:
        raise DtrainError(str(e)) from e
    check_input_size(ckpt.spec.input_size, x.shape[1])
    loss, acc = Network(ckpt.spec).evaluate(ckpt.params, to_float(x), y.astype(np.int64))
    if as_json:
        click.echo(json.dumps({"test_accuracy": acc, "test_loss": loss, "num_samples": n}))
    else:
        click.echo(f"test accuracy {acc:.4f}  loss {loss:.4f}  ({n} samples)")


def check_input_size(expected: int, got: int) -> None:
    if expected != got:
        raise DtrainError(f"the checkpoint expects {expected} inputs per image, the data has {got}")


@click.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--test-samples",
    type=click.IntRange(min=1),
    default=None,
    help="Predict the first N images of the prepared test set (shows the true label).",
)
@data_dir_option("Prepared dataset for --test-samples. [default: as for train]")
@json_option("one object per image")
def predict(
    checkpoint_path: Path,
    inputs: tuple[Path, ...],
    test_samples: int | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Predict digits for images in INPUTS (.npy, .npz or IDX files of 28x28 uint8 images)."""
    from dtrain.service.data import dataset
    from dtrain.service.data.images import load_images
    from dtrain.service.train import checkpoint
    from dtrain.workers.model import Network
    from dtrain.workers.shards import ShardError, read_rows

    if not inputs and test_samples is None:
        raise click.UsageError("give image files as INPUTS or --test-samples N")
    ckpt = checkpoint.load(checkpoint_path)
    batches: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for path in inputs:
        batches.append((str(path), load_images(path), None))
    if test_samples is not None:
        data_dir = data_dir or dataset.default_data_dir()
        manifest = dataset.ensure_prepared(data_dir)
        n = min(test_samples, int(manifest["splits"]["test"]["num_samples"]))
        try:
            x, y = read_rows(data_dir, manifest, "test", 0, n)
        except ShardError as e:
            raise DtrainError(str(e)) from e
        batches.append(("test", x, y))
    net = Network(ckpt.spec)
    for source, images, labels in batches:
        check_input_size(ckpt.spec.input_size, images.shape[1])
        probs = net.predict_proba(ckpt.params, images.astype(np.float32) / np.float32(255))
        for i, row in enumerate(probs):
            digit = int(row.argmax())
            rec: dict[str, Any] = {
                "source": source,
                "index": i,
                "prediction": digit,
                "probability": round(float(row[digit]), 6),
            }
            if labels is not None:
                rec["label"] = int(labels[i])
            if as_json:
                click.echo(json.dumps(rec))
            else:
                truth = f"  (label {rec['label']})" if labels is not None else ""
                click.echo(f"{source}[{i}]: {digit}  p={rec['probability']:.4f}{truth}")
