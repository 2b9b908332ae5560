"""``dtrain report RUN_DIR``: draw a run's curves and step-time breakdown to a PNG."""

from __future__ import annotations

from pathlib import Path

import click

from dtrain.cli.options import UserPath


@click.command()
@click.argument("run_dir", type=UserPath(path_type=Path))
@click.option(
    "--out",
    type=UserPath(dir_okay=False, path_type=Path),
    default=None,
    help="PNG file to write; an existing file is replaced only if it is an earlier report. "
    "[default: RUN_DIR/report.png]",
)
def report(run_dir: Path, out: Path | None) -> None:
    """Loss and accuracy curves and where each step's time went, as one PNG."""
    from dtrain.service.observe.report import render

    path = render(run_dir, out or run_dir / "report.png")
    click.echo(f"wrote {path}")
