"""Where MNIST comes from: reading and validating a source before anything is written.

Sources: the copy embedded in the repository (checked against the canonical sha256 sums), a
directory of the four IDX files, a keras-style ``.npz``, or an http(s) URL serving the four
``.gz`` files. Every source gets the same checks (shapes, counts, labels 0..9) and comes back
as {"train": (images (N,28,28) u8, labels (N,) u8), "test": ...}. ``read_maybe_gzip`` and
``parse_idx`` are public: ``predict`` reads IDX image files with them too.
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

from dtrain.service.data import npzsafe
from dtrain.service.data.manifest import SPLITS
from dtrain.service.errors import DtrainError
from dtrain.workers.shards import IMAGE_SHAPE, IMAGE_SIZE, NUM_CLASSES, one_line

# parents[2] is the project root both installed (editable) and staged for a Ray job.
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist"
EMBEDDED_SOURCE = "embedded"

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

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

Split = tuple[np.ndarray, np.ndarray]


def load_source(source: str | Path | None) -> dict[str, Split]:
    """Load and validate a source: {"train": (images (N,28,28) u8, labels (N,) u8), "test": ...}."""
    if source is None:
        return _load_dir(EMBEDDED_DIR, check_sha=True)
    text = str(source)
    if text.lower().startswith(("http://", "https://")):
        return _load_url(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise DtrainError(f"{path}: source does not exist")
    if path.is_dir():
        return _load_dir(path, check_sha=False)
    if path.suffix.lower() == ".npz":
        return _load_npz(path)
    raise DtrainError(
        f"{path}: unsupported source; expected a directory of IDX files, an .npz file "
        "or an http(s):// URL"
    )


def _load_dir(directory: Path, *, check_sha: bool) -> dict[str, Split]:
    if not directory.is_dir():
        raise DtrainError(f"{directory}: source directory does not exist")
    result: dict[str, Split] = {}
    for split, prefix in _IDX_PREFIX.items():
        images_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
        images = parse_idx(_read_idx_file(images_path, check_sha), images_path.name, IMAGES_MAGIC)
        labels = parse_idx(_read_idx_file(labels_path, check_sha), labels_path.name, LABELS_MAGIC)
        result[split] = _validated(images, labels, images_path.name, labels_path.name)
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
    """IDX: big-endian int32 magic (low byte = number of dims), int32 dims, then uint8 data."""
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(data) < 4:
        raise DtrainError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DtrainError(
            f"{name}: wrong magic number 0x{found:08x}, expected 0x{magic:08x} (IDX uint8 {kind})"
        )
    ndim = magic & 0xFF
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


def _validated(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str) -> Split:
    """Checks shared by every source; images arrive as (N, 28, 28) or (N, 784)."""
    if images.ndim == 2 and images.shape[1] == IMAGE_SIZE:
        images = images.reshape(len(images), *IMAGE_SHAPE)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        shape = "x".join(str(d) for d in images.shape[1:]) or "scalar"
        raise DtrainError(f"{images_name}: images are {shape}, expected 28x28")
    if labels.ndim != 1:
        raise DtrainError(f"{labels_name}: labels have shape {list(labels.shape)}, expected (N,)")
    if len(images) != len(labels):
        raise DtrainError(
            f"{images_name}: {len(images)} images but {labels_name} has {len(labels)} labels"
        )
    if len(images) == 0:
        raise DtrainError(f"{images_name}: holds no images")
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        i = int(bad[0])
        raise DtrainError(
            f"{labels_name}: label {int(labels[i])} at index {i} is out of range 0..9"
        )
    return images, labels.astype(np.uint8, copy=False)


def _load_npz(path: Path) -> dict[str, Split]:
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
        if images.dtype != np.uint8:
            # Float pixels would be silently rescaled wrong; refuse rather than guess their range.
            raise DtrainError(f"{x_name}: dtype {images.dtype}, expected uint8 pixels 0..255")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DtrainError(f"{y_name}: dtype {labels.dtype}, expected integer labels")
        result[split] = _validated(images, labels, x_name, y_name)
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


def _load_url(url: str) -> dict[str, Split]:
    base = url.rstrip("/")
    # Downloaded files take the directory path, so a URL source gets exactly the same checks.
    with tempfile.TemporaryDirectory(prefix="dtrain-mnist-") as tmp:
        for prefix in _IDX_PREFIX.values():
            for kind in ("images-idx3", "labels-idx1"):
                name = f"{prefix}-{kind}-ubyte.gz"
                _download(f"{base}/{name}", Path(tmp) / name)
        return _load_dir(Path(tmp), check_sha=False)


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
