"""A tracker's writes on a thread of their own, so the driver's step loop never waits on them.

Writing a step's scalars costs TensorBoard's writer ~0.1 ms each and MLflow's file store a file
append per value (~0.3 ms): on the driver's thread that is time the next step's submission waits.
Here the driver only enqueues; one thread writes, in order. The first error is kept (and the rest
skipped) for ``close()`` to report, so a tracker that fails never stops the training.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

Job = tuple[Callable[..., Any], tuple[Any, ...]]


class Background:
    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._jobs.put((fn, args))

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self.error is None:
                fn, args = job
                try:
                    fn(*args)
                except Exception as e:  # kept for close(): the run goes on without this tracker
                    self.error = e

    def close(self) -> BaseException | None:
        """Wait for every write submitted so far; the first error, if any."""
        self._jobs.put(None)
        self._thread.join()
        return self.error
