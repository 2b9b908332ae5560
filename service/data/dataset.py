"""Preparing MNIST into Arrow IPC shards plus a manifest, and reading that manifest back.

Sources: the copy embedded in the repository (checked against the canonical sha256 sums), a
directory of the four IDX files, a keras-style ``.npz``, or an http(s) URL serving the four
``.gz`` files. Every source is validated before anything is written, and the output directory
appears atomically: complete with its manifest, or not at all.
"""

from __future__ import annotations

import datetime as dt
import errno
import gzip
import hashlib
import http.client
import json
import math
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dtrain.service.data import npzsafe
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
    # Read member by member without pickle: an .npz from a user must not run code or make us
    # allocate what its headers claim (service.npzsafe).
    if npzsafe.is_npy(path):
        raise DtrainError(f"{path.name}: is a single .npy array, expected an .npz archive")
    try:
        with npzsafe.open_npz(path, _MAX_IDX_BYTES) as npz:
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
    _sweep_stale_tmp(out_dir)
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
        if tmp.is_dir() and not tmp.is_symlink():
            _remove_dataset_dir(tmp)  # our own pid's, from an earlier life of this pid
        tmp.mkdir()
        manifest = _write_all(tmp, data, shard_counts, source_text)
        _install(tmp, out_dir, force=force)
    except BaseException as e:
        if tmp.is_dir() and not tmp.is_symlink():
            _remove_dataset_dir(tmp)
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


# The only names dtrain writes into a prepared directory: anything else there is the user's.
_SHARD_NAME = re.compile(r"(train|test)-\d{5}-of-\d{5}\.arrow")
# Siblings of OUT that a prepare creates while it works: .OUT.tmp-PID and .OUT.old-PID.
_WORK_DIR_NAME = re.compile(r"\.(?P<out>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)")


def _is_dtrain_file(name: str) -> bool:
    return name == MANIFEST_NAME or _SHARD_NAME.fullmatch(name) is not None


def _foreign_entries(directory: Path) -> list[str]:
    """Entries of ``directory`` that dtrain did not write there (sorted, so messages are stable)."""
    return sorted(
        p.name for p in directory.iterdir() if not (p.is_file() and _is_dtrain_file(p.name))
    )


def _is_dtrain_dataset(directory: Path) -> bool:
    """Holds dtrain's manifest.json and nothing but the files a prepare writes."""
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file() or _foreign_entries(directory):
        return False
    try:
        content = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        # A damaged manifest beside nothing but shard files is still recognisably ours.
        return any(_SHARD_NAME.fullmatch(p.name) for p in directory.iterdir())
    return isinstance(content, dict) and content.get("format") == FORMAT


def _not_ours(out_dir: Path) -> DtrainError:
    foreign = _foreign_entries(out_dir)
    if not foreign:
        foreign = [MANIFEST_NAME]  # a manifest.json of some other program
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return DtrainError(
        f"{out_dir}: holds {shown}, which are not a dtrain dataset and would be lost; "
        "refusing to replace it: choose a new or empty --out directory"
    )


def _check_out_dir(out_dir: Path, *, force: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DtrainError(f"{out_dir}: exists and is not a directory")
    # An empty directory (say, a freshly made mount point) is fine; rename(2) replaces it.
    if not any(out_dir.iterdir()):
        return
    # --force replaces only what a prepare wrote: never a folder of the user's own files.
    if not _is_dtrain_dataset(out_dir):
        raise _not_ours(out_dir)
    if force:
        return
    try:
        read_manifest(out_dir)
    except DtrainError as e:
        raise DtrainError(
            f"{out_dir}: holds an unusable manifest ({e}); use --force to replace it"
        ) from None
    raise DtrainError(f"{out_dir}: already prepared, use --force to replace it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove_dataset_dir(directory: Path) -> bool:
    """Delete the files a prepare writes, then the folder if that emptied it; never other files."""
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink() and _is_dtrain_file(entry.name):
            entry.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        return False
    return True


def _sweep_stale_tmp(out_dir: Path) -> None:
    """Remove work folders of prepares into ``out_dir`` that were killed (their pid is gone)."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        match = _WORK_DIR_NAME.fullmatch(entry.name)
        if (
            match is None
            or match["out"] != out_dir.name
            or not entry.is_dir()
            or entry.is_symlink()
            or _pid_alive(int(match["pid"]))
        ):
            continue
        # A killed --force prepare may have moved the only dataset aside: keep it then.
        if match["kind"] == "old" and not (out_dir / MANIFEST_NAME).is_file():
            continue
        if not _remove_dataset_dir(entry):
            print(
                f"dtrain: left {entry} in place: it holds files dtrain did not write",
                file=sys.stderr,
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


def _install(tmp: Path, out_dir: Path, *, force: bool) -> None:
    """Move the finished ``tmp`` to ``out_dir``; an old ``out_dir`` goes only after that worked.

    Without ``force``, rename(2) is the check that counts: it replaces nothing but an empty
    directory, so a dataset another prepare finished meanwhile is never replaced.
    """
    try:
        os.rename(tmp, out_dir)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not out_dir.is_dir():
            raise
        if not force:
            if (out_dir / MANIFEST_NAME).is_file():
                raise DtrainError(
                    f"{out_dir}: was prepared by another process meanwhile; "
                    "use --force to replace it"
                ) from None
            raise _not_ours(out_dir) from None
    else:
        _fsync(out_dir.parent)
        return
    # Checked again now: the folder may have changed since the first check.
    if not _is_dtrain_dataset(out_dir):
        raise _not_ours(out_dir)
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    _fsync(out_dir.parent)
    if not _remove_dataset_dir(old):
        print(f"dtrain: left {old} in place: it holds files dtrain did not write", file=sys.stderr)


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


def verify(data_dir: Path, manifest: dict[str, Any], splits: tuple[str, ...] = SPLITS) -> int:
    """Check every shard's size and sha256 against the manifest; return how many were checked."""
    data_dir = Path(data_dir).expanduser()
    checked = 0
    for split in splits:
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
    data_dir: Path, *, num_shards: int = 8, num_test_shards: int = 2, create: bool = True
) -> dict[str, Any]:
    """The manifest of ``data_dir``, preparing the embedded MNIST there first if needed.

    An existing preparation is used as it is, whatever its shard counts. With ``create`` False
    (evaluate and predict given a --data-dir) a missing dataset is an error, not a download-sized
    surprise in a folder the user only meant to read from.
    """
    data_dir = Path(data_dir).expanduser()
    if (data_dir / MANIFEST_NAME).is_file():
        return read_manifest(data_dir)
    hint = f"prepare it with `dtrain data prepare --out {data_dir}`"
    if data_dir.exists() and not data_dir.is_dir():
        raise DtrainError(f"{data_dir}: is not a directory")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        raise DtrainError(f"{data_dir}: not a prepared dataset (no {MANIFEST_NAME}); {hint}")
    if not create:
        raise DtrainError(f"{data_dir}: no prepared dataset there; {hint}")
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
