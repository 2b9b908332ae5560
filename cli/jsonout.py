"""``--json``: stdout carries the JSON object alone.

Ray prints its own lines on the driver's stdout (worker output, ``(raylet) A worker died ...``
after a kill), from threads and from C++ alike, so redirecting ``sys.stdout`` is not enough:
while the job runs, file descriptor 1 itself points at stderr.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool = True) -> Iterator[None]:
    """Send everything written to stdout inside the block to stderr (when ``enabled``)."""
    if not enabled:
        yield
        return
    real = sys.stdout
    real.flush()
    try:
        fd = real.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = -1  # click's test runner: no descriptor to move, only the Python object
    saved = os.dup(1) if fd == 1 else None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        # Writers that held the original object (loggers made at import) flush into fd 2 still.
        real.flush()
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
