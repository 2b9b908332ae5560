"""Paths from the user, in words a user can act on: why an output cannot be written, and
small input files read without hanging.

mkdir(2) under a regular file fails with "File exists" or "Not a directory", which names
neither the file in the way nor the path asked for; these helpers name both.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from dtrain.service.errors import DtrainError


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a directory, else None."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _blocked(path: Path, blocker: Path, what: str) -> DtrainError:
    return DtrainError(f"cannot write {what} {path}: {blocker} is a file, not a directory")


def check_parent(path: Path, what: str) -> None:
    """Refuse an output file whose folder cannot exist: an ancestor is a regular file. Called
    before the work (an export, a plot) that would otherwise be done for nothing."""
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise _blocked(path, blocker, what)


def check_dir(directory: Path, what: str) -> None:
    """Refuse an output folder that cannot be made: it, or an ancestor, is a regular file."""
    blocker = directory if directory.exists() and not directory.is_dir() else None
    blocker = blocker or file_in_the_way(directory)
    if blocker is not None:
        raise _blocked(directory, blocker, what)


def write_error(path: Path, e: OSError, what: str) -> DtrainError:
    """The one-line error for ``e``, raised while writing ``path`` (``what``: "report")."""
    blocker = file_in_the_way(path)
    if blocker is not None:
        return _blocked(path, blocker, what)
    return DtrainError(f"cannot write {what} {path}: {e.strerror or e}")


# A job file or a run's config.json is a few hundred bytes; far more is not one.
MAX_SMALL_FILE_BYTES = 1 << 20


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of ``path`` (at most ``limit`` + 1 of them), which must be a regular file: else
    an OSError whose strerror says why. Reading a FIFO would wait for a writer forever, and
    /dev/zero never ends."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer opens it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))
        return f.read() if limit is None else f.read(limit + 1)


def read_small_text(path: Path, limit: int = MAX_SMALL_FILE_BYTES) -> str:
    """A small UTF-8 file (a job file, a run's config.json), whole: a regular file (see
    ``read_regular``) of at most ``limit`` bytes, else an OSError whose strerror says why.
    UnicodeDecodeError as ``read_text``."""
    data = read_regular(path, limit)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit >> 20} MiB", str(path))
    return data.decode("utf-8")


def non_utf8(path: Path | str) -> str | None:
    """``path`` shown with its bytes escaped when its name is not valid UTF-8, else None.
    pyarrow and Ray take paths as UTF-8 text; Python holds other bytes as surrogates, which
    they fail to encode deep inside, in a traceback."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return None


def check_utf8(path: Path | str, what: str) -> None:
    shown = non_utf8(path)
    if shown is not None:
        raise DtrainError(
            f"{what} {shown}: the name is not valid UTF-8, which Arrow and Ray need; rename it"
        )
