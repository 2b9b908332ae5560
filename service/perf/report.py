"""The bench report: its JSON form (``dtrain bench --json``) and its tables for people."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from dtrain.service import __version__
from dtrain.service.perf.config import BenchConfig
from dtrain.service.perf.dtrain_run import Probe
from dtrain.service.perf.results import Breakdown, Row
from dtrain.service.perf.targets import Target

SCHEMA = "dtrain-bench/1"
# Keys of the top-level JSON object (``dtrain bench --json``), documented in docs/performance.md.
REPORT_KEYS = frozenset(
    {
        "schema",
        "version",
        "created",
        "machine",
        "config",
        "results",
        "dtrain_breakdown",
        "transfer_probe",
        "targets",
        "torch",
        "simulation",
    }
)
ROW_KEYS = frozenset(
    {
        "variant",
        "batch_size",
        "workers",
        "steps",
        "total_steps",
        "steps_per_epoch",
        "step_seconds",
        "epoch_seconds",
        "samples_per_second",
        "ratio_to_numpy",
        "test_accuracy",
        "gflop_per_second",
        "staleness",
        "ratio_rounds",
    }
)


@dataclass(kw_only=True)
class BenchReport:
    config: BenchConfig
    machine: dict[str, Any]
    rows: list[Row]
    breakdown: list[Breakdown]
    probes: list[Probe]
    targets: list[Target]
    torch: dict[str, Any]
    simulation: dict[str, Any] | None = None
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": __version__,
            "created": self.created,
            "machine": self.machine,
            "config": self.config.to_dict(),
            "results": [asdict(r) for r in self.rows],
            "dtrain_breakdown": [asdict(b) for b in self.breakdown],
            "transfer_probe": [p.to_dict() for p in self.probes],
            "targets": [asdict(t) for t in self.targets],
            "torch": self.torch,
            "simulation": self.simulation,
        }


def machine_info(torch: ModuleType | None) -> dict[str, Any]:
    import ray

    blas = None
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]["name"]
    except (TypeError, KeyError):
        pass
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "ray": ray.__version__,
        "torch": getattr(torch, "__version__", None),
    }


VARIANT_NAMES = {
    "floor": "sgemm floor",
    "numpy": "numpy loop",
    "torch": "torch loop",
    "dtrain": "dtrain",
    "dtrain-two-node": "dtrain 2-node",
}
BREAKDOWN_NOTE = (
    "overhead = step - compute - sum - update (negative with staleness: they overlap); "
    "transfer = its payload part, from a zero-compute probe (full vs 6-float "
    "gradients); sched. = the rest; driver CPU = the driver's share of the job's CPU "
    "seconds over the measured steps"
)


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _breakdown(breakdown: list[Breakdown]) -> list[str]:
    lines = [
        f"{'batch':>6}{'workers':>8}{'stale':>6}{'step':>8}{'compute':>9}{'sum':>7}"
        f"{'update':>8}{'overhead':>10}{'transfer':>10}{'sched.':>8}{'peak RSS GiB':>14}"
        f"{'driver CPU':>12}",
    ]
    for b in breakdown:
        cpu = None if b.driver_cpu_ratio is None else b.driver_cpu_ratio * 100
        lines.append(
            f"{b.batch_size:>6}{b.workers:>8}{b.staleness:>6}{b.step_seconds * 1e3:>8.2f}"
            f"{b.worker_compute_seconds * 1e3:>9.2f}{b.aggregate_seconds * 1e3:>7.2f}"
            f"{b.update_seconds * 1e3:>8.2f}{b.overhead_seconds * 1e3:>10.2f}"
            f"{_ms(b.transfer_seconds):>10}{_ms(b.scheduling_seconds):>8}"
            f"{_fmt(b.peak_rss_gib, '.2f'):>14}{_fmt(cpu, '.1f'):>11}%"
        )
    return lines


def format_report(report: BenchReport) -> str:
    rounds = report.config.rounds
    lines = [
        f"dtrain bench {report.created}: {report.machine['cpus']} CPUs, numpy "
        f"{report.machine['numpy']} ({report.machine['blas']}), ray {report.machine['ray']}, "
        f"torch {report.machine['torch'] or 'not used'}",
        "",
        f"{'variant':<13}{'batch':>6}{'workers':>8}{'stale':>6}{'steps':>7}{'s/epoch':>9}"
        f"{'samples/s':>11}{'x numpy':>9}{'test acc':>10}"
        + ("  x numpy by round" if rounds > 1 else ""),
    ]
    for r in report.rows:
        by_round = " ".join(_fmt(x, ".2f") for x in r.ratio_rounds or [])
        lines.append(
            f"{VARIANT_NAMES[r.variant]:<13}{r.batch_size:>6}{_fmt(r.workers, 'd'):>8}"
            f"{_fmt(r.staleness, 'd'):>6}"
            f"{r.steps:>7}{r.epoch_seconds:>9.3f}{r.samples_per_second:>11,.0f}"
            f"{_fmt(r.ratio_to_numpy, '.2f'):>9}{_fmt(r.test_accuracy, '.4f'):>10}"
            + (f"  {by_round}" if by_round else "")
        )
    if rounds > 1:
        lines.append(
            f"{rounds} rounds: each row (and its breakdown) is its median round by x numpy, the "
            "ratio to that round's own loop; driver CPU is the worst round's, peak RSS the "
            "first round's (later, the driver holds what the loops before it left)"
        )
    one = [b for b in report.breakdown if b.variant == "dtrain"]
    if one:
        lines += ["", "dtrain per step, ms (mean over the measured steps)", *_breakdown(one)]
        lines.append(BREAKDOWN_NOTE)
    two = [b for b in report.breakdown if b.variant != "dtrain"]
    if two:
        cluster = report.machine.get("two_node_cluster") or {}
        nodes, cpus = cluster.get("nodes"), cluster.get("cpus_per_node")
        lines += [
            "",
            f"dtrain 2-node per step, ms: {nodes} Ray nodes x {cpus} CPUs on loopback, on this "
            f"machine's {report.machine['cpus']} cores",
            *_breakdown(two),
            "the step exchange goes through Ray's object store between the nodes; the nodes "
            "share this machine's cores (oversubscribed where nodes x CPUs > cores), so these "
            "rows price the multi-node path's overhead, not a speed-up; transfer and sched. "
            "are not split out (the probe prices one node's object store)",
        ]
    if report.probes:
        lines += ["", "zero-compute probe (fake workers, real ParameterServer), ms per step"]
        for p in report.probes:
            lines.append(
                f"  {p.workers} workers: full payload {p.full_step_seconds * 1e3:.2f}, "
                f"6 floats {p.tiny_step_seconds * 1e3:.2f}, transfer {p.transfer_seconds * 1e3:.2f}"
            )
    if report.targets:
        lines += ["", "targets"]
        for t in report.targets:
            mark = "met" if t.met else "NOT MET"
            lines.append(f"  [{mark:>7}] {t.name}: {t.measured} (target {t.limit})")
    if report.simulation is not None:
        from dtrain.service.perf.simulate import (
            CapacityResult,
            SimResult,
            SimulationReport,
            format_simulation,
        )

        sim = SimulationReport(
            sims=[SimResult(**s) for s in report.simulation["simulation"]],
            capacity=[CapacityResult(**c) for c in report.simulation["server_capacity"]],
        )
        lines += ["", format_simulation(sim)]
    if not report.torch["used"]:
        lines += ["", f"torch loop not run: {report.torch['reason']}"]
    return "\n".join(lines)
