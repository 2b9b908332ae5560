"""``dtrain``: the click group. Commands live beside this file, one module per family, and
call into ``dtrain.service``; the group turns every user error into one line (Flask's cli.py).
"""

from __future__ import annotations

import click

from dtrain.cli.bench_cmd import bench
from dtrain.cli.data_cmds import data
from dtrain.cli.export_cmd import export
from dtrain.cli.group import DtrainGroup
from dtrain.cli.jobs_cmds import jobs, submit
from dtrain.cli.model_cmds import evaluate, predict
from dtrain.cli.report_cmd import report
from dtrain.cli.train_cmd import train
from dtrain.service import __version__


@click.group(
    cls=DtrainGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="dtrain")
def cli() -> None:
    """Distributed batch training on Ray: NumPy workers, a parameter server, momentum SGD."""


for command in (train, evaluate, predict, export, data, submit, jobs, report, bench):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="dtrain")


if __name__ == "__main__":
    main()
