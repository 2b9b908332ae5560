"""Data layer: preparing sources into Arrow shards, reading them back, and refusing bad input."""

from __future__ import annotations

import gzip
import http.server
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from dtrain.service.data import prepare as prepare_module
from dtrain.service.data import sources
from dtrain.service.data.dataset import (
    SCHEMA,
    default_data_dir,
    describe,
    ensure_prepared,
    load_source,
    prepare,
    read_manifest,
    verify,
)
from dtrain.service.errors import DtrainError
from dtrain.workers.shards import ShardError, read_rows, to_float

IMAGES = 0x00000803
LABELS = 0x00000801
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
N_TRAIN, N_TEST = 30, 12

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_idx_source(directory: Path, arrays: Arrays, *, suffix: str = ".gz") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[split]
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, IMAGES)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, LABELS)
    return directory


def assert_error(excinfo: pytest.ExceptionInfo[Exception], *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.fixture(scope="module")
def embedded() -> Arrays:
    return load_source(None)


@pytest.fixture
def arrays() -> Arrays:
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        return images, (np.arange(n) % 10).astype(np.uint8)

    return {"train": split(N_TRAIN), "test": split(N_TEST)}


@pytest.fixture
def idx_dir(tmp_path: Path, arrays: Arrays) -> Path:
    return write_idx_source(tmp_path / "src", arrays)


@pytest.fixture
def small_prepared(tmp_path: Path, idx_dir: Path) -> Path:
    out = tmp_path / "prepared"
    prepare(out, source=idx_dir, num_shards=3, num_test_shards=2)
    return out


def assert_same(loaded: Arrays, expected: Arrays) -> None:
    for split in ("train", "test"):
        np.testing.assert_array_equal(loaded[split][0], expected[split][0])
        np.testing.assert_array_equal(loaded[split][1], expected[split][1])
        assert loaded[split][0].dtype == np.uint8 and loaded[split][1].dtype == np.uint8


# --- the embedded MNIST -----------------------------------------------------------------------


def test_embedded_mnist_prepares_to_known_counts(prepared_mnist: Path) -> None:
    manifest = read_manifest(prepared_mnist)
    train, test = manifest["splits"]["train"], manifest["splits"]["test"]
    assert (train["num_samples"], test["num_samples"]) == (60000, 10000)
    assert train["label_histogram"] == MNIST_TRAIN_COUNTS
    assert test["label_histogram"] == MNIST_TEST_COUNTS
    assert [s["num_rows"] for s in train["shards"]] == [7500] * 8
    assert [s["offset"] for s in test["shards"]] == [0, 5000]
    assert train["shards"][0]["file"] == "train-00000-of-00008.arrow"
    summed = np.sum([s["label_histogram"] for s in train["shards"]], axis=0)
    assert summed.tolist() == MNIST_TRAIN_COUNTS
    assert manifest["source"] == "embedded"
    assert manifest["schema"] == str(SCHEMA)
    assert verify(prepared_mnist, manifest) == 10


def test_manifest_is_the_only_non_shard_file(prepared_mnist: Path) -> None:
    names = sorted(p.name for p in prepared_mnist.iterdir())
    assert names == [
        "manifest.json",
        "test-00000-of-00002.arrow",
        "test-00001-of-00002.arrow",
        *(f"train-{i:05d}-of-00008.arrow" for i in range(8)),
    ]
    # No temp or old directory is left beside it.
    assert [p.name for p in prepared_mnist.parent.iterdir()] == ["prepared"]


def test_read_rows_across_a_shard_boundary_matches_source(
    prepared_mnist: Path, embedded: Arrays
) -> None:
    manifest = read_manifest(prepared_mnist)
    images, labels = read_rows(prepared_mnist, manifest, "train", 7400, 15100)
    assert images.shape == (7700, 784) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, embedded["train"][0][7400:15100].reshape(-1, 784))
    np.testing.assert_array_equal(labels, embedded["train"][1][7400:15100])
    images, labels = read_rows(prepared_mnist, manifest, "test", 0, 10000)
    np.testing.assert_array_equal(images, embedded["test"][0].reshape(-1, 784))
    np.testing.assert_array_equal(labels, embedded["test"][1])


def test_read_rows_within_one_shard_is_a_read_only_view(prepared_mnist: Path) -> None:
    manifest = read_manifest(prepared_mnist)
    images, labels = read_rows(prepared_mnist, manifest, "train", 100, 228)
    assert images.shape == (128, 784) and labels.shape == (128,)
    assert not images.flags.writeable and not images.flags.owndata


