"""A run directory belongs to one run: refused when it already holds one, locked while in use.

Checked before Ray starts, so a wrong ``--run-dir`` costs the user no waiting: a path under a
regular file, a read-only directory, a directory holding an earlier run (without ``--resume``,
unless ``--overwrite`` moves that run aside), or one a live run holds. The lock is an OS lock
(``flock``) on ``RUN_DIR/.dtrain.lock``: the kernel drops it when its holder dies however it
dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from dtrain.service.errors import DtrainError
from dtrain.service.paths import read_regular
from dtrain.service.train.checkpoint import atomic_write_bytes

LOCK_FILE = ".dtrain.lock"
HISTORY_FILE = "history.jsonl"
# What a run leaves in its directory; any of them means the directory holds a run.
RUN_MARKERS = ("checkpoint.npz", "checkpoints", "history.jsonl", "summary.json", "config.json")
# checkpoint.atomic_write_bytes' temporary names for the files a run writes: ``.NAME.XXXXXXXX.tmp``
# (tempfile.mkstemp's eight characters). Only these are swept; nothing else is dtrain's.
STALE_TMP = re.compile(
    r"^\.(checkpoint\.npz|summary\.json|config\.json|history\.jsonl|step-\d{8}\.npz)"
    r"\.[A-Za-z0-9_]{8}\.tmp$"
)


def run_markers(run_dir: Path) -> list[str]:
    """The names in ``run_dir`` that show it holds a run (empty when it holds none)."""
    return [name for name in RUN_MARKERS if (run_dir / name).exists()]


def check_path(run_dir: Path) -> None:
    """One line for a run directory that cannot be one: a file, under a file, not writable."""
    probe = run_dir
    missing = []
    while not probe.exists():
        if probe.is_symlink():
            raise DtrainError(f"run directory {run_dir}: {probe} is a dangling symbolic link")
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is" if probe == run_dir else f"is under {probe}, which is"
        raise DtrainError(f"run directory {run_dir} {where} a file, not a directory")
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        raise DtrainError(f"run directory {run_dir}: {probe} is on a read-only filesystem")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DtrainError(f"run directory {run_dir}: {probe} is not writable")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _moved_name(run_dir: Path) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
    return target


class RunDirLock:
    """Claims a run directory for one run; ``release()`` gives it back.

    ``claim()`` creates the directory (and its missing parents) and holds the lock; on
    ``release(keep=False)`` what it created and is still empty is removed again, so a run that
    fails before writing anything leaves the tree as it was.
    """

    def __init__(self, run_dir: Path, *, resume: bool = False, overwrite: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.moved_to: Path | None = None
        self._fd: int | None = None
        self._created: list[Path] = []

    # --- claiming --------------------------------------------------------------------------

    def claim(self) -> RunDirLock:
        run_dir = self.run_dir
        check_path(run_dir)
        if run_dir.is_dir():
            self._refuse_if_locked()
            markers = run_markers(run_dir)
            if markers and not self.resume:
                if not self.overwrite:
                    raise DtrainError(
                        f"run directory {run_dir} already holds a run ({', '.join(markers)}): "
                        f"continue it with --resume {run_dir}, choose another --run-dir, or "
                        "--overwrite to move it aside"
                    )
                self._move_aside()
            elif self.resume and not markers:
                raise DtrainError(f"{run_dir} is not a dtrain run directory (nothing to resume)")
        elif self.resume:
            raise DtrainError(f"{run_dir} is not a dtrain run directory (it does not exist)")
        self._make_dirs()
        try:
            self._lock()
        except BaseException:
            self._remove_created()
            raise
        return self

    def _refuse_if_locked(self) -> None:
        path = self.run_dir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DtrainError(
                    f"run directory {self.run_dir} is in use by a running dtrain ({_holder(fd)})"
                ) from None
        finally:
            os.close(fd)

    def _move_aside(self) -> None:
        target = _moved_name(self.run_dir)
        try:
            self.run_dir.rename(target)
        except OSError as e:
            raise DtrainError(
                f"cannot move the earlier run in {self.run_dir} aside: {e.strerror or e}"
            ) from e
        self.moved_to = target
        print(f"dtrain: moved the earlier run in {self.run_dir} to {target}", file=sys.stderr)

    def _make_dirs(self) -> None:
        missing = []
        probe = self.run_dir
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                self._remove_created()
                raise DtrainError(
                    f"cannot create run directory {self.run_dir}: {e.strerror or e}"
                ) from e
            self._created.append(path)

    def _lock(self) -> None:
        path = self.run_dir / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise DtrainError(
                    f"cannot write to run directory {self.run_dir}: {e.strerror or e}"
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise DtrainError(
                    f"run directory {self.run_dir} is in use by a running dtrain ({holder})"
                ) from None
            # The holder before us may have unlinked the file while we waited to open it: a
            # lock on an unlinked file guards nothing, so take the one now at that path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError as e:
            os.close(fd)
            path.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DtrainError(f"no space left in run directory {self.run_dir}") from e
            raise DtrainError(
                f"cannot write to run directory {self.run_dir}: {e.strerror or e}"
            ) from e
        self._fd = fd

    # --- while it is held --------------------------------------------------------------------

    def sweep_stale_tmp(self) -> list[Path]:
        """Remove what a killed run's unfinished atomic writes left: only dtrain's own names."""
        removed = []
        for directory in (self.run_dir, self.run_dir / "checkpoints"):
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                if STALE_TMP.match(path.name) and path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    # --- giving it back ------------------------------------------------------------------------

    def release(self) -> None:
        if self._fd is not None:
            # Unlinked while still held, so a run waiting on this file re-checks the path.
            (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        """Directories this claim created and nothing has filled: the tree as it was."""
        for path in reversed(self._created):
            try:
                path.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> RunDirLock:
        return self.claim()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def cut_history(path: Path, step: int, epochs: set[int]) -> None:
    """Cut a killed run's history back to the checkpoint a resume starts from.

    The killed run may have logged steps (and epochs) past its newest checkpoint, which the
    resumed run logs again. Kept: step records up to ``step``, epoch records of ``epochs`` (the
    checkpoint's); dropped too: a line torn by the kill. Rewritten atomically, or left as it is.
    """
    try:
        lines = read_regular(path).splitlines(keepends=True)  # a FIFO would hang the resume
    except FileNotFoundError:
        return
    except OSError as e:
        raise DtrainError(f"cannot read {path}: {e.strerror or e}") from e
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        kind = rec.get("kind") if isinstance(rec, dict) else None
        if kind not in ("step", "epoch"):
            continue
        number = rec.get(kind)  # a step record's "step", an epoch record's "epoch"
        if not isinstance(number, int) or isinstance(number, bool):
            continue
        if (kind == "step" and number <= step) or (kind == "epoch" and number in epochs):
            keep.append(line if line.endswith(b"\n") else line + b"\n")
    if keep != lines:
        try:
            atomic_write_bytes(path, b"".join(keep))
        except OSError as e:
            raise DtrainError(f"cannot rewrite {path}: {e.strerror or e}") from e
