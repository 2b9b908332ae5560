"""`dtrain bench`: its options, parsed here and handed to service.perf."""

from __future__ import annotations

import json
from typing import Any

import click

from dtrain.cli.jsonout import stdout_to_stderr
from dtrain.cli.options import (
    config_options,
    data_dir_option,
    json_option,
    parse_int_list,
    with_options,
)
from dtrain.service.perf.config import BenchConfig
from dtrain.service.train.config import DEVICES, EXCHANGES, MAX_SEED


def parse_counts(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, ...]:
    """ "128,512" -> (128, 512): positive integers, comma-separated, at least one."""
    counts = parse_int_list(ctx, param, value)
    if not counts:
        raise click.BadParameter("give at least one value", ctx, param)
    return counts


def parse_optional_counts(
    ctx: click.Context, param: click.Parameter, value: Any
) -> tuple[int, ...] | None:
    return None if value is None else parse_counts(ctx, param, value)


def parse_staleness(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, ...]:
    """ "0,1" -> (0, 1): integers >= 0 (0 is synchronous), comma-separated, at least one."""
    try:
        values = tuple(int(part) for part in str(value).split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of integers", ctx, param
        ) from None
    if any(v < 0 for v in values):
        raise click.BadParameter(f"{value!r}: staleness values are >= 0", ctx, param)
    return values


# Shared with benchmarks/simulate.py, which runs only the simulation.
sim_workers_option = click.option(
    "--sim-workers",
    default=None,
    callback=parse_optional_counts,
    help="Comma-separated fake worker counts for the simulation. [default: 1,2,4,8,16; 1,2 "
    "with --quick]",
)


@click.command("bench")
@click.option(
    "--batch-sizes",
    default="128,512",
    show_default=True,
    callback=parse_counts,
    help="Comma-separated global batch sizes; every variant runs at each.",
)
@click.option(
    "--num-workers",
    "workers",
    default="1,2",
    show_default=True,
    callback=parse_counts,
    help="Comma-separated worker counts for the dtrain (sync) runs.",
)
@click.option(
    "--staleness",
    default="0,1",
    show_default=True,
    callback=parse_staleness,
    help="Comma-separated staleness values for the dtrain runs (0: synchronous); one run per "
    "value at every batch size and worker count.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Steps measured per variant after the warm-up; seconds per epoch are the mean step "
    "time x steps per epoch. [default: one epoch at each batch size; 8 with --quick]",
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=None,
    help="Steps run before the measured ones and left out of the timing. "
    "[default: 20; 2 with --quick]",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A smoke run (CI): every variant with a few steps; not steady-state numbers.",
)
@click.option(
    "--torch/--no-torch",
    "use_torch",
    default=None,
    help="Time the PyTorch CPU loop as well. [default: when torch is importable]",
)
@click.option(
    "--probe/--no-probe",
    default=True,
    show_default=True,
    help="Split dtrain's overhead into payload transfer and scheduling with a zero-compute "
    "step of fake workers.",
)
@click.option(
    "--simulate",
    is_flag=True,
    help="Also drive the parameter server (one, or 1-2 shards) with fake workers and report "
    "aggregation throughput.",
)
@sim_workers_option
@data_dir_option(
    "Prepared Arrow dataset; the embedded MNIST is prepared there if missing. "
    "[default: $DTRAIN_DATA_DIR or ~/.cache/dtrain/mnist]"
)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=MAX_SEED),
    default=0,
    show_default=True,
    help="Seed for the initial weights and the batches, the same for every variant.",
)
@click.option(
    "--exchange",
    type=click.Choice(EXCHANGES),
    default="auto",
    show_default=True,
    help="dtrain's step exchange, as for `dtrain train` (auto: shared memory on one node).",
)
@click.option(
    "--device",
    # auto is train's choice for a cluster it has not seen; a benchmark names its device.
    type=click.Choice([d for d in DEVICES if d != "auto"]),
    default="cpu",
    show_default=True,
    help="Where dtrain's workers compute (gpu: CuPy, one GPU per worker); the loops stay on CPU.",
)
# Options defined by BenchConfig's own fields; not its nested model and optimizer (train's).
@with_options([o for o in config_options(BenchConfig) if "." not in o.field_path])
@json_option("the whole report")
def bench(quick: bool, as_json: bool, **options: Any) -> None:
    """Time dtrain against the sgemm floor, a plain NumPy loop and PyTorch, in one run.

    Prints seconds per epoch, samples/s and the ratio to the NumPy loop for every variant, a
    per-step breakdown of dtrain, its peak memory, and where the issue's targets stand.
    """
    from dtrain.service.perf import bench as b
    from dtrain.service.perf.report import format_report

    try:
        config = BenchConfig.from_options(quick=quick, **options)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    # With --json, stdout carries the report alone: Ray's own lines go to stderr meanwhile.
    with stdout_to_stderr(as_json):
        report = b.run_bench(config, progress=b.default_progress)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(format_report(report))