def test_ensure_prepared_uses_existing_without_rewriting(prepared_mnist: Path) -> None:
    before = (prepared_mnist / "manifest.json").stat().st_mtime_ns
    manifest = ensure_prepared(prepared_mnist, num_shards=3)
    assert len(manifest["splits"]["train"]["shards"]) == 8
    assert (prepared_mnist / "manifest.json").stat().st_mtime_ns == before


def test_ensure_prepared_prepares_embedded_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = ensure_prepared(tmp_path / "fresh", num_shards=2, num_test_shards=1)
    assert manifest["splits"]["train"]["num_samples"] == 60000
    assert len(manifest["splits"]["train"]["shards"]) == 2
    assert capsys.readouterr() == ("", "")


def test_describe_lists_counts(prepared_mnist: Path) -> None:
    text = describe(read_manifest(prepared_mnist))
    assert "source:  embedded" in text
    assert "train: 60000 samples in 8 shards (7500 rows each" in text
    assert "test: 10000 samples in 2 shards" in text
    assert "1:6742" in text and "1:1135" in text
    assert "image: fixed_size_list<item: uint8>[784] not null" in text


def test_embedded_checksum_mismatch_is_reported(
    idx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "EMBEDDED_DIR", idx_dir)
    with pytest.raises(DtrainError) as excinfo:
        load_source(None)
    assert_error(excinfo, "train-images-idx3-ubyte.gz", "does not match the canonical MNIST")


# --- sources ----------------------------------------------------------------------------------


def test_prepare_splits_contiguously_in_source_order(
    tmp_path: Path, idx_dir: Path, arrays: Arrays
) -> None:
    out = tmp_path / "out"
    manifest = prepare(out, source=idx_dir, num_shards=4, num_test_shards=5)
    train = manifest["splits"]["train"]
    assert [s["num_rows"] for s in train["shards"]] == [8, 8, 7, 7]
    assert [s["offset"] for s in train["shards"]] == [0, 8, 16, 23]
    assert [s["num_rows"] for s in manifest["splits"]["test"]["shards"]] == [3, 3, 2, 2, 2]
    assert manifest["source"] == str(idx_dir.resolve())
    assert manifest == read_manifest(out)
    for split in ("train", "test"):
        n = len(arrays[split][1])
        images, labels = read_rows(out, manifest, split, 0, n)
        np.testing.assert_array_equal(images, arrays[split][0].reshape(n, 784))
        np.testing.assert_array_equal(labels, arrays[split][1])
    empty_images, empty_labels = read_rows(out, manifest, "train", 5, 5)
    assert empty_images.shape == (0, 784) and empty_labels.shape == (0,)


def test_shards_are_uncompressed_arrow_files(small_prepared: Path) -> None:
    with pa.memory_map(str(small_prepared / "train-00000-of-00003.arrow")) as source:
        reader = pa.ipc.open_file(source)
        assert reader.schema.equals(SCHEMA)
        assert reader.num_record_batches == 1


def test_raw_idx_source_works(tmp_path: Path, arrays: Arrays) -> None:
    assert_same(load_source(write_idx_source(tmp_path / "raw", arrays, suffix="")), arrays)


def test_gzip_is_detected_by_content_not_name(tmp_path: Path, arrays: Arrays) -> None:
    src = write_idx_source(tmp_path / "src", arrays, suffix="")
    target = src / "train-images-idx3-ubyte"
    target.write_bytes(gzip.compress(target.read_bytes()))
    assert_same(load_source(src), arrays)


@pytest.mark.parametrize("flat", [False, True])
def test_npz_source_works(tmp_path: Path, arrays: Arrays, flat: bool) -> None:
    def shaped(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), 784) if flat else images

    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=shaped(arrays["train"][0]),
        y_train=arrays["train"][1].astype(np.int64),
        x_test=shaped(arrays["test"][0]),
        y_test=arrays["test"][1],
    )
    assert_same(load_source(path), arrays)
    manifest = prepare(tmp_path / "out", source=str(path), num_shards=2, num_test_shards=1)
    assert manifest["splits"]["train"]["num_samples"] == N_TRAIN


