"""`dtrain evaluate` and `dtrain predict`: a checkpoint's test score and its predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from dtrain.cli.options import UserPath, data_dir_option, json_option
from dtrain.service.errors import DtrainError

if TYPE_CHECKING:
    from dtrain.workers.model import ModelSpec


@click.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=UserPath(path_type=Path))
@data_dir_option(
    "Prepared dataset whose test split is evaluated; it must already be prepared. "
    "[default: the checkpoint's run's own (config.json beside it), else as for train, "
    "prepared from the embedded MNIST if missing]"
)
@json_option("one object")
def evaluate(checkpoint_path: Path, data_dir: Path | None, as_json: bool) -> None:
    """Test loss and accuracy of a checkpoint."""
    from dtrain.service.train import checkpoint
    from dtrain.workers.model import Network
    from dtrain.workers.shards import to_float

    path = resolve_checkpoint(checkpoint_path)
    ckpt = checkpoint.load(path)
    x, y = scoring_split(path, ckpt.spec, data_dir, None)
    n = len(y)
    loss, acc = Network(ckpt.spec).evaluate(ckpt.params, to_float(x), y.astype(np.int64))
    if as_json:
        click.echo(json.dumps({"test_accuracy": acc, "test_loss": loss, "num_samples": n}))
    else:
        click.echo(f"test accuracy {acc:.4f}  loss {loss:.4f}  ({n} samples)")


def scoring_split(
    ckpt_path: Path, spec: ModelSpec, data_dir: Path | None, limit: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` (else all) test rows of the data the checkpoint is scored on (its
    run's, unless ``--data-dir``), checked against its input size; stderr says which data."""
    from dtrain.service.train.runinfo import check_input_size, scoring_data
    from dtrain.workers.shards import ShardError, read_rows

    found = scoring_data(ckpt_path, spec, data_dir)
    n = int(found.manifest["splits"]["test"]["num_samples"])
    if limit is not None:
        n = min(limit, n)
    try:
        x, y = read_rows(found.data_dir, found.manifest, "test", 0, n)
    except ShardError as e:
        raise DtrainError(str(e)) from e
    check_input_size(spec, x.shape[1], found.data_dir, found.origin)
    click.echo(f"dtrain: test split of {found.data_dir} ({found.origin})", err=True)
    return x, y


def resolve_checkpoint(path: Path) -> Path:
    """A run directory stands for its final checkpoint.npz; any other directory is refused."""
    if path.is_dir():
        final = path / "checkpoint.npz"
        if final.is_file():
            click.echo(f"dtrain: using {final}", err=True)
            return final
        raise DtrainError(
            f"{path} is a directory without a checkpoint.npz: give a checkpoint file "
            "(a run's checkpoint.npz or checkpoints/step-*.npz)"
        )
    return path


@click.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=UserPath(path_type=Path))
@click.argument("inputs", nargs=-1, type=UserPath(path_type=Path))
@click.option(
    "--test-samples",
    type=click.IntRange(min=1),
    default=None,
    help="Predict the first N images of the prepared test set (shows the true label).",
)
@data_dir_option(
    "Prepared dataset for --test-samples; it must already be prepared. "
    "[default: the checkpoint's run's own (config.json beside it), else as for train, "
    "prepared from the embedded MNIST if missing]"
)
@click.option(
    "--invert/--no-invert",
    default=None,
    help="Invert PNG/JPEG pictures (dark ink on light paper) to the training data's light "
    "strokes on dark. [default: when the picture's border is light]",
)
@json_option("one object per image")
def predict(
    checkpoint_path: Path,
    inputs: tuple[Path, ...],
    test_samples: int | None,
    data_dir: Path | None,
    invert: bool | None,
    as_json: bool,
) -> None:
    """Predict classes for INPUTS: PNG or JPEG pictures (made grayscale and resized to the
    model's input), or .npy, .npz or IDX files of images (N x 28 x 28, N x 784, one 28 x 28
    image or one flat row of 784 values, uint8 0..255 or floats 0..1).
    """
    from dtrain.service.data.images import load_images
    from dtrain.service.train import checkpoint
    from dtrain.service.train.runinfo import check_input_size
    from dtrain.workers.model import Network
    from dtrain.workers.shards import to_float

    if not inputs and test_samples is None:
        raise click.UsageError("give image files as INPUTS or --test-samples N")
    ckpt_path = resolve_checkpoint(checkpoint_path)
    ckpt = checkpoint.load(ckpt_path)
    batches: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for path in inputs:
        batches.append((str(path), load_images(path, ckpt.spec.input_size, invert), None))
    if test_samples is not None:
        x, y = scoring_split(ckpt_path, ckpt.spec, data_dir, test_samples)
        batches.append(("test", x, y))
    net = Network(ckpt.spec)
    for source, images, labels in batches:
        check_input_size(ckpt.spec, images.shape[1])
        # to_float: pixels scaled as in training, a dataset's float features as they are.
        probs = net.predict_proba(ckpt.params, to_float(images))
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
