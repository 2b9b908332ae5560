"""``dtrain bench``: dtrain against the arithmetic floor and single-process loops, in one run.

Every variant trains the same network with the same optimizer on the same prepared data, from
the same initial weights, for the same number of steps (a warm-up, then the measured steps), so
the ratios in one report compare like with like even when the absolute numbers drift between
machines or with the load on this one. Variants:

- ``floor``: only the step's matrix products (sgemm on its exact shapes), no other work;
- ``numpy``: the plain loop: ``Network.loss_and_grad`` and ``Optimizer`` in one process, drawing
  batches exactly as a single dtrain worker does, so dtrain with one worker ends with the same
  weights up to sgemm rounding;
- ``torch``: the equivalent ``nn.Sequential`` with ``torch.optim.SGD`` (when torch imports);
- ``dtrain``: ``Trainer`` on Ray with 1, 2, ... workers, with a per-step breakdown from its
  ``StepStats`` and the peak resident memory of the driver and its actor processes;
- ``dtrain-two-node`` (``--two-node``): the same runs on a two-node loopback cluster
  (twonode.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtrain.service.data import dataset
from dtrain.service.perf.config import PROBE_WARMUP_STEPS, BenchConfig
from dtrain.service.perf.dtrain_run import DtrainRun, Probe, dtrain_run, run_probe
from dtrain.service.perf.report import BenchReport, machine_info
from dtrain.service.perf.results import (
    Breakdown,
    Round,
    Row,
    make_breakdown,
    make_row,
    median_round,
    set_ratios,
    split_overhead,
)
from dtrain.service.perf.targets import evaluate_targets
from dtrain.service.perf.variants import (
    Loop,
    load_data,
    numpy_loop,
    step_flops,
    time_floor,
    torch_for,
    torch_loop,
)
from dtrain.workers.shards import shard_format

Progress = Callable[[str], None]
# (measured steps, steps per epoch) of each batch size.
Plans = dict[int, tuple[int, int]]
# dtrain's runs by (batch size, workers, staleness).
Runs = dict[tuple[int, int, int], DtrainRun]
TWO_NODE = "dtrain-two-node"


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> BenchReport:
    """Every variant at every batch size; Ray is joined if initialised, else started locally."""

    say = progress or (lambda _msg: None)
    torch, torch_status = torch_for(cfg.use_torch)
    manifest = dataset.ensure_prepared(cfg.data_dir)
    # Every variant trains the network the data calls for, as `dtrain train` builds it.
    fmt = shard_format(manifest)
    model = dataclasses.replace(cfg.model, input_size=fmt.input_size, num_classes=fmt.num_classes)
    cfg = dataclasses.replace(cfg, model=model)
    n_train = int(manifest["splits"]["train"]["num_samples"])
    plans = {
        b: (
            cfg.steps if cfg.steps is not None else math.ceil(n_train / b),
            math.ceil(n_train / b),
        )
        for b in cfg.batch_sizes
    }
    machine = machine_info(torch)
    probes: list[Probe] = []
    simulation = None
    rounds: list[Round] = []
    for i in range(cfg.rounds):
        if cfg.rounds > 1:
            say(f"round {i + 1} of {cfg.rounds}")
        # dtrain first: the driver's memory peak is then its own, not the loops' copies of the
        # data. The probe and the simulation price the exchange, not the host: once.
        runs, round_probes, round_simulation = _on_ray(cfg, plans, say, extras=i == 0)
        if i == 0:
            probes, simulation = round_probes, round_simulation
        two_node: Runs = {}
        if cfg.two_node:
            two_node, machine["two_node_cluster"] = _on_two_nodes(cfg, plans, say)
        rows, breakdown = _rows(cfg, plans, runs, torch, say, two_node)
        set_ratios(rows)
        # The probe prices one node's object store; what crosses nodes is not split out.
        split_overhead([b for b in breakdown if b.variant == "dtrain"], probes, cfg.exchange)
        rounds.append((rows, breakdown))
    rows, breakdown = median_round(rounds)
    return BenchReport(
        config=cfg,
        machine=machine,
        rows=rows,
        breakdown=breakdown,
        probes=probes,
        targets=evaluate_targets(rows, breakdown),
        torch=torch_status,
        simulation=simulation,
    )


def _on_ray(
    cfg: BenchConfig, plans: Plans, say: Progress, extras: bool = True
) -> tuple[Runs, list[Probe], dict[str, Any] | None]:
    """The dtrain runs, and with ``extras`` the probes and the simulation: everything that
    needs Ray."""
    from dtrain.service.train.session import ray_session

    warm = cfg.warmup_steps
    runs: Runs = {}
    probes: list[Probe] = []
    simulation = None
    with (
        ray_session(None, _num_cpus(cfg)),
        tempfile.TemporaryDirectory(prefix="dtrain-bench-") as tmp,
    ):
        for batch, (steps, _) in plans.items():
            for w in cfg.workers:
                for k in cfg.staleness:
                    say(f"dtrain: batch {batch}, {w} workers, staleness {k}, {warm}+{steps} steps")
                    runs[(batch, w, k)] = dtrain_run(cfg, batch, w, warm + steps, Path(tmp), k)
        if cfg.probe and extras:
            for w in cfg.workers:
                say(f"probe: {w} fake workers, full and tiny payload")
                probes.append(
                    run_probe(cfg.model, w, cfg.probe_steps, min(warm, PROBE_WARMUP_STEPS))
                )
        if cfg.simulate and extras:
            from dtrain.service.perf.simulate import run_simulation

            simulation = run_simulation(
                spec=cfg.model,
                worker_counts=cfg.sim_workers,
                steps=cfg.probe_steps,
                warmup_steps=min(warm, PROBE_WARMUP_STEPS),
                progress=say,
            ).to_dict()
    return runs, probes, simulation


def _num_cpus(cfg: BenchConfig) -> int:
    """The CPUs a (local, or each two-node) Ray node offers: the cores, or enough workers."""
    return max(os.cpu_count() or 1, max(cfg.workers, default=1))


def _on_two_nodes(cfg: BenchConfig, plans: Plans, say: Progress) -> tuple[Runs, dict[str, Any]]:
    """dtrain's runs again, on a two-node loopback cluster started (and stopped) for them."""
    from dtrain.service.perf.twonode import NUM_NODES, two_node_ray

    cpus = _num_cpus(cfg)
    runs: Runs = {}
    with (
        two_node_ray(cpus, say) as cluster,
        tempfile.TemporaryDirectory(prefix="dtrain-bench-") as tmp,
    ):
        for batch, (steps, _) in plans.items():
            for w in cfg.workers:
                for k in cfg.staleness:
                    total = cfg.warmup_steps + steps
                    say(f"dtrain, two nodes: batch {batch}, {w} workers, staleness {k}")
                    runs[(batch, w, k)] = dtrain_run(
                        cfg, batch, w, total, Path(tmp), k, cluster.processes
                    )
    info = {"nodes": NUM_NODES, "cpus_per_node": cpus, "node_ip": "127.0.0.1"}
    return runs, info