def test_npz_object_array_is_refused(tmp_path: Path, arrays: Arrays) -> None:
    path = tmp_path / "evil.npz"
    labels = np.array([*range(10)] * 3, dtype=object)
    np.savez(
        path,
        x_train=arrays["train"][0],
        y_train=labels,
        x_test=arrays["test"][0],
        y_test=arrays["test"][1],
    )
    with pytest.raises(DtrainError) as excinfo:
        load_source(path)
    assert_error(excinfo, "evil.npz", "y_train", "pickle", "refused")


@pytest.mark.parametrize(
    ("arrays_override", "fragments"),
    [
        ({"x_test": None}, ("missing array 'x_test'",)),
        ({"x_train": np.zeros((N_TRAIN, 28, 28), np.float32)}, ("x_train", "float32", "uint8")),
        ({"y_test": np.full(N_TEST, -1)}, ("y_test", "label -1 at index 0", "0..9")),
        ({"x_train": np.zeros((N_TRAIN, 32, 32), np.uint8)}, ("x_train", "32x32", "28x28")),
    ],
)
def test_bad_npz_is_refused(
    tmp_path: Path, arrays: Arrays, arrays_override: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    contents = {
        "x_train": arrays["train"][0],
        "y_train": arrays["train"][1],
        "x_test": arrays["test"][0],
        "y_test": arrays["test"][1],
    }
    contents.update(arrays_override)
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in contents.items() if v is not None})
    with pytest.raises(DtrainError) as excinfo:
        load_source(path)
    assert_error(excinfo, *fragments)


def test_npz_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(DtrainError) as excinfo:
        load_source(path)
    assert_error(excinfo, "junk.npz", "cannot load as .npz")


def test_missing_source_path(tmp_path: Path) -> None:
    with pytest.raises(DtrainError) as excinfo:
        load_source(tmp_path / "nowhere")
    assert_error(excinfo, "nowhere", "does not exist")


def test_unsupported_source_file(tmp_path: Path) -> None:
    path = tmp_path / "mnist.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(DtrainError) as excinfo:
        load_source(path)
    assert_error(excinfo, "mnist.csv", "unsupported source")


# --- broken IDX files -------------------------------------------------------------------------


def _rewrite(path: Path, change: Callable[[bytes], bytes]) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(change(raw)))


def _remove_test_labels(src: Path, arrays: Arrays) -> None:
    (src / "t10k-labels-idx1-ubyte.gz").unlink()


def _truncate_images(src: Path, arrays: Arrays) -> None:
    _rewrite(src / "train-images-idx3-ubyte.gz", lambda raw: raw[:-100])


def _trailing_bytes(src: Path, arrays: Arrays) -> None:
    _rewrite(src / "t10k-images-idx3-ubyte.gz", lambda raw: raw + b"\0\0\0")


def _wrong_magic(src: Path, arrays: Arrays) -> None:
    write_idx(src / "train-labels-idx1-ubyte.gz", arrays["train"][0], IMAGES)


def _count_mismatch(src: Path, arrays: Arrays) -> None:
    write_idx(src / "train-labels-idx1-ubyte.gz", arrays["train"][1][:-1], LABELS)


def _label_ten(src: Path, arrays: Arrays) -> None:
    labels = arrays["train"][1].copy()
    labels[5] = 10
    write_idx(src / "train-labels-idx1-ubyte.gz", labels, LABELS)


def _image_size(src: Path, arrays: Arrays) -> None:
    write_idx(src / "t10k-images-idx3-ubyte.gz", np.zeros((N_TEST, 27, 28), np.uint8), IMAGES)


def _bad_crc(src: Path, arrays: Arrays) -> None:
    path = src / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 of the uncompressed data, in the gzip trailer
    path.write_bytes(bytes(data))


def _truncated_gzip(src: Path, arrays: Arrays) -> None:
    path = src / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])


def _empty_split(src: Path, arrays: Arrays) -> None:
    write_idx(src / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8), IMAGES)
    write_idx(src / "t10k-labels-idx1-ubyte.gz", np.zeros(0, np.uint8), LABELS)


def _empty_file(src: Path, arrays: Arrays) -> None:
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    (src / "t10k-labels-idx1-ubyte").write_bytes(b"")


