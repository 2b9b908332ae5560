"""Aggregation throughput as fake workers grow: ``python benchmarks/simulate.py [--quick]``.

Drives today's ``ParameterServer`` and the sharded server (1 and 2 shards) with 1..16 fake worker
actors that return precomputed gradients, and prints updates/s and gradient GB/s per layout; see
docs/performance.md for what the numbers mean.
"""

from __future__ import annotations

import json
import os
import sys

import click
from dtrain.cli.bench_cmd import parse_counts

# A few steps per layout: enough to see the trend, cheap enough for a CI smoke run.
QUICK_STEPS = 5
QUICK_WORKERS = (1, 2)


@click.command()
@click.option(
    "--workers",
    default="1,2,4,8,16",
    show_default=True,
    callback=parse_counts,
    help="Comma-separated fake worker counts.",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=60, show_default=True, help="Measured steps."
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Steps before the measured ones.",
)
@click.option("--quick", is_flag=True, help="5 steps with 1 and 2 workers: a smoke run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(
    workers: tuple[int, ...], steps: int, warmup_steps: int, quick: bool, as_json: bool
) -> None:
    """Drive the parameter server(s) with fake workers; print aggregation throughput."""
    from dtrain.service.perf.simulate import format_simulation, run_simulation
    from dtrain.service.train.session import ray_session

    if quick:
        workers, steps = QUICK_WORKERS, QUICK_STEPS
    num_cpus = os.cpu_count() or 1
    with ray_session(None, num_cpus):
        report = run_simulation(
            worker_counts=workers,
            steps=steps,
            warmup_steps=warmup_steps,
            progress=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    click.echo(json.dumps(report.to_dict()) if as_json else format_simulation(report))


if __name__ == "__main__":
    main()
