"""Reading ``.npz`` and ``.npy`` files from users without trusting them.

``np.load`` trusts the container: a member with an unsupported compression method, an
encrypted member or a bad CRC raise exceptions of many types, and a ``.npy`` header claiming a
huge shape makes it allocate that much before noticing the data is not there. Here every member
is checked at the zip level, its header is read and compared with the bytes it actually holds
before any array is allocated, the data is read in chunks (a deflate bomb stops at the size the
header claims), and an object dtype (a pickle) is refused, never loaded.
"""

from __future__ import annotations

import lzma
import math
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from dtrain.workers.shards import one_line

_NPY_MAGIC = b"\x93NUMPY"
# The compression methods zipfile implements; anything else is refused before it is opened.
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_CHUNK = 1 << 24
# np.lib.format's own default bound on a header (it refuses longer ones as untrusted).
_MAX_HEADER_BYTES = 10_000


class NpzProblem(Exception):
    """A container-level problem; ``pickled`` marks an object array (refused, never loaded)."""

    def __init__(self, message: str, *, pickled: bool = False) -> None:
        super().__init__(one_line(message))
        self.pickled = pickled


def is_npy(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(_NPY_MAGIC)) == _NPY_MAGIC
    except OSError:
        return False


def _read_array(f: IO[bytes], available: int, max_bytes: int) -> np.ndarray:
    """One ``.npy`` stream of ``available`` bytes (header included), checked before allocating."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                f, max_header_size=_MAX_HEADER_BYTES
            )
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                f, max_header_size=_MAX_HEADER_BYTES
            )
        else:
            raise NpzProblem(f".npy format version {version} is not supported")
    except NpzProblem:
        raise
    except (ValueError, OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile) as e:
        raise NpzProblem(f"bad .npy header ({e})") from None
    if dtype.hasobject:
        raise NpzProblem(f"dtype {dtype} holds pickled objects", pickled=True)
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise NpzProblem(f"bad shape {shape}")
    need = math.prod(shape) * dtype.itemsize
    have = available - f.tell()
    if need != have:
        raise NpzProblem(
            f"header claims shape {list(shape)} of {dtype} ({need} bytes) but {have} bytes follow"
        )
    if need > max_bytes:
        raise NpzProblem(f"array of {need} bytes is larger than the {max_bytes} allowed")
    buf = bytearray()
    try:
        while len(buf) < need:
            chunk = f.read(min(_CHUNK, need - len(buf)))
            if not chunk:
                break
            buf += chunk
        # Reading to the end is what makes zipfile compare the CRC.
        extra = f.read(1)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError) as e:
        raise NpzProblem(f"damaged data ({e})") from None
    if len(buf) != need or extra:
        raise NpzProblem(f"holds {len(buf) + len(extra)} data bytes, its header says {need}")
    array = np.frombuffer(buf, dtype=dtype, count=math.prod(shape))
    return array.reshape(shape, order="F" if fortran else "C")


class NpzReader:
    """The members of an open ``.npz``: ``files`` (names without ``.npy``) and ``read(name)``."""

    def __init__(self, zf: zipfile.ZipFile, max_bytes: int) -> None:
        self._zf = zf
        self._max_bytes = max_bytes
        self._members = {
            info.filename.removesuffix(".npy"): info for info in zf.infolist() if not info.is_dir()
        }
        self.files = list(self._members)

    def read(self, name: str) -> np.ndarray:
        info = self._members[name]
        if info.flag_bits & 0x1:
            raise NpzProblem(f"member {name!r} is encrypted")
        if info.compress_type not in _METHODS:
            raise NpzProblem(
                f"member {name!r} uses unsupported compression method {info.compress_type}"
            )
        if not info.filename.endswith(".npy"):
            raise NpzProblem(f"member {info.filename!r} is not a .npy array")
        try:
            with self._zf.open(info) as f:
                return _read_array(f, info.file_size, self._max_bytes)
        except NpzProblem as e:
            if str(e).startswith("member "):
                raise
            raise NpzProblem(f"member {name!r}: {e}", pickled=e.pickled) from None
        except (
            zipfile.BadZipFile,
            NotImplementedError,
            RuntimeError,
            OSError,
            ValueError,
            lzma.LZMAError,
        ) as e:
            raise NpzProblem(f"member {name!r}: {e}") from None


@contextmanager
def open_npz(path: Path, max_bytes: int) -> Iterator[NpzReader]:
    """An ``.npz`` opened for checked reads; a file that is no zip at all is an NpzProblem."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise NpzProblem(f"not a zip archive ({one_line(e)})") from None
    with zf:
        yield NpzReader(zf, max_bytes)


def read_npy(path: Path, max_bytes: int) -> np.ndarray:
    """A plain ``.npy`` file, with the same checks as an ``.npz`` member."""
    try:
        size = path.stat().st_size
        with path.open("rb") as raw:
            return _read_array(raw, size, max_bytes)
    except OSError as e:
        raise NpzProblem(f"cannot read ({e.strerror or e})") from None


def read_all(path: Path, max_bytes: int) -> dict[str, Any]:
    with open_npz(path, max_bytes) as npz:
        return {name: npz.read(name) for name in npz.files}