@pytest.mark.parametrize(
    ("breakage", "fragments"),
    [
        (_remove_test_labels, ("missing t10k-labels-idx1-ubyte.gz",)),
        (_truncate_images, ("train-images-idx3-ubyte.gz: truncated", "need 23520", "23420")),
        (_trailing_bytes, ("t10k-images-idx3-ubyte.gz: 3 trailing bytes",)),
        (_wrong_magic, ("train-labels-idx1-ubyte.gz: wrong magic number 0x00000803",)),
        (_count_mismatch, ("train-images-idx3-ubyte.gz: 30 images but", "has 29 labels")),
        (_label_ten, ("train-labels-idx1-ubyte.gz: label 10 at index 5 is out of range 0..9",)),
        (_image_size, ("t10k-images-idx3-ubyte.gz: images are 27x28, expected 28x28",)),
        (_bad_crc, ("train-images-idx3-ubyte.gz: corrupt gzip data", "CRC")),
        (_truncated_gzip, ("train-images-idx3-ubyte.gz: corrupt gzip data",)),
        (_empty_split, ("t10k-images-idx3-ubyte.gz: holds no images",)),
        (_empty_file, ("t10k-labels-idx1-ubyte: too short for an IDX header",)),
    ],
    ids=lambda v: getattr(v, "__name__", "")[1:] or None,
)
def test_broken_idx_source_is_refused(
    tmp_path: Path,
    idx_dir: Path,
    arrays: Arrays,
    breakage: Callable[[Path, Arrays], None],
    fragments: tuple[str, ...],
) -> None:
    breakage(idx_dir, arrays)
    out = tmp_path / "out"
    with pytest.raises(DtrainError) as excinfo:
        prepare(out, source=idx_dir)
    assert_error(excinfo, *fragments)
    assert not out.exists()


# --- URL sources ------------------------------------------------------------------------------


