"""Data of any fixed size: IDX of any dims, .npz feature rows, Parquet and Arrow tables, any K.

Each source is prepared for real and read back through the workers' reader, so the manifest's
format, the shards' schema and the arrays a worker trains on are checked together.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from dtrain.service.data import tables
from dtrain.service.data.dataset import describe, prepare, read_manifest
from dtrain.service.data.manifest import image_shape
from dtrain.service.data.sources import load_source
from dtrain.service.errors import DtrainError
from dtrain.workers.shardformat import MNIST_FORMAT, ShardFormat
from dtrain.workers.shards import ShardError, read_rows, shard_format, to_float


def read_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    manifest = read_manifest(data_dir)
    return read_rows(data_dir, manifest, split, 0, manifest["splits"][split]["num_samples"])


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def idx_dir(directory: Path, shape: tuple[int, ...], num_classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    directory.mkdir()
    arrays = {}
    for split, prefix, n in (("train", "train", 20), ("test", "t10k", 6)):
        images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        labels = np.arange(n) % num_classes
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[split] = images
    return arrays


@pytest.mark.parametrize("shape", [(8, 8), (4, 4, 3)])
def test_idx_images_of_any_dims_keep_their_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    images = idx_dir(tmp_path / "src", shape, num_classes=5)
    manifest = prepare(tmp_path / "out", source=tmp_path / "src", num_shards=3, num_test_shards=1)
    width = int(np.prod(shape))
    assert manifest["image_shape"] == list(shape) and manifest["input_size"] == width
    assert manifest["num_classes"] == 5 and manifest["feature_type"] == "uint8"
    assert manifest["splits"]["train"]["label_histogram"] == [4] * 5
    x, y = read_split(tmp_path / "out", "train")
    np.testing.assert_array_equal(x, images["train"].reshape(20, width))
    np.testing.assert_array_equal(y, np.arange(20) % 5)
    assert "x".join(map(str, shape)) + " uint8 images" in describe(read_manifest(tmp_path / "out"))


def test_npz_feature_rows_are_float32_used_as_given(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x_train, x_test = rng.normal(0, 3, (25, 13)), rng.normal(0, 3, (7, 13))
    src = tmp_path / "features.npz"
    np.savez(
        src, x_train=x_train, y_train=np.arange(25) % 3, x_test=x_test, y_test=np.arange(7) % 3
    )
    manifest = prepare(tmp_path / "out", source=src, num_shards=2, num_test_shards=1)
    assert (manifest["input_size"], manifest["num_classes"]) == (13, 3)
    assert manifest["image_shape"] is None and manifest["feature_type"] == "float32"
    x, _ = read_split(tmp_path / "out", "test")
    assert x.dtype == np.float32
    # No rescaling: what the network sees is the user's values in float32.
    np.testing.assert_array_equal(to_float(x), x_test.astype(np.float32))


def test_uint8_pixels_are_still_scaled_for_the_network() -> None:
    pixels = np.array([[0, 51, 255]], np.uint8)
    np.testing.assert_array_equal(to_float(pixels), np.array([[0, 0.2, 1]], np.float32))


def parquet_tables(directory: Path, feature_type: pa.DataType, **columns: str) -> None:
    directory.mkdir()
    feature, label = columns.get("feature", "features"), columns.get("label", "label")
    for split, n in (("train", 12), ("test", 4)):
        rows = [[(i * 7 + j) % 200 for j in range(5)] for i in range(n)]
        table = pa.table(
            {
                feature: pa.array(rows, type=pa.list_(feature_type)),
                label: pa.array([i % 4 for i in range(n)], pa.int32()),
            }
        )
        pq.write_table(table, directory / f"{split}.parquet")


def test_parquet_lists_with_the_default_columns(tmp_path: Path) -> None:
    parquet_tables(tmp_path / "src", pa.float64())
    manifest = prepare(tmp_path / "out", source=tmp_path / "src", num_shards=2, num_test_shards=1)
    assert (manifest["input_size"], manifest["num_classes"]) == (5, 4)
    assert manifest["feature_type"] == "float32"
    x, y = read_split(tmp_path / "out", "train")
    assert x[3].tolist() == [21, 22, 23, 24, 25] and y.tolist() == [0, 1, 2, 3] * 3


def test_parquet_uint8_lists_are_pixels_and_columns_can_be_named(tmp_path: Path) -> None:
    parquet_tables(tmp_path / "src", pa.uint8(), feature="img", label="y")
    with pytest.raises(DtrainError, match="no label column 'label'"):
        load_source(tmp_path / "src")
    data = load_source(tmp_path / "src", columns=tables.Columns(feature="img", label="y"))
    assert data["train"][0].dtype == np.uint8 and data["train"][0].shape == (12, 5)


def test_arrow_file_and_stream_and_feather_tables_load(tmp_path: Path) -> None:
    table = pa.table(
        {
            "features": pa.array([[1.5, 2.5]] * 6, pa.list_(pa.float32(), 2)),
            "label": pa.array([0, 1] * 3, pa.int64()),
        }
    )
    src = tmp_path / "src"
    src.mkdir()
    with (
        pa.OSFile(str(src / "train.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as writer,
    ):
        writer.write_table(table)
    feather.write_feather(table, src / "test.feather")
    data = load_source(src)
    for split in ("train", "test"):
        np.testing.assert_array_equal(data[split][0], np.full((6, 2), [1.5, 2.5], np.float32))


def test_tables_refuse_ambiguity_and_a_lone_split(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"a": [[1]], "b": [[2]], "label": [0]}), src / "train.parquet")
    with pytest.raises(DtrainError, match=r"holds train\.parquet but no test table"):
        load_source(src)
    pq.write_table(pa.table({"a": [[1]], "b": [[2]], "label": [1]}), src / "test.parquet")
    with pytest.raises(DtrainError, match="cannot tell the feature column among 'a', 'b'"):
        load_source(src)
    assert load_source(src, columns=tables.Columns(feature="b"))["test"][0].tolist() == [[2]]


def test_column_options_on_a_source_without_tables_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "x.npz"
    np.savez(src, x_train=np.zeros((2, 3)), y_train=[0, 1], x_test=np.zeros((2, 3)), y_test=[0, 1])
    with pytest.raises(DtrainError, match="apply to a directory of Parquet or Arrow tables only"):
        load_source(src, columns=tables.Columns(label="y"))


def test_a_stated_class_count_above_the_labels_is_kept(tmp_path: Path) -> None:
    idx_dir(tmp_path / "src", (3, 3), num_classes=4)
    manifest = prepare(tmp_path / "out", source=tmp_path / "src", num_classes=12)
    assert manifest["num_classes"] == 12
    assert manifest["splits"]["test"]["label_histogram"] == [2, 2, 1, 1] + [0] * 8


def test_more_than_256_classes_store_uint16_labels(tmp_path: Path) -> None:
    src = tmp_path / "many.npz"
    labels = np.arange(300)
    np.savez(
        src, x_train=np.ones((300, 2)), y_train=labels, x_test=np.ones((2, 2)), y_test=[0, 299]
    )
    manifest = prepare(tmp_path / "out", source=src, num_shards=2, num_test_shards=1)
    assert manifest["num_classes"] == 300
    assert shard_format(manifest).schema.field("label").type == pa.uint16()
    _, y = read_split(tmp_path / "out", "train")
    assert y.dtype == np.uint16 and y.tolist() == labels.tolist()


def test_a_manifest_from_before_the_format_fields_reads_as_mnist(tiny_copy: Path) -> None:
    path = tiny_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    assert shard_format(manifest) == MNIST_FORMAT
    for key in ("input_size", "feature_type", "feature_range"):
        del manifest[key]
    path.write_text(json.dumps(manifest))
    assert shard_format(read_manifest(tiny_copy)) == MNIST_FORMAT
    assert read_split(tiny_copy, "train")[0].shape == (30, 784)


def test_shards_that_disagree_with_the_manifest_format_are_refused(tiny_copy: Path) -> None:
    path = tiny_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["input_size"], manifest["image_shape"] = 64, [8, 8]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="schema"):
        read_split(tiny_copy, "train")
    manifest["num_classes"] = 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(DtrainError, match=r"num_classes 1 is not an integer in 2\.\.65536"):
        read_manifest(tiny_copy)


def test_shard_format_schema_of_mnist_is_the_old_schema() -> None:
    # The bytes of MNIST's shards depend on this schema; it must not move.
    assert ShardFormat() == MNIST_FORMAT
    assert str(MNIST_FORMAT.schema) == (
        "image: fixed_size_list<item: uint8>[784] not null\n"
        "  child 0, item: uint8\n"
        "label: uint8 not null"
    )


def test_an_image_shape_that_does_not_make_the_input_size_is_refused(tiny_copy: Path) -> None:
    path = tiny_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    assert image_shape(read_manifest(tiny_copy)) == (28, 28)
    manifest["image_shape"] = [28, 27]
    path.write_text(json.dumps(manifest))
    with pytest.raises(DtrainError, match=r"image_shape \[28, 27\] is not a list of 2 or more"):
        read_manifest(tiny_copy)
