"""One row per variant and batch size, and dtrain's per-step breakdown."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dtrain.service.perf.dtrain_run import DtrainRun, Probe
from dtrain.service.perf.variants import Timed


@dataclass(kw_only=True)
class Row:
    variant: str
    batch_size: int
    workers: int | None
    steps: int  # measured
    total_steps: int  # warm-up and measured: what the model trained for
    steps_per_epoch: int
    step_seconds: float
    epoch_seconds: float
    samples_per_second: float
    ratio_to_numpy: float | None = None
    test_accuracy: float | None = None
    gflop_per_second: float | None = None
    # dtrain's bounded staleness (0: synchronous); None for the single-process loops.
    staleness: int | None = None
    # With --rounds: every round's ratio to its own loop, in round order (the row is the
    # median round's); None with one round.
    ratio_rounds: list[float | None] | None = None


def make_row(
    variant: str,
    batch: int,
    workers: int | None,
    timed: Timed,
    warmup: int,
    steps_per_epoch: int,
    flops: int | None = None,
) -> Row:
    measured = timed.step_seconds[warmup:] or timed.step_seconds
    step = statistics.fmean(measured)
    return Row(
        variant=variant,
        batch_size=batch,
        workers=workers,
        steps=len(measured),
        total_steps=len(timed.step_seconds),
        steps_per_epoch=steps_per_epoch,
        step_seconds=step,
        epoch_seconds=step * steps_per_epoch,
        samples_per_second=batch / step,
        test_accuracy=timed.test_accuracy,
        gflop_per_second=flops / step / 1e9 if flops else None,
    )


@dataclass(kw_only=True)
class Breakdown:
    """Mean seconds per measured dtrain step, split by where the time went."""

    batch_size: int
    workers: int
    staleness: int
    step_seconds: float
    worker_compute_seconds: float  # the slowest worker's forward and backward
    aggregate_seconds: float  # the server summing and averaging the gradients
    update_seconds: float  # the server's optimizer step
    overhead_seconds: float  # the rest: serialization, transfer, scheduling, the driver
    transfer_seconds: float | None  # of the overhead, the probe's payload cost (see below)
    scheduling_seconds: float | None  # the overhead less the transfer
    peak_rss_bytes: int | None
    peak_rss_gib: float | None
    # The driver's CPU seconds over those of the driver and the actors, during the measured
    # steps (None when they were too short to tell).
    driver_cpu_ratio: float | None
    processes: list[dict[str, Any]]
    # 1 worker only: the same batches, schedule and arithmetic as the numpy loop, so the final
    # weights differ only by the rounding of sgemm run with Ray's 1 BLAS thread (OMP_NUM_THREADS=1
    # in a 1-CPU actor) instead of the loop's 2: 1e-8 after a step, 1e-6 after an epoch, where
    # another batch order gives 1e-3.
    max_weight_difference_to_numpy: float | None
    # The row's variant: "dtrain", or "dtrain-two-node" on the two-node loopback cluster.
    variant: str = "dtrain"


def make_breakdown(
    run: DtrainRun,
    batch: int,
    workers: int,
    warmup: int,
    numpy_params: np.ndarray | None,
    variant: str = "dtrain",
) -> Breakdown:
    measured = run.steps[warmup:] or run.steps
    step = statistics.fmean(s.step_seconds for s in measured)
    compute = statistics.fmean(max(s.worker_compute_seconds, default=0.0) for s in measured)
    aggregate = statistics.fmean(s.aggregate_seconds for s in measured)
    update = statistics.fmean(s.update_seconds for s in measured)
    total = run.memory.total_bytes
    diff = None
    same_batches = workers == 1 and not run.staleness  # staleness changes the weights
    if same_batches and numpy_params is not None and run.timed.params is not None:
        diff = float(np.abs(run.timed.params - numpy_params).max())
    return Breakdown(
        batch_size=batch,
        workers=workers,
        staleness=run.staleness,
        step_seconds=step,
        worker_compute_seconds=compute,
        aggregate_seconds=aggregate,
        update_seconds=update,
        overhead_seconds=step - compute - aggregate - update,
        transfer_seconds=None,
        scheduling_seconds=None,
        peak_rss_bytes=total,
        peak_rss_gib=total / 1024**3 if total is not None else None,
        driver_cpu_ratio=run.driver_cpu_ratio,
        processes=run.memory.processes(),
        max_weight_difference_to_numpy=diff,
        variant=variant,
    )


def find_row(
    rows: Sequence[Row], variant: str, batch: int, workers: int | None, staleness: int = 0
) -> Row | None:
    """The row of a variant; the loops, synchronous by nature, count as staleness 0."""
    for r in rows:
        if (
            r.variant == variant
            and r.batch_size == batch
            and r.workers == workers
            and (r.staleness or 0) == staleness
        ):
            return r
    return None


def set_ratios(rows: Sequence[Row]) -> None:
    """Each row's seconds per epoch over the numpy loop's at the same batch size."""
    for r in rows:
        ref = find_row(rows, "numpy", r.batch_size, 1)
        if ref is not None:
            r.ratio_to_numpy = r.epoch_seconds / ref.epoch_seconds


def split_overhead(breakdown: Sequence[Breakdown], probes: Sequence[Probe], exchange: str) -> None:
    """Split each breakdown's overhead into payload transfer and scheduling.

    The probe prices moving the arrays through the object store; the shared-memory exchange
    (what "auto" picks on this single-node local Ray) moves none, so none of its overhead is
    that payload.
    """
    by_workers = {p.workers: p for p in probes}
    for b in breakdown:
        probe = by_workers.get(b.workers)
        if exchange != "object-store":
            b.transfer_seconds = 0.0
            b.scheduling_seconds = b.overhead_seconds
        elif probe is not None:
            b.transfer_seconds = min(max(probe.transfer_seconds, 0.0), max(b.overhead_seconds, 0.0))
            b.scheduling_seconds = b.overhead_seconds - b.transfer_seconds


Round = tuple[list[Row], list[Breakdown]]


def median_round(rounds: Sequence[Round]) -> Round:
    """One report from several rounds of the same variants, in the same order.

    Each row is the one of its median round by the ratio to that round's own numpy loop (ties,
    as between the loops themselves, by seconds per epoch; the higher middle one for an even
    count, so that a target is judged on the less flattering one), with every round's ratio in
    ``ratio_rounds``; each breakdown is the one of its row's round, but for two limits that
    are not speeds: the driver's CPU share is the worst round's, and the peak memory the first
    round's (in later rounds the driver still holds heap the loops of the round before left,
    60-70 MB for MNIST, which is the bench's and not dtrain's).
    """
    if len(rounds) == 1:
        return rounds[0]
    rows: list[Row] = []
    picked: dict[tuple[str, int, int | None, int], int] = {}
    for i, row in enumerate(rounds[0][0]):
        each = [r[0][i] for r in rounds]
        order = sorted(
            range(len(each)), key=lambda j: (each[j].ratio_to_numpy or 0.0, each[j].epoch_seconds)
        )
        pick = order[len(order) // 2]
        rows.append(dataclasses.replace(each[pick], ratio_rounds=[r.ratio_to_numpy for r in each]))
        picked[(row.variant, row.batch_size, row.workers, row.staleness or 0)] = pick
    breakdown: list[Breakdown] = []
    for i, b in enumerate(rounds[0][1]):
        each_b = [r[1][i] for r in rounds]
        chosen = each_b[picked[(b.variant, b.batch_size, b.workers, b.staleness)]]
        shares = [x.driver_cpu_ratio for x in each_b if x.driver_cpu_ratio is not None]
        breakdown.append(
            dataclasses.replace(
                chosen,
                peak_rss_bytes=b.peak_rss_bytes,
                peak_rss_gib=b.peak_rss_gib,
                processes=b.processes,
                driver_cpu_ratio=max(shares, default=None),
            )
        )
    return rows, breakdown