@pytest.fixture
def http_base(idx_dir: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(idx_dir), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_url_source_downloads_the_four_files(http_base: str, arrays: Arrays) -> None:
    assert_same(load_source(http_base + "/"), arrays)


def test_url_source_http_error(http_base: str) -> None:
    with pytest.raises(DtrainError) as excinfo:
        load_source(http_base + "/missing")
    assert_error(excinfo, "/missing/train-images-idx3-ubyte.gz", "HTTP 404")


def test_url_source_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(DtrainError) as excinfo:
            load_source(f"http://127.0.0.1:{port}/mnist")
    assert_error(excinfo, "download failed")


# --- the output directory ---------------------------------------------------------------------


def test_shard_counts_are_validated(tmp_path: Path, idx_dir: Path) -> None:
    with pytest.raises(DtrainError) as excinfo:
        prepare(tmp_path / "out", source=idx_dir, num_shards=0)
    assert_error(excinfo, "train shards must be an integer >= 1")
    with pytest.raises(DtrainError) as excinfo:
        prepare(tmp_path / "out", source=idx_dir, num_test_shards=13)
    assert_error(excinfo, "13 test shards requested", "only 12 test samples")
    assert not (tmp_path / "out").exists()


def test_already_prepared_needs_force(small_prepared: Path, idx_dir: Path) -> None:
    with pytest.raises(DtrainError) as excinfo:
        prepare(small_prepared, source=idx_dir)
    assert_error(excinfo, "already prepared, use --force")
    manifest = prepare(small_prepared, source=idx_dir, num_shards=1, num_test_shards=1, force=True)
    assert read_manifest(small_prepared) == manifest
    assert sorted(p.name for p in small_prepared.iterdir()) == [
        "manifest.json",
        "test-00000-of-00001.arrow",
        "train-00000-of-00001.arrow",
    ]
    assert sorted(p.name for p in small_prepared.parent.iterdir()) == ["prepared", "src"]


def test_shard_files_without_a_manifest_are_never_replaced(tmp_path: Path, idx_dir: Path) -> None:
    # A prepare installs its folder whole, manifest included, so this is not dtrain's work:
    # --force must not delete it either, and the message must not suggest it.
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-00000-of-00008.arrow").write_bytes(b"half")
    for force in (False, True):
        with pytest.raises(DtrainError) as excinfo:
            prepare(out, source=idx_dir, force=force)
        assert_error(excinfo, "not a dtrain dataset", "would be lost")
        assert "--force" not in str(excinfo.value)
    assert (out / "train-00000-of-00008.arrow").read_bytes() == b"half"


def test_empty_existing_directory_is_filled(tmp_path: Path, idx_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    prepare(out, source=idx_dir, num_shards=2)
    assert read_manifest(out)["splits"]["train"]["num_samples"] == N_TRAIN


def test_out_dir_that_is_a_file(tmp_path: Path, idx_dir: Path) -> None:
    out = tmp_path / "out"
    out.write_text("mine")
    with pytest.raises(DtrainError) as excinfo:
        prepare(out, source=idx_dir, force=True)
    assert_error(excinfo, "exists and is not a directory")
    assert out.read_text() == "mine"


def _fail_after_first_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    real = prepare_module._write_shard
    calls = []

    def flaky(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        if calls:
            raise RuntimeError("disk on fire")
        calls.append(path)
        real(path, images, labels)

    monkeypatch.setattr(prepare_module, "_write_shard", flaky)


def test_failure_mid_write_leaves_no_output(
    tmp_path: Path, idx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_after_first_shard(monkeypatch)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare(tmp_path / "out", source=idx_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_failure_mid_write_keeps_the_old_directory(
    small_prepared: Path, idx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.read_bytes() for p in small_prepared.iterdir()}
    _fail_after_first_shard(monkeypatch)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare(small_prepared, source=idx_dir, num_shards=1, force=True)
    assert {p.name: p.read_bytes() for p in small_prepared.iterdir()} == before
    assert sorted(p.name for p in small_prepared.parent.iterdir()) == ["prepared", "src"]


def test_disk_errors_become_dtrain_errors(
    tmp_path: Path, idx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prepare_module, "_write_shard", full)
    with pytest.raises(DtrainError) as excinfo:
        prepare(tmp_path / "out", source=idx_dir)
    assert_error(excinfo, "cannot write prepared data", "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# --- manifests and verification ---------------------------------------------------------------


def _edit_manifest(data_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = data_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_read_manifest_missing_dir_or_manifest(tmp_path: Path) -> None:
    with pytest.raises(DtrainError) as excinfo:
        read_manifest(tmp_path / "none")
    assert_error(excinfo, "does not exist")
    with pytest.raises(DtrainError) as excinfo:
        read_manifest(tmp_path)
    assert_error(excinfo, "not prepared: run `dtrain data prepare`")


def test_read_manifest_bad_json(small_prepared: Path) -> None:
    (small_prepared / "manifest.json").write_text("{not json")
    with pytest.raises(DtrainError) as excinfo:
        read_manifest(small_prepared)
    assert_error(excinfo, "manifest.json: unreadable manifest")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: m.update(format="something-else"), "format 'something-else' is not"),
        (lambda m: m.update(version=2), "manifest version 2 is not supported"),
        (lambda m: m["splits"].pop("test"), "no split 'test'"),
        (lambda m: m["splits"]["train"]["shards"][1].update(offset=11), "offset 11 should be 10"),
        (lambda m: m["splits"]["train"].update(num_samples=31), "num_samples is 31"),
        (lambda m: m["splits"]["test"]["shards"][0].update(file="../x"), "not a plain file name"),
        (lambda m: m["splits"]["test"]["shards"][0].pop("sha256"), "lacks an integer bytes"),
    ],
)
def test_read_manifest_rejects_inconsistent_manifests(
    small_prepared: Path, change: Callable[[dict[str, Any]], Any], fragment: str
) -> None:
    _edit_manifest(small_prepared, change)
    with pytest.raises(DtrainError) as excinfo:
        read_manifest(small_prepared)
    assert_error(excinfo, fragment)


def test_unusable_manifest_blocks_prepare_without_force(
    small_prepared: Path, idx_dir: Path
) -> None:
    _edit_manifest(small_prepared, lambda m: m.update(version=99))
    with pytest.raises(DtrainError) as excinfo:
        prepare(small_prepared, source=idx_dir)
    assert_error(excinfo, "holds an unusable manifest", "--force")


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (lambda p: p.unlink(), "missing"),
        (lambda p: p.write_bytes(p.read_bytes() + b"x"), "the manifest says"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\xff"), "sha256 does not match"),
    ],
)
def test_verify_names_the_damaged_shard(
    small_prepared: Path, damage: Callable[[Path], Any], fragment: str
) -> None:
    manifest = read_manifest(small_prepared)
    damage(small_prepared / "train-00001-of-00003.arrow")
    with pytest.raises(DtrainError) as excinfo:
        verify(small_prepared, manifest)
    assert_error(excinfo, "train-00001-of-00003.arrow", fragment)


# --- reading shards ---------------------------------------------------------------------------


def _write_table(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _shard_table(n: int, labels: list[int] | None = None) -> pa.Table:
    images = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * 784, np.uint8)), 784)
    label_array = pa.array(np.array(labels if labels is not None else [0] * n, np.uint8))
    return pa.Table.from_arrays([images, label_array], schema=SCHEMA)


def _read_whole(data_dir: Path, split: str = "train") -> None:
    manifest = read_manifest(data_dir)
    read_rows(data_dir, manifest, split, 0, manifest["splits"][split]["num_samples"])


def test_shard_with_the_wrong_schema(small_prepared: Path) -> None:
    table = pa.table({"image": pa.array([[0] * 784] * 10, pa.list_(pa.int64())), "label": [0] * 10})
    _write_table(small_prepared / "train-00000-of-00003.arrow", table)
    with pytest.raises(ShardError) as excinfo:
        _read_whole(small_prepared)
    assert_error(excinfo, "train-00000-of-00003.arrow: schema (image: list<item: int64>")


def test_empty_shard(small_prepared: Path) -> None:
    _write_table(small_prepared / "test-00001-of-00002.arrow", _shard_table(0))
    with pytest.raises(ShardError) as excinfo:
        _read_whole(small_prepared, "test")
    assert_error(excinfo, "test-00001-of-00002.arrow: shard is empty (0 rows)")


def test_shard_row_count_disagrees_with_manifest(small_prepared: Path) -> None:
    _write_table(small_prepared / "train-00002-of-00003.arrow", _shard_table(4))
    with pytest.raises(ShardError) as excinfo:
        _read_whole(small_prepared)
    assert_error(excinfo, "train-00002-of-00003.arrow: shard has 4 rows, the manifest says 10")


def test_shard_label_out_of_range(small_prepared: Path) -> None:
    _write_table(small_prepared / "train-00001-of-00003.arrow", _shard_table(10, [1] * 9 + [12]))
    with pytest.raises(ShardError) as excinfo:
        _read_whole(small_prepared)
    assert_error(excinfo, "train-00001-of-00003.arrow: label 12 at row 9 is out of range 0..9")


def test_shard_that_is_not_arrow(small_prepared: Path) -> None:
    (small_prepared / "train-00000-of-00003.arrow").write_bytes(b"garbage" * 100)
    with pytest.raises(ShardError) as excinfo:
        _read_whole(small_prepared)
    assert_error(excinfo, "train-00000-of-00003.arrow: not a readable Arrow IPC file")


def test_missing_shard(small_prepared: Path) -> None:
    (small_prepared / "test-00000-of-00002.arrow").unlink()
    with pytest.raises(ShardError) as excinfo:
        _read_whole(small_prepared, "test")
    assert_error(excinfo, "test-00000-of-00002.arrow: shard file is missing")


def test_read_rows_checks_its_arguments(small_prepared: Path) -> None:
    manifest = read_manifest(small_prepared)
    for start, stop in [(-1, 3), (5, 4), (0, N_TRAIN + 1)]:
        with pytest.raises(ShardError, match=r"outside \[0, 30\)"):
            read_rows(small_prepared, manifest, "train", start, stop)
    with pytest.raises(ShardError, match="no split 'validation'"):
        read_rows(small_prepared, manifest, "validation", 0, 1)


def test_read_rows_sees_a_re_prepared_directory(
    tmp_path: Path, idx_dir: Path, arrays: Arrays
) -> None:
    out = tmp_path / "out"
    manifest = prepare(out, source=idx_dir, num_shards=1)
    first, _ = read_rows(out, manifest, "train", 0, 1)
    np.testing.assert_array_equal(first[0], arrays["train"][0][0].reshape(784))
    flipped = {split: (255 - x, y) for split, (x, y) in arrays.items()}
    source = write_idx_source(tmp_path / "src2", flipped)
    manifest = prepare(out, source=source, num_shards=1, force=True)
    again, _ = read_rows(out, manifest, "train", 0, 1)
    np.testing.assert_array_equal(again[0], 255 - arrays["train"][0][0].reshape(784))


def test_to_float_scales_to_unit_interval() -> None:
    images = np.array([[0, 51, 255]], np.uint8)
    out = to_float(images)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]])


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DTRAIN_DATA_DIR", str(tmp_path / "d"))
    assert default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("DTRAIN_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / ".cache" / "dtrain" / "mnist"
