"""`dtrain export`: a checkpoint's network as ONNX or safetensors, for other tools."""

from __future__ import annotations

from pathlib import Path

import click

from dtrain.cli.model_cmds import resolve_checkpoint
from dtrain.cli.options import UserPath

FORMATS = ("onnx", "safetensors")


@click.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=UserPath(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    required=True,
    help="onnx: the whole network (input float32 pixel/255, output class probabilities); "
    "safetensors: each layer's weight (in, out) and bias under dense_N.weight / dense_N.bias.",
)
@click.option(
    "--out",
    type=UserPath(dir_okay=False, path_type=Path),
    default=None,
    help="File to write; an existing file is never replaced. [default: the checkpoint's path "
    "with .onnx or .safetensors]",
)
def export(checkpoint_path: Path, fmt: str, out: Path | None) -> None:
    """Export a checkpoint's network (needs `pip install 'dtrain[export]'`)."""
    from dtrain.service import export as exporter
    from dtrain.service.train import checkpoint

    # A run directory stands for its final checkpoint, as for evaluate and predict.
    checkpoint_path = resolve_checkpoint(checkpoint_path)
    ckpt = checkpoint.load(checkpoint_path)
    path = exporter.export(ckpt, fmt, out or checkpoint_path.with_suffix(exporter.SUFFIXES[fmt]))
    click.echo(str(path))
