"""SIGINT and SIGTERM stop a run the same way: at a step boundary, with a checkpoint, promptly.

Kubernetes, systemd, Slurm and ``ray job stop`` send SIGTERM where a person presses Ctrl-C, so
both mean "stop": the first, while steps run, asks the driver to finish the step in hand, write a
checkpoint of it and exit 128 + the signal's number; a second signal (or the first one outside
the step loop, where there is nothing to save) stops at once. If the orderly stop has not
finished within ``STOP_GRACE_SECONDS`` (a hung actor), it becomes an immediate one.

``ray.init`` installs Ray's own SIGTERM handler in the driver (and its C++ core prints a stack
dump on SIGTERM); ``reassert()``, called right after ``ray.init``, puts ours back.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Well inside Kubernetes' 30 s default grace; ray job stop allows 3 s, enough for a small model.
STOP_GRACE_SECONDS = 20.0


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal; ``step``: the step whose checkpoint it wrote, if any."""

    def __init__(self, signum: int, step: int | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.step = step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(e: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process ended by it (130 for Ctrl-C)."""
    return 128 + getattr(e, "signum", signal.SIGINT)


def signal_name(e: BaseException) -> str:
    return signal.Signals(getattr(e, "signum", signal.SIGINT)).name


class _Stopper:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.installed = False
        self.graceful = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None and self.graceful:
            self.signum = signum
            name = signal.Signals(signum).name
            print(
                f"dtrain: {name}: stopping after the current step with a checkpoint "
                "(send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
            # Bounded: a stop that cannot reach a step boundary turns into an immediate one.
            self._timer = threading.Timer(STOP_GRACE_SECONDS, os.kill, (os.getpid(), signum))
            self._timer.daemon = True
            self._timer.start()
            return
        raise Interrupted(self.signum or signum)


_STOPPER = _Stopper()


def install() -> bool:
    """Take SIGINT and SIGTERM for this process; False where already taken or not possible
    (Python lets only the main thread set handlers), so the caller knows not to uninstall.
    """
    if _STOPPER.installed or threading.current_thread() is not threading.main_thread():
        return False
    for sig in SIGNALS:
        _STOPPER._previous[sig] = signal.signal(sig, _STOPPER.handle)
    _STOPPER.installed = True
    return True


def reassert() -> None:
    """After ``ray.init``: our handlers again, where Ray installed its own."""
    if _STOPPER.installed and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _STOPPER.handle)


def uninstall() -> None:
    if _STOPPER._timer is not None:
        _STOPPER._timer.cancel()
    if _STOPPER.installed and threading.current_thread() is threading.main_thread():
        for sig, previous in _STOPPER._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    _STOPPER.reset()


def set_graceful(on: bool) -> None:
    """While steps run, a first signal waits for the step boundary instead of stopping at once."""
    _STOPPER.graceful = on


def requested() -> int | None:
    """The signal that asked for a stop, or None."""
    return _STOPPER.signum
