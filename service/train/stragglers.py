"""Finding a straggler: a worker persistently slower than the others (a busy or weaker node).

In a synchronous step every worker waits for the slowest, so one slow worker sets the pace of
all. The workers' compute seconds per step (in every step's stats) are averaged over windows of
steps; a worker whose mean is ``SLOW_FACTOR`` times the median of the other workers' means for
``PERSISTENT_WINDOWS`` windows in a row is a straggler. One slow window is noise (a page fault
storm, a neighbour's burst on a shared machine), not a straggler.
"""

from __future__ import annotations

import statistics

from dtrain.service.observe.stats import WorkerSlowness

# Steps per window: at ~5 ms a step, half a second to a few seconds of work on this machine.
WINDOW_STEPS = 100
# 1.5x the median: well above the +-20% step-to-step noise measured on the 2-core reference
# machine (docs/performance.md), well below the 2x of a worker sharing its core with another.
SLOW_FACTOR = 1.5
PERSISTENT_WINDOWS = 2


class StragglerWatch:
    def __init__(self, nodes: list[str], window: int = WINDOW_STEPS) -> None:
        """``nodes``: each worker's node id, by rank (named in the verdicts)."""
        self.nodes = nodes
        self.num_workers = len(nodes)
        self.window = window
        self._sums = [0.0] * self.num_workers
        self._steps = 0
        self._slow_windows = [0] * self.num_workers

    def add(self, compute_seconds: tuple[float, ...]) -> list[WorkerSlowness] | None:
        """One step's per-worker compute seconds; every ``window`` steps, each worker's
        verdict (None in between, and always with a single worker: nobody to compare with)."""
        if len(compute_seconds) != self.num_workers or self.num_workers < 2:
            return None
        for rank, seconds in enumerate(compute_seconds):
            self._sums[rank] += seconds
        self._steps += 1
        if self._steps < self.window:
            return None
        means = [s / self._steps for s in self._sums]
        self._sums = [0.0] * self.num_workers
        self._steps = 0
        verdicts = []
        for rank, mean in enumerate(means):
            # Against the others only: with two workers the median of all is their average,
            # and a worker at twice the other's time would read as 1.33x.
            others = statistics.median(means[:rank] + means[rank + 1 :])
            ratio = mean / others if others > 0 else 1.0
            before = self._slow_windows[rank]
            self._slow_windows[rank] = before + 1 if ratio >= SLOW_FACTOR else 0
            straggler = self._slow_windows[rank] >= PERSISTENT_WINDOWS
            new = straggler and before + 1 == PERSISTENT_WINDOWS
            verdicts.append(WorkerSlowness(rank, self.nodes[rank], ratio, straggler, new))
        return verdicts
