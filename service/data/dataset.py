"""Preparing MNIST into Arrow IPC shards plus a manifest, and reading that manifest back.

Sources: the copy embedded in the repository (checked against the canonical sha256 sums), a
directory of the four IDX files, a keras-style ``.npz``, or an http(s) URL serving the four
``.gz`` files. Every source is validated before anything is written, and the output directory
appears atomically: complete with its manifest, or not at all.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import http.client
import json
import math
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dtrain.service.errors import DtrainError
from dtrain.workers.shards import (
    IMAGE_SHAPE,
    IMAGE_SIZE,
    NUM_CLASSES,
    SCHEMA,
    ShardError,
    one_line,
    schema_summary,
    shard_entries,
)

__all__ = [
    "EMBEDDED_DIR",
    "SCHEMA",
    "default_data_dir",
    "describe",
    "ensure_prepared",
    "load_source",
    "prepare",
    "read_manifest",
    "verify",
]

EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist"
MANIFEST_NAME = "manifest.json"
FORMAT = "dtrain-mnist-arrow"
VERSION = 1
SPLITS: tuple[str, ...] = ("train", "test")
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
_MAX_IDX_BYTES = 1 << 30
_DOWNLOAD_TIMEOUT_S = 30
_CHUNK = 1 << 20

Split = tuple[np.ndarray, np.ndarray]


def default_data_dir() -> Path:
    """``$DTRAIN_DATA_DIR`` if set, else ``~/.cache/dtrain/mnist``."""
    env = os.environ.get("DTRAIN_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dtrain" / "mnist"


# --- reading sources --------------------------------------------------------------------------


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
        images = _parse_idx(_read_idx_file(images_path, check_sha), images_path.name, IMAGES_MAGIC)
        labels = _parse_idx(_read_idx_file(labels_path, check_sha), labels_path.name, LABELS_MAGIC)
        result[split] = _validated(images, labels, images_path.name, labels_path.name)
    return result


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DtrainError(f"{directory}: missing {stem}.gz (or uncompressed {stem})")


def _read_idx_file(path: Path, check_sha: bool) -> bytes:
    data = _read_maybe_gzip(path)
    if check_sha:
        stem = path.name.removesuffix(".gz")
        actual = hashlib.sha256(data).hexdigest()
        if actual != KNOWN_SHA256[stem]:
            raise DtrainError(
                f"{path.name}: sha256 {actual} does not match the canonical MNIST file; "
                "the embedded copy is damaged"
            )
    return data


def _read_maybe_gzip(path: Path) -> bytes:
    # Detect gzip by content, not by name: downloads and renamed copies lie about their suffix.
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == _GZIP_MAGIC
            f.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=f) as gz:
                    data = gz.read(_MAX_IDX_BYTES + 1)
            else:
                data = f.read(_MAX_IDX_BYTES + 1)
    except FileNotFoundError:
        raise DtrainError(f"{path}: file does not exist") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DtrainError(f"{path.name}: corrupt gzip data ({one_line(e)})") from None
    except OSError as e:
        raise DtrainError(f"{path.name}: cannot read ({one_line(e.strerror or e)})") from None
    if len(data) > _MAX_IDX_BYTES:
        raise DtrainError(f"{path.name}: larger than {_MAX_IDX_BYTES} bytes, not an MNIST IDX file")
    return data


def _parse_idx(data: bytes, name: str, magic: int) -> np.ndarray:
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
    # allow_pickle=False: an .npz from a user must not be able to run code when loaded.
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DtrainError(f"{path.name}: cannot load as .npz ({one_line(e)})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DtrainError(f"{path.name}: is a single .npy array, expected an .npz archive")
    with npz:
        arrays = {key: _npz_array(npz, key, path.name) for key in _NPZ_KEYS}
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


def _npz_array(npz: Any, key: str, name: str) -> np.ndarray:
    if key not in npz.files:
        raise DtrainError(
            f"{name}: missing array {key!r} (expected x_train, y_train, x_test, y_test; "
            f"found {', '.join(npz.files) or 'none'})"
        )
    try:
        return np.ascontiguousarray(npz[key])
    except ValueError as e:
        if "pickle" in str(e):
            raise DtrainError(
                f"{name}: array {key!r} is an object array that needs pickle to load; refused"
            ) from None
        raise DtrainError(f"{name}: cannot read array {key!r} ({one_line(e)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DtrainError(f"{name}: cannot read array {key!r} ({one_line(e)})") from None


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
                if copied > _MAX_IDX_BYTES:
                    raise DtrainError(f"{url}: larger than {_MAX_IDX_BYTES} bytes, refused")
                out.write(chunk)
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response body open
        raise DtrainError(f"{url}: download failed: HTTP {e.code} {one_line(e.reason)}") from None
    except urllib.error.URLError as e:
        raise DtrainError(f"{url}: download failed: {one_line(e.reason)}") from None
    except (OSError, http.client.HTTPException) as e:
        raise DtrainError(f"{url}: download failed: {one_line(e) or type(e).__name__}") from None


# --- writing shards ---------------------------------------------------------------------------


def prepare(
    out_dir: Path,
    *,
    source: str | Path | None = None,
    num_shards: int = 8,
    num_test_shards: int = 2,
    force: bool = False,
) -> dict[str, Any]:
    """Write ``out_dir`` as Arrow shards plus manifest.json, atomically; return the manifest."""
    out_dir = Path(out_dir).expanduser().resolve()
    shard_counts = {"train": num_shards, "test": num_test_shards}
    for split, count in shard_counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise DtrainError(f"number of {split} shards must be an integer >= 1, got {count!r}")
    _check_out_dir(out_dir, force=force)
    data = load_source(source)
    for split, count in shard_counts.items():
        if count > len(data[split][1]):
            raise DtrainError(
                f"{count} {split} shards requested but the source has only "
                f"{len(data[split][1])} {split} samples"
            )
    source_text = EMBEDDED_SOURCE if source is None else _source_text(source)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DtrainError(
            f"{out_dir.parent}: cannot create ({one_line(e.strerror or e)})"
        ) from None
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        manifest = _write_all(tmp, data, shard_counts, source_text)
        _install(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise DtrainError(f"{out_dir}: cannot write prepared data ({one_line(e)})") from None
        raise
    return manifest


def _source_text(source: str | Path) -> str:
    text = str(source)
    if text.lower().startswith(("http://", "https://")):
        # The manifest is shared and printed; credentials in the URL must not end up in it.
        parts = urllib.parse.urlsplit(text)
        if parts.username is not None or parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            text = urllib.parse.urlunsplit(parts._replace(netloc=host))
        return text
    return str(Path(text).expanduser().resolve())


def _check_out_dir(out_dir: Path, *, force: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DtrainError(f"{out_dir}: exists and is not a directory")
    if force:
        return
    if (out_dir / MANIFEST_NAME).exists():
        try:
            read_manifest(out_dir)
        except DtrainError as e:
            raise DtrainError(
                f"{out_dir}: holds an unusable manifest ({e}); use --force to replace it"
            ) from None
        raise DtrainError(f"{out_dir}: already prepared, use --force to replace it")
    # An empty directory (say, a freshly made mount point) is fine; rename(2) replaces it.
    if any(out_dir.iterdir()):
        raise DtrainError(
            f"{out_dir}: exists without a manifest.json (leftovers of an interrupted prepare?); "
            "use --force to replace it"
        )


def _write_all(
    tmp: Path, data: dict[str, Split], shard_counts: dict[str, int], source: str
) -> dict[str, Any]:
    splits = {
        split: _write_split(tmp, split, *data[split], shard_counts[split]) for split in SPLITS
    }
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "schema": str(SCHEMA),
        "image_shape": list(IMAGE_SHAPE),
        "num_classes": NUM_CLASSES,
        "splits": splits,
    }
    # The manifest goes last: its presence is what marks the directory complete.
    manifest_path = tmp / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _fsync(manifest_path)
    _fsync(tmp)
    return manifest


def _write_split(
    tmp: Path, split: str, images: np.ndarray, labels: np.ndarray, count: int
) -> dict[str, Any]:
    shards = []
    for index, (lo, hi) in enumerate(_shard_bounds(len(labels), count)):
        name = f"{split}-{index:05d}-of-{count:05d}.arrow"
        path = tmp / name
        _write_shard(path, images[lo:hi], labels[lo:hi])
        shards.append(
            {
                "file": name,
                "num_rows": hi - lo,
                "offset": lo,
                "bytes": path.stat().st_size,
                "sha256": _sha256_file(path),
                "label_histogram": _histogram(labels[lo:hi]),
            }
        )
    return {"num_samples": len(labels), "label_histogram": _histogram(labels), "shards": shards}


def _shard_bounds(n: int, count: int) -> list[tuple[int, int]]:
    # Contiguous and in source order; sizes differ by at most one (np.array_split's convention).
    base, extra = divmod(n, count)
    bounds = []
    lo = 0
    for i in range(count):
        hi = lo + base + (1 if i < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _write_shard(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    # (n, 28, 28) -> flat (n * 784,) values of a fixed-size list; pa.array wraps it without a copy.
    flat = pa.array(np.ascontiguousarray(images).reshape(-1), type=pa.uint8())
    batch = pa.record_batch(
        [pa.FixedSizeListArray.from_arrays(flat, IMAGE_SIZE), pa.array(labels, type=pa.uint8())],
        schema=SCHEMA,
    )
    # One uncompressed record batch per shard, so a reader maps it and slices without copying.
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        writer.write_batch(batch)
    _fsync(path)


def _histogram(labels: np.ndarray) -> list[int]:
    counts: list[int] = np.bincount(labels, minlength=NUM_CLASSES).tolist()
    return counts


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    # Works for files and directories alike: fsync needs only a read-only descriptor on Linux.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` to ``out_dir``; an old ``out_dir`` goes only after that worked."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            os.rename(old, out_dir)
            raise
        _fsync(out_dir.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, out_dir)
    except OSError:
        # Another process may have finished the same prepare between our check and now.
        if (out_dir / MANIFEST_NAME).is_file():
            raise DtrainError(f"{out_dir}: already prepared, use --force to replace it") from None
        raise
    _fsync(out_dir.parent)


# --- reading prepared data --------------------------------------------------------------------


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest of a prepared directory, checked for format, version and consistency."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DtrainError(f"{data_dir}: data directory does not exist; run `dtrain data prepare`")
    path = data_dir / MANIFEST_NAME
    if not path.is_file():
        raise DtrainError(f"{data_dir}: not prepared: run `dtrain data prepare`")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DtrainError(f"{path}: unreadable manifest ({one_line(e)})") from None
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict):
        raise DtrainError(f"{path}: manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise DtrainError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise DtrainError(
            f"{path}: manifest version {manifest.get('version')!r} is not supported "
            f"(this dtrain reads version {VERSION}); prepare the data again"
        )
    for split in SPLITS:
        try:
            shard_entries(manifest, split)
            for shard in manifest["splits"][split]["shards"]:
                _check_shard_digest(shard)
        except ShardError as e:
            raise DtrainError(f"{path}: {e}") from None


def _check_shard_digest(shard: dict[str, Any]) -> None:
    size, sha256 = shard.get("bytes"), shard.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or not isinstance(sha256, str):
        raise ShardError(f"{shard['file']}: manifest entry lacks an integer bytes or a sha256")


def verify(data_dir: Path, manifest: dict[str, Any]) -> int:
    """Check every shard's size and sha256 against the manifest; return how many were checked."""
    data_dir = Path(data_dir).expanduser()
    checked = 0
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            _verify_shard(data_dir / shard["file"], shard["bytes"], shard["sha256"])
            checked += 1
    return checked


