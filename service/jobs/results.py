"""What a dtrain job's logs say about its run: where its run directory is and how it scored.

The Jobs API knows a job's command line and status, not its results; the job's own output
does: the start line names the run directory (expanded on the node, unlike the entrypoint's
``$DTRAIN_RUNS_DIR``), each epoch line its test accuracy, the last line the summary as JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

RUN_DIR = re.compile(r"^dtrain: .*; run dir (?P<dir>.+)$")
EPOCH = re.compile(r"^epoch (?P<epoch>\d+)/(?P<epochs>\d+) .* test loss \S+ acc (?P<acc>[\d.]+)")


@dataclass(frozen=True)
class RunFacts:
    run_dir: str | None = None
    # The summary's test accuracy once the job is done; the last epoch's while it runs.
    test_accuracy: float | None = None
    epoch: str | None = None  # "2/5": the last epoch finished


def run_facts(logs: str) -> RunFacts:
    run_dir = accuracy = epoch = None
    for line in logs.splitlines():
        line = line.rstrip("\r").rsplit("\r", 1)[-1]  # a progress line redrawn in place
        if m := RUN_DIR.match(line):
            run_dir = m["dir"].strip()
        elif m := EPOCH.match(line):
            accuracy, epoch = float(m["acc"]), f"{m['epoch']}/{m['epochs']}"
        elif line.startswith("{") and '"test_accuracy"' in line:
            try:
                summary = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(summary, dict) and isinstance(summary.get("test_accuracy"), float):
                accuracy = summary["test_accuracy"]
                checkpoint = summary.get("checkpoint")
                if isinstance(checkpoint, str) and "/" in checkpoint:
                    run_dir = checkpoint.rsplit("/", 1)[0]
    return RunFacts(run_dir=run_dir, test_accuracy=accuracy, epoch=epoch)
