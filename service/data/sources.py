"""Where a dataset comes from: reading and validating a source before anything is written.

Sources: the MNIST copy embedded in the repository (checked against the canonical sha256 sums),
a directory of the four IDX files (uint8 images of any size, as MNIST, Fashion-MNIST and EMNIST
ship), a keras-style ``.npz``, a directory of ``train`` and ``test`` Parquet or Arrow tables
(service/data/tables.py), or an http(s) URL serving the four IDX ``.gz`` files. Every source
gets the same checks (shapes, counts, finite values, labels 0..K-1) and comes back as
{"train": (features (N, ...), labels (N,)), "test": ...}: features uint8 (pixels) or float32
(values used as they are), the same row shape in both splits, labels uint8 (uint16 past 256
classes). ``read_maybe_gzip`` and ``parse_idx`` are public: ``predict`` reads IDX files too.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from dtrain.service.data import npzsafe, tables, validate
from dtrain.service.data.manifest import SPLITS
from dtrain.service.data.validate import Split
from dtrain.service.errors import DtrainError
from dtrain.service.net import split_url
from dtrain.workers.shardformat import MAX_CLASSES
from dtrain.workers.shards import one_line

# parents[2] is the project root both installed (editable) and staged for a Ray job.
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist"
EMBEDDED_SOURCE = "embedded"

# IDX magic: two zero bytes, the data type (0x08: uint8), the number of dimensions. Images may
# have any number of dimensions >= 2 (N, then each image's shape); labels have exactly one.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_IDX_UINT8 = 0x08

# sha256 of the decompressed canonical files, so a damaged embedded copy is caught at prepare time.
KNOWN_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_IDX_PREFIX = {"train": "train", "test": "t10k"}

_GZIP_MAGIC = b"\x1f\x8b"
# MNIST's largest file is 47 MB; the cap stops a gzip bomb or a bogus URL from eating memory.
MAX_SOURCE_BYTES = 1 << 30
_DOWNLOAD_TIMEOUT_S = 30
_CHUNK = 1 << 20


def load_source(
    source: str | Path | None,
    *,
    num_classes: int | None = None,
    columns: tables.Columns | None = None,
) -> dict[str, Split]:
    """Load and validate a source: {"train": (features, labels), "test": ...}.

    ``num_classes`` states K (a label outside 0..K-1 is then an error); without it K is the
    largest label + 1. ``columns`` names a table source's columns (default: tables.Columns()).
    """
    if num_classes is not None and (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not 2 <= num_classes <= MAX_CLASSES
    ):
        raise DtrainError(f"number of classes must be an integer in 2..{MAX_CLASSES}")
    kind, path = _kind(source)
    if columns is not None and kind != "tables":
        raise DtrainError(
            "--feature-column and --label-column apply to a directory of Parquet or Arrow "
            "tables only"
        )
    if kind == "embedded":
        raw = _load_dir(EMBEDDED_DIR, check_sha=True, num_classes=num_classes)
    elif kind == "url":
        raw = _load_url(str(source), num_classes)
    elif kind == "tables":
        raw = _load_tables(path, columns or tables.Columns(), num_classes)
    elif kind == "idx":
        raw = _load_dir(path, check_sha=False, num_classes=num_classes)
    else:
        raw = _load_npz(path, num_classes)
    return validate.consistent(raw, num_classes)


def _kind(source: str | Path | None) -> tuple[str, Path]:
    if source is None:
        return "embedded", EMBEDDED_DIR
    text = str(source)
    if text.lower().startswith(("http://", "https://")):
        return "url", Path()
    path = Path(text).expanduser()
    if not path.exists():
        raise DtrainError(f"{path}: source does not exist")
    if path.is_dir():
        return ("tables" if tables.table_files(path) else "idx"), path
    if path.suffix.lower() == ".npz":
        return "npz", path
    raise DtrainError(
        f"{path}: unsupported source; expected a directory of IDX files or of train/test "
        "Parquet or Arrow tables, an .npz file or an http(s):// URL"
    )


def _load_dir(directory: Path, *, check_sha: bool, num_classes: int | None) -> dict[str, Split]:
    if not directory.is_dir():
        raise DtrainError(f"{directory}: source directory does not exist")
    result: dict[str, Split] = {}
    for split, prefix in _IDX_PREFIX.items():
        images_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
        images = parse_idx(_read_idx_file(images_path, check_sha), images_path.name, IMAGES_MAGIC)
        labels = parse_idx(_read_idx_file(labels_path, check_sha), labels_path.name, LABELS_MAGIC)
        result[split] = validate.validated(
            images, labels, images_path.name, labels_path.name, num_classes
        )
    return result


def _load_tables(
    directory: Path, columns: tables.Columns, num_classes: int | None
) -> dict[str, Split]:
    files = tables.table_files(directory)
    result: dict[str, Split] = {}
    for split in SPLITS:
        path = files[split]
        features, labels, names = tables.load_table(path, columns, MAX_SOURCE_BYTES)
        result[split] = validate.validated(features, labels, *names, num_classes)
    return result


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DtrainError(f"{directory}: missing {stem}.gz (or uncompressed {stem})")


def _read_idx_file(path: Path, check_sha: bool) -> bytes:
    data = read_maybe_gzip(path)
    if check_sha:
        stem = path.name.removesuffix(".gz")
        actual = hashlib.sha256(data).hexdigest()
        if actual != KNOWN_SHA256[stem]:
            raise DtrainError(
                f"{path.name}: sha256 {actual} does not match the canonical MNIST file; "
                "the embedded copy is damaged"
            )
    return data


def read_maybe_gzip(path: Path) -> bytes:
    # Detect gzip by content, not by name: downloads and renamed copies lie about their suffix.
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == _GZIP_MAGIC
            f.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=f) as gz:
                    data = gz.read(MAX_SOURCE_BYTES + 1)
            else:
                data = f.read(MAX_SOURCE_BYTES + 1)
    except FileNotFoundError:
        raise DtrainError(f"{path}: file does not exist") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DtrainError(f"{path.name}: corrupt gzip data ({one_line(e)})") from None
    except OSError as e:
        raise DtrainError(f"{path.name}: cannot read ({one_line(e.strerror or e)})") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise DtrainError(
            f"{path.name}: larger than {MAX_SOURCE_BYTES} bytes, not an MNIST IDX file"
        )
    return data


def parse_idx(data: bytes, name: str, magic: int) -> np.ndarray:
    """IDX: big-endian int32 magic (low byte = number of dims), int32 dims, then uint8 data.

    With ``IMAGES_MAGIC`` any uint8 IDX of two or more dimensions is taken (N images of any
    shape); with ``LABELS_MAGIC`` exactly one dimension.
    """
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(data) < 4:
        raise DtrainError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    ndim = found & 0xFF
    images_ok = kind == "images" and found >> 8 == _IDX_UINT8 and ndim >= 2
    if found != magic and not images_ok:
        wanted = "0x000008NN with NN >= 2 dims" if kind == "images" else f"0x{magic:08x}"
        raise DtrainError(
            f"{name}: wrong magic number 0x{found:08x}, expected {wanted} (IDX uint8 {kind})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DtrainError(f"{name}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    actual = len(data) - header
    if actual < expected:
        raise DtrainError(
            f"{name}: truncated: dims {list(dims)} need {expected} data bytes, found {actual}"
        )
    if actual > expected:
        raise DtrainError(f"{name}: {actual - expected} trailing bytes after {expected} data bytes")
    return np.frombuffer(data, np.uint8, count=expected, offset=header).reshape(dims)


def _load_npz(path: Path, num_classes: int | None) -> dict[str, Split]:
    # Read member by member without pickle: an .npz from a user must not run code or make us
    # allocate what its headers claim (service/data/npzsafe.py).
    if npzsafe.is_npy(path):
        raise DtrainError(f"{path.name}: is a single .npy array, expected an .npz archive")
    try:
        with npzsafe.open_npz(path, MAX_SOURCE_BYTES) as npz:
            arrays = {key: _npz_array(npz, key, path.name) for key in _NPZ_KEYS}
    except npzsafe.NpzProblem as e:
        raise DtrainError(f"{path.name}: cannot load as .npz ({e})") from None
    result: dict[str, Split] = {}
    for split in SPLITS:
        x_key, y_key = f"x_{split}", f"y_{split}"
        images, labels = arrays[x_key], arrays[y_key]
        x_name, y_name = f"{path.name}[{x_key}]", f"{path.name}[{y_key}]"
        # uint8 are pixels (scaled by 1/255 for the network); other numbers are used as given,
        # never rescaled by a guess at their range.
        result[split] = validate.validated(images, labels, x_name, y_name, num_classes)
    return result


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_array(npz: npzsafe.NpzReader, key: str, name: str) -> np.ndarray:
    if key not in npz.files:
        raise DtrainError(
            f"{name}: missing array {key!r} (expected x_train, y_train, x_test, y_test; "
            f"found {', '.join(npz.files) or 'none'})"
        )
    try:
        return np.ascontiguousarray(npz.read(key))
    except npzsafe.NpzProblem as e:
        if e.pickled:
            raise DtrainError(
                f"{name}: array {key!r} is an object array that needs pickle to load; refused"
            ) from None
        raise DtrainError(f"{name}: cannot read array {key!r} ({e})") from None


def _load_url(url: str, num_classes: int | None) -> dict[str, Split]:
    split_url(url, "--source URL")  # urlopen would raise its ValueError as a traceback
    base = url.rstrip("/")
    # Downloaded files take the directory path, so a URL source gets exactly the same checks.
    with tempfile.TemporaryDirectory(prefix="dtrain-mnist-") as tmp:
        for prefix in _IDX_PREFIX.values():
            for kind in ("images-idx3", "labels-idx1"):
                name = f"{prefix}-{kind}-ubyte.gz"
                _download(f"{base}/{name}", Path(tmp) / name)
        return _load_dir(Path(tmp), check_sha=False, num_classes=num_classes)


def _download(url: str, dest: Path) -> None:
    try:
        with (
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
            dest.open("wb") as out,
        ):
            copied = 0
            while chunk := response.read(_CHUNK):
                copied += len(chunk)
                if copied > MAX_SOURCE_BYTES:
                    raise DtrainError(f"{url}: larger than {MAX_SOURCE_BYTES} bytes, refused")
                out.write(chunk)
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response body open
        raise DtrainError(f"{url}: download failed: HTTP {e.code} {one_line(e.reason)}") from None
    except urllib.error.URLError as e:
        raise DtrainError(f"{url}: download failed: {one_line(e.reason)}") from None
    except (OSError, http.client.HTTPException) as e:
        raise DtrainError(f"{url}: download failed: {one_line(e) or type(e).__name__}") from None