def _verify_shard(path: Path, size: int, sha256: str) -> None:
    if not path.is_file():
        raise DtrainError(
            f"{path.name}: shard listed in the manifest is missing from {path.parent}"
        )
    actual_size = path.stat().st_size
    if actual_size != size:
        raise DtrainError(f"{path.name}: shard is {actual_size} bytes, the manifest says {size}")
    if _sha256_file(path) != sha256:
        raise DtrainError(f"{path.name}: sha256 does not match the manifest (corrupt or modified)")


def ensure_prepared(
    data_dir: Path, *, num_shards: int = 8, num_test_shards: int = 2
) -> dict[str, Any]:
    """The manifest of ``data_dir``, preparing the embedded MNIST there first if needed.

    An existing preparation is used as it is, whatever its shard counts.
    """
    data_dir = Path(data_dir).expanduser()
    if (data_dir / MANIFEST_NAME).is_file():
        return read_manifest(data_dir)
    try:
        return prepare(data_dir, num_shards=num_shards, num_test_shards=num_test_shards)
    except DtrainError:
        # A concurrent driver may have prepared it first; its result is as good as ours.
        if (data_dir / MANIFEST_NAME).is_file():
            return read_manifest(data_dir)
        raise


def describe(manifest: dict[str, Any]) -> str:
    """A human summary of a manifest: source, creation time, per-split counts, schema."""
    # read_manifest checks only what reading needs; the rest may be absent from a hand-made one.
    schema = manifest.get("schema", "?")
    lines = [
        f"format:  {manifest['format']} v{manifest['version']}",
        f"source:  {manifest.get('source', '?')}",
        f"created: {manifest.get('created', '?')}",
        f"schema:  {schema_summary(SCHEMA) if schema == str(SCHEMA) else one_line(schema)}",
    ]
    for split in SPLITS:
        info = manifest["splits"][split]
        shards = info["shards"]
        sizes = [s["num_rows"] for s in shards]
        rows = str(sizes[0]) if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
        megabytes = sum(s["bytes"] for s in shards) / 1e6
        lines.append(
            f"{split}: {info['num_samples']} samples in {len(shards)} shards "
            f"({rows} rows each, {megabytes:.1f} MB)"
        )
        histogram = info.get("label_histogram", [])
        counts = "  ".join(f"{digit}:{count}" for digit, count in enumerate(histogram)) or "?"
        lines.append(f"  label counts  {counts}")
    return "\n".join(lines)
