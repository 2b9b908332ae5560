"""Aggregation throughput as fake workers grow: ``python benchmarks/simulate.py [--quick]``.

Drives today's ``ParameterServer`` and the sharded server (1 and 2 shards) with 1..16 fake worker
actors that return precomputed gradients, and prints updates/s and gradient GB/s per layout; see
docs/performance.md for what the numbers mean. The same simulation as ``dtrain bench --simulate``,
without the bench's other variants.
"""

from __future__ import annotations

import json
import os
import sys

import click

from dtrain.cli.bench_cmd import sim_workers_option
from dtrain.service.perf.config import (
    PROBE_STEPS,
    PROBE_WARMUP_STEPS,
    QUICK_PROBE_STEPS,
    QUICK_SIM_WORKERS,
    SIM_WORKERS,
)


@click.command()
@sim_workers_option
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help=f"Measured steps. [default: {PROBE_STEPS}; {QUICK_PROBE_STEPS} with --quick]",
)
@click.option(
    "--warmup-steps",
    type=click.IntRange(min=0),
    default=PROBE_WARMUP_STEPS,
    show_default=True,
    help="Steps before the measured ones.",
)
@click.option("--quick", is_flag=True, help="A few steps with 1 and 2 workers: a smoke run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(
    sim_workers: tuple[int, ...] | None,
    steps: int | None,
    warmup_steps: int,
    quick: bool,
    as_json: bool,
) -> None:
    """Drive the parameter server(s) with fake workers; print aggregation throughput."""
    from dtrain.service.perf.simulate import format_simulation, run_simulation
    from dtrain.service.train.session import ray_session

    if sim_workers is None:
        sim_workers = QUICK_SIM_WORKERS if quick else SIM_WORKERS
    if steps is None:
        steps = QUICK_PROBE_STEPS if quick else PROBE_STEPS
    with ray_session(None, os.cpu_count() or 1):
        report = run_simulation(
            worker_counts=sim_workers,
            steps=steps,
            warmup_steps=warmup_steps,
            progress=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    click.echo(json.dumps(report.to_dict()) if as_json else format_simulation(report))


if __name__ == "__main__":
    main()