def _rows(
    cfg: BenchConfig,
    plans: Plans,
    runs: Runs,
    torch: Any,
    say: Progress,
    two_node: Runs,
) -> tuple[list[Row], list[Breakdown]]:
    """Times the single-process variants; one row per variant and batch size, in table order."""
    say("loading the training data for the single-process loops")
    data = load_data(cfg.data_dir)
    warm = cfg.warmup_steps
    rows: list[Row] = []
    breakdown: list[Breakdown] = []
    threads = os.cpu_count() or 1
    for batch, (steps, spe) in plans.items():
        total = warm + steps
        say(f"floor and loops: batch {batch}")
        floor = time_floor(cfg.model, batch, total, cfg.seed)
        rows.append(make_row("floor", batch, None, floor, warm, spe, step_flops(cfg.model, batch)))
        loop = Loop(
            data=data,
            spec=cfg.model,
            optimizer=cfg.optimizer,
            batch=batch,
            total_steps=total,
            seed=cfg.seed,
        )
        plain = numpy_loop(loop)
        rows.append(make_row("numpy", batch, 1, plain, warm, spe))
        if torch is not None:
            timed = torch_loop(torch, loop, threads)
            rows.append(make_row("torch", batch, 1, timed, warm, spe))
        for variant, done in (("dtrain", runs), (TWO_NODE, two_node)):
            for (b, w, k), run in done.items():
                if b != batch:
                    continue
                row = make_row(variant, batch, w, run.timed, warm, run.steps_per_epoch)
                row.staleness = k
                rows.append(row)
                breakdown.append(make_breakdown(run, batch, w, warm, plain.params, variant))
    return rows, breakdown


def default_progress(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)
