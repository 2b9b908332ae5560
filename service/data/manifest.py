"""A prepared dataset's manifest: its format, reading it back, checking the shards against it.

The manifest (``manifest.json``) lists every shard with its row count, size, sha256 and label
histogram; a directory holding it is a complete dataset (prepare writes it last). Readers check
it here, and ``verify`` checks the shards' bytes against it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from dtrain.service.errors import DtrainError
from dtrain.workers.shards import ShardError, one_line, schema_summary, shard_entries, shard_format

MANIFEST_NAME = "manifest.json"
FORMAT = "dtrain-mnist-arrow"
VERSION = 1
SPLITS: tuple[str, ...] = ("train", "test")
_CHUNK = 1 << 20


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
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: Any, path: Path) -> None:
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
    _check_image_shape(manifest, path)


def image_shape(manifest: dict[str, Any]) -> tuple[int, ...] | None:
    """The shape of one image, or None for rows of features (a checked manifest's)."""
    shape = manifest.get("image_shape")
    return None if shape is None else tuple(shape)


def _check_image_shape(manifest: dict[str, Any], path: Path) -> None:
    # predict turns pictures into rows of this shape: it must be whole numbers that make the
    # input size, or absent.
    shape = manifest.get("image_shape")
    if shape is None:
        return
    width = shard_format(manifest).input_size
    if (
        not isinstance(shape, list)
        or len(shape) < 2
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)
        or math.prod(shape) != width
    ):
        raise DtrainError(
            f"{path}: image_shape {shape!r} is not a list of 2 or more sizes whose product is "
            f"the input size {width}"
        )


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
        if path.exists():  # a FIFO would be read forever, a device or a folder is no shard
            raise DtrainError(f"{path.name}: shard in {path.parent} is not a regular file")
        raise DtrainError(
            f"{path.name}: shard listed in the manifest is missing from {path.parent}"
        )
    actual_size = path.stat().st_size
    if actual_size != size:
        raise DtrainError(f"{path.name}: shard is {actual_size} bytes, the manifest says {size}")
    if sha256_file(path) != sha256:
        raise DtrainError(f"{path.name}: sha256 does not match the manifest (corrupt or modified)")


def train_data_digest(manifest: dict[str, Any]) -> str:
    """One sha256 for a dataset's training rows: over its training shards' own sha256s, in
    order (the manifest's are checked against the files before a run). A resumed run must
    read the rows it started with; these decide its weights as much as its seed does."""
    shards = manifest["splits"]["train"]["shards"]
    return hashlib.sha256("\n".join(s["sha256"] for s in shards).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(manifest: dict[str, Any]) -> str:
    """A human summary of a manifest: source, creation time, per-split counts, schema."""
    # read_manifest checks only what reading needs; the rest may be absent from a hand-made one.
    schema = manifest.get("schema", "?")
    fmt = shard_format(manifest)
    known = str(fmt.schema)
    lines = [
        f"format:  {manifest['format']} v{manifest['version']}",
        f"source:  {manifest.get('source', '?')}",
        f"created: {manifest.get('created', '?')}",
        f"schema:  {schema_summary(fmt.schema) if schema == known else one_line(schema)}",
        f"input:   {input_text(manifest)}",
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


def input_text(manifest: dict[str, Any]) -> str:
    """What one sample is, in words: "8x8 uint8 images (64 values), 10 classes"."""
    fmt = shard_format(manifest)
    shape = manifest.get("image_shape")
    if isinstance(shape, list) and shape:
        what = f"{'x'.join(map(str, shape))} {fmt.feature_type} images ({fmt.input_size} values)"
    else:
        what = f"{fmt.input_size} {fmt.feature_type} features"
    span = manifest.get("feature_range")
    if isinstance(span, list) and len(span) == 2:
        what += f" in [{span[0]:g}, {span[1]:g}]"
    return f"{what}, {fmt.num_classes} classes"
