"""`dtrain data prepare|inspect`: thin wrappers over service.dataset."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dtrain.cli.group import DtrainGroup
from dtrain.cli.options import UserPath, json_option
from dtrain.service.data import dataset, tables
from dtrain.service.data.manifest import input_text
from dtrain.workers.shardformat import MAX_CLASSES

_DIR = UserPath(path_type=Path, file_okay=False)
_DEFAULT_DIR_HELP = "$DTRAIN_DATA_DIR, else ~/.cache/dtrain/mnist"


@click.group("data", cls=DtrainGroup)
def data() -> None:
    """Prepare a dataset (MNIST or your own) as Arrow shards and inspect prepared data."""


@data.command("prepare")
@click.option(
    "--source",
    metavar="PATH|URL",
    default=None,
    help="Directory of the 4 IDX files (.gz or raw; images of any size), a keras-style .npz "
    "(x_train, y_train, x_test, y_test; images or feature rows), a directory of train and test "
    "tables (.parquet, .arrow or .feather), or an http(s) URL serving the 4 IDX .gz files. "
    "Default: the MNIST copy shipped with dtrain.",
)
@click.option(
    "--out",
    type=_DIR,
    default=None,
    show_default=_DEFAULT_DIR_HELP,
    help="Directory to write the shards and manifest.json into.",
)
@click.option(
    "--num-shards",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Number of training shards (contiguous, near-equal row counts).",
)
@click.option(
    "--num-test-shards",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Number of test shards.",
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=2, max=MAX_CLASSES),
    default=None,
    help="Number of classes K: every label must be in 0..K-1. [default: the largest label + 1]",
)
@click.option(
    "--feature-column",
    default=None,
    help="A table source's column of features (a list of numbers per row). "
    "[default: the one column besides the label]",
)
@click.option(
    "--label-column",
    default=None,
    help=f"A table source's column of integer labels. [default: {tables.DEFAULT_LABEL_COLUMN}]",
)
@click.option("--force", is_flag=True, help="Replace an existing prepared directory.")
def prepare_cmd(
    source: str | None,
    out: Path | None,
    num_shards: int,
    num_test_shards: int,
    num_classes: int | None,
    feature_column: str | None,
    label_column: str | None,
    force: bool,
) -> None:
    """Validate a source and write it as Arrow IPC shards plus manifest.json.

    uint8 data are pixels (scaled into [0, 1] for the network); other numbers are features used
    as they are, so scale them yourself (to about [0, 1]). The network that `dtrain train`
    builds takes its input size and class count from the prepared data.
    """
    out_dir = out if out is not None else dataset.default_data_dir()
    columns = None
    if feature_column is not None or label_column is not None:
        label = label_column if label_column is not None else tables.DEFAULT_LABEL_COLUMN
        columns = tables.Columns(feature=feature_column, label=label)
    manifest = dataset.prepare(
        out_dir,
        source=source,
        num_shards=num_shards,
        num_test_shards=num_test_shards,
        force=force,
        num_classes=num_classes,
        columns=columns,
    )
    train, test = manifest["splits"]["train"], manifest["splits"]["test"]
    click.echo(
        f"prepared {train['num_samples']} train samples in {len(train['shards'])} shards and "
        f"{test['num_samples']} test samples in {len(test['shards'])} shards "
        f"from {manifest['source']} into {out_dir}: {input_text(manifest)}"
    )


@data.command("inspect")
@click.argument("directory", metavar="[DIR]", type=_DIR, required=False)
@json_option("the manifest")
@click.option(
    "--verify", is_flag=True, help="Also check every shard's size and sha256 against the manifest."
)
def inspect_cmd(directory: Path | None, as_json: bool, verify: bool) -> None:
    """Describe prepared data in DIR (default: $DTRAIN_DATA_DIR, else ~/.cache/dtrain/mnist)."""
    data_dir = directory if directory is not None else dataset.default_data_dir()
    manifest = dataset.read_manifest(data_dir)
    checked = dataset.verify(data_dir, manifest) if verify else 0
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    else:
        click.echo(dataset.describe(manifest))
    if verify:
        # stderr, so that `--json --verify` still prints nothing but JSON on stdout.
        click.echo(f"verified {checked} shards: sizes and sha256 match the manifest", err=True)
