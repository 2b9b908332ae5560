"""The catalogue of bad inputs: each gets a one-line error, a non-zero exit, no traceback, and
leaves every file that existed before exactly as it was.

docs/bad-inputs.md lists the same cases, row for row; a test below keeps the two in step.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.service.data import dataset
from dtrain.service.train import checkpoint
from dtrain.service.train.config import TrainConfig
from dtrain.workers.model import ModelSpec, init_params

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"
IMAGES, LABELS = 0x00000803, 0x00000801


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return (
        magic.to_bytes(4, "big")
        + b"".join(d.to_bytes(4, "big") for d in array.shape)
        + (array.tobytes())
    )


def idx_source(ws: Path, **override: bytes) -> Path:
    """A valid 30/12-image IDX folder; ``override`` replaces a file's bytes by its stem."""
    rng = np.random.default_rng(0)
    src = ws / "src"
    src.mkdir()
    files = {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (30, 28, 28)), IMAGES),
        "train-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, 30), LABELS),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (12, 28, 28)), IMAGES),
        "t10k-labels-idx1-ubyte": idx_bytes(rng.integers(0, 10, 12), LABELS),
    }
    files.update(override)
    for stem, data in files.items():
        (src / f"{stem}.gz").write_bytes(gzip.compress(data) if data[:2] != b"\x1f\x8b" else data)
    return src


def damaged_gzip() -> bytes:
    """A real gzip of random images with one byte of the deflate stream flipped."""
    images = np.random.default_rng(1).integers(0, 256, (30, 28, 28))
    data = bytearray(gzip.compress(idx_bytes(images, IMAGES)))
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def prepare_args(src: Path, ws: Path) -> list[str]:
    return ["data", "prepare", "--source", str(src), "--out", str(ws / "out")]


def prepared(ws: Path) -> Path:
    out = ws / "data"
    dataset.prepare(out, source=idx_source(ws), num_shards=2, num_test_shards=1)
    return out


def train_args(data: Path, ws: Path, *extra: str) -> list[str]:
    return ["train", "--data-dir", str(data), "--run-dir", str(ws / "run"), *extra]


def rewrite_shard(data: Path, name: str, table: pa.Table, fix_manifest: bool) -> None:
    with pa.OSFile(str(data / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    if fix_manifest:  # a consistent manifest, so the schema check itself must catch it
        manifest = json.loads((data / "manifest.json").read_text())
        for split in manifest["splits"].values():
            for shard in split["shards"]:
                if shard["file"] == name:
                    raw = (data / name).read_bytes()
                    shard["bytes"], shard["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
                    shard["num_rows"] = table.num_rows
        (data / "manifest.json").write_text(json.dumps(manifest))


def shard_name(data: Path, split: str = "train") -> str:
    return dataset.read_manifest(data)["splits"][split]["shards"][0]["file"]


def wrong_schema(ws: Path) -> list[str]:
    data = prepared(ws)
    name = shard_name(data)
    rows = pa.table({"pixels": pa.array([b"x"] * 15), "label": pa.array([1] * 15, pa.int64())})
    rewrite_shard(data, name, rows, fix_manifest=True)
    return train_args(data, ws)


def tampered_shard(ws: Path) -> list[str]:
    data = prepared(ws)
    path = data / shard_name(data)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return train_args(data, ws)


def empty_shard(ws: Path) -> list[str]:
    data = prepared(ws)
    empty = pa.table(
        {
            "image": pa.array([], pa.list_(pa.uint8(), 784)),
            "label": pa.array([], pa.uint8()),
        },
        schema=dataset.SCHEMA,
    )
    rewrite_shard(data, shard_name(data), empty, fix_manifest=True)
    return train_args(data, ws)


def npz_source(ws: Path, **arrays: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    base = {
        "x_train": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 30, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 12, dtype=np.uint8),
    }
    base.update(arrays)
    path = ws / "mnist.npz"
    np.savez(path, **base)
    return path


def feature_table(rows: list[list[float]], labels: list[int]) -> pa.Table:
    return pa.table(
        {
            "features": pa.array(rows, type=pa.list_(pa.float32())),
            "label": pa.array(labels, type=pa.int64()),
        }
    )


def table_source(ws: Path, **splits: pa.Table) -> Path:
    """A directory of valid train/test Parquet tables; ``splits`` replaces a split's table."""
    import pyarrow.parquet as pq

    rows = [[0.0, 1.0], [1.0, 0.0]]
    base = {"train": feature_table(rows * 15, [0, 1] * 15), "test": feature_table(rows, [0, 1])}
    base.update(splits)
    src = ws / "tables"
    src.mkdir()
    for split, table in base.items():
        pq.write_table(table, src / f"{split}.parquet")
    return src


SPEC = ModelSpec(hidden_sizes=(8,))


def saved_checkpoint(ws: Path, **header: object) -> Path:
    path = ws / "ckpt.npz"
    checkpoint.save(path, checkpoint.Checkpoint(spec=SPEC, params=init_params(SPEC, 0)))
    if header:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        h = json.loads(arrays["header"].tobytes())
        h.update(header)
        arrays["header"] = np.frombuffer(json.dumps(h).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path.write_bytes(buf.getvalue())
    return path


def truncated_checkpoint(ws: Path) -> list[str]:
    path = saved_checkpoint(ws)
    path.write_bytes(path.read_bytes()[:-100])
    return ["evaluate", str(path)]


def pickled_checkpoint(ws: Path) -> list[str]:
    path = ws / "ckpt.npz"
    header = json.dumps(
        {
            "format": "dtrain-checkpoint",
            "version": 1,
            "input_size": 784,
            "hidden_sizes": [8],
            "num_classes": 10,
        }
    ).encode()
    np.savez(path, header=np.frombuffer(header, np.uint8), params=np.array([{}], dtype=object))
    return ["evaluate", str(path)]


def job_file(ws: Path, text: str) -> list[str]:
    path = ws / "job.toml"
    path.write_text(text)
    return ["train", "--config", str(path)]


HELD: list[socket.socket] = []  # listening sockets a case holds until it has run


def port_in_use(ws: Path) -> list[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    HELD.append(sock)
    return train_args(ws / "data", ws, "--metrics-port", str(sock.getsockname()[1]))


def run_on_data(ws: Path, data: Path, spec: ModelSpec = SPEC) -> Path:
    """A run directory (checkpoint.npz, config.json naming ``data``); its checkpoint."""
    run = ws / "old-run"
    path = run / "checkpoint.npz"
    checkpoint.save(path, checkpoint.Checkpoint(spec=spec, params=init_params(spec, 0)))
    config = TrainConfig(data_dir=data, run_dir=run, model=spec)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    return path


def truncated_png(ws: Path) -> list[str]:
    from PIL import Image

    path = ws / "digit.png"
    # Random pixels: the cut falls inside the image data (a blank image fits in 60 bytes).
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    return ["predict", str(saved_checkpoint(ws)), str(path)]


def silent_port(ws: Path) -> list[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    HELD.append(sock)
    return ["jobs", "list", "--address", f"127.0.0.1:{sock.getsockname()[1]}"]


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    what: str  # the docs table's description of the input
    build: Callable[[Path], list[str]]
    code: int  # expected exit status
    says: str  # a fragment of the one-line error
    process: bool = False  # run as a real `dtrain` process (needs no shared Ray session)


CASES = [
    Case(
        "batch-size-0",
        "cli",
        "`--batch-size 0`",
        lambda ws: ["train", "--batch-size", "0"],
        2,
        "Invalid value for '--batch-size'",
    ),
    Case(
        "negative-lr",
        "cli",
        "`--learning-rate -0.1`",
        lambda ws: ["train", "--learning-rate", "-0.1"],
        2,
        "'--learning-rate' / '--lr': -0.1 is not in the range x>0",
    ),
    Case(
        "momentum-1.5",
        "cli",
        "`--momentum 1.5`",
        lambda ws: ["train", "--momentum", "1.5"],
        2,
        "'--momentum': 1.5 is not in the range 0<=x<1",
    ),
    Case(
        "unknown-optimizer",
        "cli",
        "`--optimizer adam`",
        lambda ws: ["train", "--optimizer", "adam"],
        2,
        "'adam' is not one of",
    ),
    Case(
        "bad-hidden-sizes",
        "cli",
        "`--hidden-sizes 512,x`",
        lambda ws: ["train", "--hidden-sizes", "512,x"],
        2,
        "not a comma-separated list",
    ),
    Case(
        "batch-below-workers",
        "cli",
        "`--num-workers 8 --batch-size 4`",
        lambda ws: ["train", "--num-workers", "8", "--batch-size", "4"],
        2,
        "batch_size (4) must be >= num_workers (8)",
    ),
    Case(
        "workers-above-partitions",
        "cli",
        "`--num-workers 65` (at most 64: the parts of a batch)",
        lambda ws: ["train", "--num-workers", "65"],
        2,
        "'65': each count must be in 1..64",
    ),
    Case(
        "workers-min-above-max",
        "cli",
        "`--num-workers 3:2`",
        lambda ws: ["train", "--num-workers", "3:2"],
        2,
        "'3:2': MIN must be <= MAX",
    ),
    Case(
        "workers-not-a-range",
        "cli",
        "`--num-workers 1:x`",
        lambda ws: ["train", "--num-workers", "1:x"],
        2,
        "'1:x' is not a count N or a range MIN:MAX",
    ),
    Case(
        "more-workers-than-samples",
        "cli",
        "`--num-workers 40` on a 30-sample dataset",
        lambda ws: train_args(prepared(ws), ws, "--num-workers", "40", "--batch-size", "64"),
        1,
        "num_workers (40) is more than the 30 training samples",
    ),
    Case(
        "job-file-missing",
        "job file",
        "`--config` names a file that does not exist",
        lambda ws: ["train", "--config", str(ws / "nope.toml")],
        2,
        "cannot read",
    ),
    Case(
        "job-file-not-toml",
        "job file",
        "a job file that is not TOML",
        lambda ws: job_file(ws, "epochs = = 3\n"),
        2,
        "is not valid TOML",
    ),
    Case(
        "job-file-unknown-key",
        "job file",
        "a job file with an unknown key",
        lambda ws: job_file(ws, "[train]\nepochz = 3\n"),
        2,
        "unknown option 'epochz'",
    ),
    Case(
        "job-file-wrong-type",
        "job file",
        'a job file with `epochs = "five"`',
        lambda ws: job_file(ws, '[train]\nepochs = "five"\n'),
        2,
        "'five' is not a valid",
    ),
    Case(
        "source-missing",
        "dataset",
        "`--source` folder that does not exist",
        lambda ws: prepare_args(ws / "nowhere", ws),
        1,
        "does not exist",
    ),
    Case(
        "corrupt-gzip",
        "dataset",
        "a `.gz` file with damaged compressed bytes",
        lambda ws: prepare_args(idx_source(ws, **{"train-images-idx3-ubyte": damaged_gzip()}), ws),
        1,
        "corrupt gzip",
    ),
    Case(
        "truncated-idx",
        "dataset",
        "an IDX images file cut short",
        lambda ws: prepare_args(
            idx_source(
                ws, **{"train-images-idx3-ubyte": idx_bytes(np.zeros((30, 28, 28)), IMAGES)[:-100]}
            ),
            ws,
        ),
        1,
        "truncated",
    ),
    Case(
        "wrong-magic",
        "dataset",
        "an IDX file with the labels' magic number on images",
        lambda ws: prepare_args(
            idx_source(
                ws, **{"train-images-idx3-ubyte": idx_bytes(np.zeros((30, 28, 28)), LABELS)}
            ),
            ws,
        ),
        1,
        "wrong magic number",
    ),
    Case(
        "count-mismatch",
        "dataset",
        "29 labels for 30 images",
        lambda ws: prepare_args(
            idx_source(ws, **{"train-labels-idx1-ubyte": idx_bytes(np.zeros(29), LABELS)}), ws
        ),
        1,
        "has 29 labels",
    ),
    Case(
        "label-10",
        "dataset",
        "a label of 10 with `--num-classes 10`",
        lambda ws: [
            *prepare_args(
                idx_source(ws, **{"train-labels-idx1-ubyte": idx_bytes(np.full(30, 10), LABELS)}),
                ws,
            ),
            "--num-classes",
            "10",
        ],
        1,
        "label 10 at index 0 is out of range 0..9 for 10 classes",
    ),
    Case(
        "nan-pixels",
        "dataset",
        "an `.npz` whose images are floats with NaN",
        lambda ws: prepare_args(npz_source(ws, x_train=np.full((30, 28, 28), np.nan)), ws),
        1,
        "row 0 holds NaN or infinite values",
    ),
    Case(
        "one-class",
        "dataset",
        "an `.npz` whose labels are all 0",
        lambda ws: prepare_args(
            npz_source(ws, y_train=np.zeros(30, np.uint8), y_test=np.zeros(12, np.uint8)), ws
        ),
        1,
        "a classifier needs at least 2 classes",
    ),
    Case(
        "split-sizes-differ",
        "dataset",
        "an `.npz` of 8x8 train and 28x28 test images",
        lambda ws: prepare_args(npz_source(ws, x_train=np.zeros((30, 8, 8), np.uint8)), ws),
        1,
        "train rows are 8x8 but test rows are 28x28",
    ),
    Case(
        "table-ragged",
        "dataset",
        "a Parquet feature column whose rows differ in length",
        lambda ws: prepare_args(
            table_source(ws, train=feature_table([[1.0, 2.0]] * 5 + [[1.0]], [0, 1] * 3)), ws
        ),
        1,
        "ragged rows: row 0 has 2 values, row 5 has 1",
    ),
    Case(
        "table-strings",
        "dataset",
        "a Parquet feature column of strings",
        lambda ws: prepare_args(
            table_source(ws, train=pa.table({"features": ["a", "b"], "label": [0, 1]})), ws
        ),
        1,
        "holds string, expected a list of numbers per row",
    ),
    Case(
        "table-no-label",
        "dataset",
        "Parquet tables without a `label` column",
        lambda ws: prepare_args(
            table_source(
                ws,
                train=pa.table({"x": [[1.0]] * 4, "target": [0, 1, 0, 1]}),
                test=pa.table({"x": [[1.0]] * 2, "target": [0, 1]}),
            ),
            ws,
        ),
        1,
        "no label column 'label' (columns: 'x', 'target'); name it with --label-column",
    ),
    Case(
        "table-empty-split",
        "dataset",
        "an empty `test.parquet`",
        lambda ws: prepare_args(table_source(ws, test=feature_table([], [])), ws),
        1,
        "test.parquet: holds no rows",
    ),
    Case(
        "table-float-labels",
        "dataset",
        "a Parquet label column of floats",
        lambda ws: prepare_args(
            table_source(ws, train=pa.table({"features": [[0.5]] * 2, "label": [0.0, 1.0]})),
            ws,
        ),
        1,
        "holds double, expected integer labels",
    ),
    Case(
        "npz-pickle",
        "dataset",
        "an `.npz` holding a pickled object array",
        lambda ws: prepare_args(npz_source(ws, y_train=np.array([{}] * 30, dtype=object)), ws),
        1,
        "pickle",
    ),
    Case(
        "arrow-wrong-schema",
        "dataset",
        "an Arrow shard of another schema (manifest updated)",
        wrong_schema,
        1,
        "schema",
    ),
    Case(
        "arrow-tampered",
        "dataset",
        "an Arrow shard with one byte flipped",
        tampered_shard,
        1,
        "sha256 does not match the manifest",
    ),
    Case(
        "arrow-empty-shard",
        "dataset",
        "an Arrow shard with zero rows (manifest updated)",
        empty_shard,
        1,
        "num_rows 0 is not a positive count",
    ),
    Case(
        "checkpoint-missing",
        "checkpoint",
        "`evaluate` of a file that does not exist",
        lambda ws: ["evaluate", str(ws / "none.npz")],
        1,
        "does not exist",
    ),
    Case(
        "checkpoint-truncated",
        "checkpoint",
        "a checkpoint cut short",
        truncated_checkpoint,
        1,
        "not a readable .npz",
    ),
    Case(
        "checkpoint-wrong-version",
        "checkpoint",
        "a checkpoint of format version 99",
        lambda ws: ["evaluate", str(saved_checkpoint(ws, version=99))],
        1,
        "version 99",
    ),
    Case(
        "checkpoint-pickle",
        "checkpoint",
        "a checkpoint whose params are a pickled object",
        pickled_checkpoint,
        1,
        "pickled objects, refused",
    ),
    Case(
        "address-unreachable",
        "cluster",
        "`--address 127.0.0.1:1` (nothing listening)",
        lambda ws: train_args(prepared(ws), ws, "--address", "127.0.0.1:1"),
        1,
        "cannot reach the Ray cluster at 127.0.0.1:1",
        process=True,
    ),
    Case(
        "metrics-port-in-use",
        "cluster",
        "`--metrics-port` on a port another process listens on",
        port_in_use,
        1,
        "is in use",
    ),
    Case(
        "address-malformed",
        "cluster",
        "`--address nonsense`",
        lambda ws: train_args(prepared(ws), ws, "--address", "nonsense"),
        1,
        "bad Ray address",
        process=True,
    ),
    Case(
        "evaluate-run-data-missing",
        "checkpoint",
        "`evaluate` of a checkpoint whose run's data dir is gone",
        lambda ws: ["evaluate", str(run_on_data(ws, ws / "gone"))],
        1,
        "--data-dir names another",
    ),
    Case(
        "evaluate-input-size",
        "checkpoint",
        "`evaluate` of an 8x8 model whose run names 28x28 data",
        lambda ws: ["evaluate", str(run_on_data(ws, prepared(ws), ModelSpec(input_size=64)))],
        1,
        "takes 64 inputs per sample",
    ),
    Case(
        "predict-truncated-png",
        "checkpoint",
        "`predict` of a PNG cut short",
        truncated_png,
        1,
        "unreadable picture",
    ),
    Case(
        "jobs-address-not-ray",
        "cluster",
        "`jobs list --address HOST:PORT` where nothing Ray answers",
        silent_port,
        1,
        "is not a Ray port",
    ),
    Case(
        "progress-interval-0",
        "cli",
        "`--progress-interval 0`",
        lambda ws: train_args(ws / "data", ws, "--progress-interval", "0"),
        2,
        "'--progress-interval': 0.0 is not in the range x>0",
    ),
    Case(
        "mlflow-unreachable",
        "trackers",
        "`--mlflow http://127.0.0.1:1` (no tracking server there)",
        lambda ws: train_args(ws / "data", ws, "--mlflow", "http://127.0.0.1:1"),
        1,
        "--mlflow http://127.0.0.1:1:",
        process=True,
    ),
]


# --- issue 14: data loss in prepare, numeric extremes, strict job files, damaged containers,
# odd predict inputs, report records, evaluate/predict data directories ---------------------


def users_folder(ws: Path) -> Path:
    folder = ws / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\documentclass{article}\n")
    (folder / "sub" / "notes.txt").write_text("notes\n")
    return folder


def prepare_into(ws: Path, out: Path, *extra: str) -> list[str]:
    src = ws / "src" if (ws / "src").is_dir() else idx_source(ws)
    return ["data", "prepare", "--source", str(src), "--out", str(out), *extra]


def dataset_plus_users_file(ws: Path) -> list[str]:
    data = prepared(ws)
    (data / "notes.txt").write_text("mine\n")
    return ["data", "prepare", "--source", str(ws / "src"), "--out", str(data), "--force"]


def foreign_manifest(ws: Path) -> list[str]:
    folder = ws / "webapp"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"name": "my web app"}')
    return prepare_into(ws, folder, "--force")


def many_samples(ws: Path, n: int) -> Path:
    """A prepared dataset of ``n`` training images (enough for any worker count asked)."""
    rng = np.random.default_rng(0)
    src = ws / "many.npz"
    np.savez(
        src,
        x_train=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, n, dtype=np.uint8),
        x_test=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 4, dtype=np.uint8),
    )
    out = ws / "data"
    dataset.prepare(out, source=src, num_shards=1, num_test_shards=1)
    return out


def too_many_local_workers(ws: Path) -> list[str]:
    n = 4 * (os.cpu_count() or 1) + 1
    data = many_samples(ws, n + 1)
    return train_args(data, ws, "--num-workers", str(n), "--batch-size", str(n))


def patch_zip_headers(path: Path, *, method: int | None = None, flags: int = 0) -> None:
    """Rewrite every member's compression method and/or OR in flag bits, in both headers."""
    raw = bytearray(path.read_bytes())
    for signature, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = raw.find(signature)
        while at != -1:
            if method is not None:
                raw[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
            old = int.from_bytes(raw[at + flag_at : at + flag_at + 2], "little")
            raw[at + flag_at : at + flag_at + 2] = (old | flags).to_bytes(2, "little")
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))


def damaged_zip(ws: Path, **patch: int) -> list[str]:
    path = saved_checkpoint(ws)
    patch_zip_headers(path, **patch)
    return ["evaluate", str(path)]


def bad_crc_checkpoint(ws: Path) -> list[str]:
    path = saved_checkpoint(ws)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the (stored, uncompressed) params member
    path.write_bytes(bytes(raw))
    return ["evaluate", str(path)]


def npy_claiming(shape: tuple[int, ...], data: bytes, dtype: str = "<f4") -> bytes:
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def huge_shape_checkpoint(ws: Path) -> list[str]:
    path = saved_checkpoint(ws)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["params.npy"] = npy_claiming((10**12,), b"\0" * 64)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return ["evaluate", str(path)]


def raw_header_checkpoint(ws: Path, header_json: str) -> list[str]:
    path = saved_checkpoint(ws)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["header"] = np.frombuffer(header_json.encode(), np.uint8)
    np.savez(path, **arrays)
    return ["evaluate", str(path)]


def nonfinite_velocity(ws: Path) -> list[str]:
    path = ws / "ckpt.npz"
    params = init_params(SPEC, 0)
    velocity = np.zeros_like(params)
    velocity[3] = np.inf
    checkpoint.save(path, checkpoint.Checkpoint(spec=SPEC, params=params, velocity=velocity))
    return ["evaluate", str(path)]


def tampered_test_shard(ws: Path, command: str) -> list[str]:
    data = prepared(ws)
    path = data / shard_name(data, "test")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    ckpt = str(saved_checkpoint(ws))
    if command == "evaluate":
        return ["evaluate", ckpt, "--data-dir", str(data)]
    return ["predict", ckpt, "--test-samples", "3", "--data-dir", str(data)]


def resume_with_config(ws: Path, config: object) -> list[str]:
    run = ws / "prev"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    return ["train", "--resume", str(run)]


def bad_hidden_sizes_config(ws: Path) -> list[str]:
    config = {"data_dir": str(ws / "data"), "run_dir": str(ws / "prev")}
    config["model"] = {"hidden_sizes": "abc"}
    return resume_with_config(ws, config)


def predict_array(ws: Path, array: np.ndarray) -> list[str]:
    path = ws / "images.npy"
    np.save(path, array, allow_pickle=True)
    return ["predict", str(saved_checkpoint(ws)), str(path)]


def predict_huge_npy(ws: Path) -> list[str]:
    path = ws / "images.npy"
    path.write_bytes(npy_claiming((10**9, 784), b"\0" * 784, "|u1"))
    return ["predict", str(saved_checkpoint(ws)), str(path)]


STEP = {
    "kind": "step",
    "step": 1,
    "loss": 2.3,
    "accuracy": 0.1,
    "worker_compute_seconds": [0.01],
    "aggregate_seconds": 0.001,
    "update_seconds": 0.001,
    "step_seconds": 0.02,
}


def report_on(ws: Path, *records: object) -> list[str]:
    run = ws / "prev"
    run.mkdir()
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (run / "history.jsonl").write_text("\n".join(lines) + "\n")
    return ["report", str(run)]


def report_bad_summary(ws: Path) -> list[str]:
    args = report_on(ws, STEP)
    (ws / "prev" / "summary.json").write_text('{"epochs": "five"}')
    return args


ISSUE14_CASES = [
    Case(
        "prepare-users-folder",
        "prepare",
        "`data prepare --out` a folder of the user's own files",
        lambda ws: prepare_into(ws, users_folder(ws)),
        1,
        "sub, thesis.tex, which are not a dtrain dataset and would be lost",
    ),
    Case(
        "prepare-force-users-folder",
        "prepare",
        "the same with `--force`: still refused, and --force is not suggested",
        lambda ws: prepare_into(ws, users_folder(ws), "--force"),
        1,
        "choose a new or empty --out directory",
    ),
    Case(
        "prepare-force-dataset-plus-file",
        "prepare",
        "`--force` on a dtrain dataset the user added a file to",
        dataset_plus_users_file,
        1,
        "holds notes.txt, which are not a dtrain dataset",
    ),
    Case(
        "prepare-foreign-manifest",
        "prepare",
        "`--force` on a folder whose manifest.json is another program's",
        foreign_manifest,
        1,
        "holds manifest.json, which are not a dtrain dataset",
    ),
    Case(
        "prepare-already-prepared",
        "prepare",
        "`data prepare` into a finished dataset without `--force`",
        lambda ws: prepare_into(ws, prepared(ws)),
        1,
        "already prepared, use --force to replace it",
    ),
    Case(
        "cpus-per-worker-nan",
        "cli",
        "`--cpus-per-worker nan`",
        lambda ws: ["train", "--cpus-per-worker", "nan"],
        2,
        "'nan' is not a finite number",
    ),
    Case(
        "cpus-per-worker-inf",
        "cli",
        "`--cpus-per-worker inf`",
        lambda ws: ["train", "--cpus-per-worker", "inf"],
        2,
        "Invalid value for '--cpus-per-worker'",
    ),
    Case(
        "cpus-per-worker-negative",
        "cli",
        "`--cpus-per-worker -1`",
        lambda ws: ["train", "--cpus-per-worker", "-1"],
        2,
        "Invalid value for '--cpus-per-worker'",
    ),
    Case(
        "seed-negative",
        "cli",
        "`--seed -1` (seeds are 0..2**32-1)",
        lambda ws: ["train", "--seed", "-1"],
        2,
        "Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295",
    ),
    Case(
        "seed-too-big",
        "cli",
        "`--seed 4294967296`",
        lambda ws: ["train", "--seed", "4294967296"],
        2,
        "Invalid value for '--seed'",
    ),
    Case(
        "bench-seed-negative",
        "cli",
        "`bench --seed -5`",
        lambda ws: ["bench", "--seed", "-5"],
        2,
        "Invalid value for '--seed'",
    ),
    Case(
        "bench-two-node-shared-memory",
        "cli",
        "`bench --two-node --exchange shared-memory`",
        lambda ws: ["bench", "--two-node", "--exchange", "shared-memory"],
        2,
        "two_node: the two-node cluster's step exchange goes through the object store",
    ),
    Case(
        "bench-rounds-0",
        "cli",
        "`bench --rounds 0`",
        lambda ws: ["bench", "--rounds", "0"],
        2,
        "Invalid value for '--rounds': 0 is not in the range x>=1",
    ),
    Case(
        "metrics-grace-inf",
        "cli",
        "`--metrics-grace inf`",
        lambda ws: ["train", "--metrics-grace", "inf"],
        2,
        "Invalid value for '--metrics-grace'",
    ),
    Case(
        "metrics-grace-nan",
        "cli",
        "`--metrics-grace nan`",
        lambda ws: ["train", "--metrics-grace", "nan"],
        2,
        "'nan' is not a finite number",
    ),
    Case(
        "metrics-grace-negative",
        "cli",
        "`--metrics-grace -1`",
        lambda ws: ["train", "--metrics-grace", "-1"],
        2,
        "Invalid value for '--metrics-grace'",
    ),
    Case(
        "step-timeout-nan",
        "cli",
        "`--step-timeout nan`",
        lambda ws: ["train", "--step-timeout", "nan"],
        2,
        "Invalid value for '--step-timeout'",
    ),
    Case(
        "staleness-huge",
        "cli",
        "`--staleness 100000` (at most 32)",
        lambda ws: ["train", "--staleness", "100000"],
        2,
        "Invalid value for '--staleness': 100000 is not in the range 0<=x<=32",
    ),
    Case(
        "learning-rate-inf",
        "cli",
        "`--learning-rate inf`",
        lambda ws: ["train", "--learning-rate", "inf"],
        2,
        "'--learning-rate' / '--lr': 'inf' is not a finite number",
    ),
    Case(
        "momentum-nan",
        "cli",
        "`--momentum nan`",
        lambda ws: ["train", "--momentum", "nan"],
        2,
        "'--momentum': 'nan' is not a finite number",
    ),
    Case(
        "hidden-sizes-huge",
        "cli",
        "`--hidden-sizes 1000000000` (a model too big to hold)",
        lambda ws: ["train", "--hidden-sizes", "1000000000"],
        2,
        "--hidden-sizes: hidden_sizes [1000000000] make",
    ),
    Case(
        "gpu-workers-above-workers",
        "cli",
        "`--device gpu --gpu-workers 5 --num-workers 2`",
        lambda ws: ["train", "--device", "gpu", "--gpu-workers", "5", "--num-workers", "2"],
        2,
        "num_gpu_workers must be between 0 and num_workers (2)",
    ),
    Case(
        "jobs-stop-timeout-nan",
        "cli",
        "`jobs stop --timeout nan`",
        lambda ws: ["jobs", "stop", "raysubmit_x", "--timeout", "nan"],
        2,
        "Invalid value for '--timeout'",
    ),
    Case(
        "batch-larger-than-dataset",
        "cli",
        "`--batch-size 1000000` on a 30-sample dataset",
        lambda ws: train_args(prepared(ws), ws, "--batch-size", "1000000"),
        1,
        "--batch-size 1000000 is more than the 30 training samples",
    ),
    Case(
        "num-workers-beyond-cores",
        "cli",
        "`--num-workers` above 4 per CPU core on a local run",
        too_many_local_workers,
        1,
        "on a local run with",
    ),
    Case(
        "address-bad-port",
        "cluster",
        "`--address 127.0.0.1:99999`",
        lambda ws: train_args(prepared(ws), ws, "--address", "127.0.0.1:99999"),
        1,
        "port 99999 is not in 1..65535",
    ),
    Case(
        "address-port-0",
        "cluster",
        "`--address 127.0.0.1:0`",
        lambda ws: train_args(prepared(ws), ws, "--address", "127.0.0.1:0"),
        1,
        "port 0 is not in 1..65535",
    ),
    Case(
        "job-file-float-epochs",
        "job file",
        "a job file with `epochs = 1.7`",
        lambda ws: job_file(ws, "[train]\nepochs = 1.7\n"),
        2,
        "'epochs' must be an integer, got float 1.7",
    ),
    Case(
        "job-file-bool-epochs",
        "job file",
        "a job file with `epochs = true`",
        lambda ws: job_file(ws, "[train]\nepochs = true\n"),
        2,
        "'epochs' must be an integer, got bool True",
    ),
    Case(
        "job-file-seed-1e400",
        "job file",
        "a job file with `seed = 1e400`",
        lambda ws: job_file(ws, "[train]\nseed = 1e400\n"),
        2,
        "'seed' must be an integer, got float inf",
    ),
    Case(
        "job-file-list-run-dir",
        "job file",
        "a job file with `run-dir = [1, 2]`",
        lambda ws: job_file(ws, "[train]\nrun-dir = [1, 2]\n"),
        2,
        "'run-dir' must be a string, got list [1, 2]",
    ),
    Case(
        "job-file-int-data-dir",
        "job file",
        "a job file with `data-dir = 5`",
        lambda ws: job_file(ws, "[train]\ndata-dir = 5\n"),
        2,
        "'data-dir' must be a string, got int 5",
    ),
    Case(
        "job-file-int-flag",
        "job file",
        "a job file with `eval-every-epoch = 1`",
        lambda ws: job_file(ws, "[train]\neval-every-epoch = 1\n"),
        2,
        "'eval-every-epoch' must be a boolean",
    ),
    Case(
        "job-file-keys-beside-table",
        "job file",
        "a job file with `epochs = 2` above its `[train]` table",
        lambda ws: job_file(ws, "epochs = 2\n[train]\nseed = 1\n"),
        2,
        "keys outside the [train] table: 'epochs'",
    ),
    Case(
        "job-file-grace-inf",
        "job file",
        "a job file with `metrics-grace = inf`",
        lambda ws: job_file(ws, "[train]\nmetrics-grace = inf\n"),
        2,
        "Invalid value for '--metrics-grace'",
    ),
    Case(
        "checkpoint-unknown-compression",
        "checkpoint",
        "a checkpoint whose members claim compression method 99",
        lambda ws: damaged_zip(ws, method=99),
        1,
        "uses unsupported compression method 99",
    ),
    Case(
        "checkpoint-encrypted",
        "checkpoint",
        "a checkpoint whose members are flagged encrypted",
        lambda ws: damaged_zip(ws, flags=0x1),
        1,
        "is encrypted",
    ),
    Case(
        "checkpoint-bad-crc",
        "checkpoint",
        "a checkpoint with one byte of its weights flipped (bad CRC)",
        bad_crc_checkpoint,
        1,
        "Bad CRC-32",
    ),
    Case(
        "checkpoint-huge-shape",
        "checkpoint",
        "a checkpoint whose params header claims 10**12 floats",
        huge_shape_checkpoint,
        1,
        "header claims shape [1000000000000]",
    ),
    Case(
        "checkpoint-header-list",
        "checkpoint",
        "a checkpoint header that is the JSON `[1, 2]`",
        lambda ws: raw_header_checkpoint(ws, "[1, 2]"),
        1,
        "a JSON list, not an object",
    ),
    Case(
        "checkpoint-header-null",
        "checkpoint",
        "a checkpoint header that is the JSON `null`",
        lambda ws: raw_header_checkpoint(ws, "null"),
        1,
        "a JSON NoneType, not an object",
    ),
    Case(
        "checkpoint-input-size-string",
        "checkpoint",
        'a checkpoint header with `"input_size": "784"`',
        lambda ws: ["evaluate", str(saved_checkpoint(ws, input_size="784"))],
        1,
        "header field input_size must be an integer, got '784'",
    ),
    Case(
        "checkpoint-hidden-sizes-string",
        "checkpoint",
        'a checkpoint header with `"hidden_sizes": "8"`',
        lambda ws: ["evaluate", str(saved_checkpoint(ws, hidden_sizes="8"))],
        1,
        "header field hidden_sizes must be a list of integers",
    ),
    Case(
        "checkpoint-nonfinite-velocity",
        "checkpoint",
        "a checkpoint whose velocity holds inf",
        nonfinite_velocity,
        1,
        "holds non-finite velocity",
    ),
    Case(
        "checkpoint-is-directory",
        "checkpoint",
        "`evaluate` of a directory without checkpoint.npz",
        lambda ws: ["evaluate", str(ws)],
        1,
        "is a directory without a checkpoint.npz",
    ),
    Case(
        "evaluate-data-dir-missing",
        "dataset",
        "`evaluate --data-dir` a folder that does not exist (nothing is prepared there)",
        lambda ws: ["evaluate", str(saved_checkpoint(ws)), "--data-dir", str(ws / "none")],
        1,
        "no prepared dataset there; prepare it with `dtrain data prepare --out",
    ),
    Case(
        "train-data-dir-unprepared",
        "dataset",
        "`train --data-dir` a folder of other files (no --force suggested)",
        lambda ws: train_args(users_folder(ws), ws),
        1,
        "not a prepared dataset (no manifest.json); prepare it with",
    ),
    Case(
        "evaluate-tampered-test-shard",
        "dataset",
        "`evaluate` on a test shard with one byte flipped",
        lambda ws: tampered_test_shard(ws, "evaluate"),
        1,
        "sha256 does not match the manifest",
    ),
    Case(
        "predict-tampered-test-shard",
        "dataset",
        "`predict --test-samples` on a test shard with one byte flipped",
        lambda ws: tampered_test_shard(ws, "predict"),
        1,
        "sha256 does not match the manifest",
    ),
    Case(
        "resume-config-hidden-sizes",
        "checkpoint",
        '`--resume` a run whose config.json has `"hidden_sizes": "abc"`',
        bad_hidden_sizes_config,
        1,
        "config.json: hidden_sizes must be a list of integers",
    ),
    Case(
        "resume-config-list",
        "checkpoint",
        "`--resume` a run whose config.json is `[1, 2]`",
        lambda ws: resume_with_config(ws, [1, 2]),
        1,
        "config.json: the config must be a JSON object",
    ),
    Case(
        "predict-str-dtype",
        "predict",
        "`predict` on a .npy of strings",
        lambda ws: predict_array(ws, np.full((1, 784), "a")),
        1,
        "images have dtype <U1",
    ),
    Case(
        "predict-structured-dtype",
        "predict",
        "`predict` on a .npy of records",
        lambda ws: predict_array(ws, np.zeros((1, 784), dtype=[("a", "u1"), ("b", "u1")])),
        1,
        "images have dtype [('a', 'u1'), ('b', 'u1')]",
    ),
    Case(
        "predict-datetime-dtype",
        "predict",
        "`predict` on a .npy of datetimes",
        lambda ws: predict_array(ws, np.zeros((1, 784), dtype="datetime64[s]")),
        1,
        "images have dtype datetime64[s]",
    ),
    Case(
        "predict-complex-dtype",
        "predict",
        "`predict` on a .npy of complex numbers",
        lambda ws: predict_array(ws, np.zeros((1, 784), dtype=np.complex64)),
        1,
        "images have dtype complex64",
    ),
    Case(
        "predict-empty",
        "predict",
        "`predict` on a .npy shaped (0, 784)",
        lambda ws: predict_array(ws, np.zeros((0, 784), dtype=np.uint8)),
        1,
        "holds no images (shape (0, 784))",
    ),
    Case(
        "predict-object-npy",
        "predict",
        "`predict` on a .npy of pickled objects",
        lambda ws: predict_array(ws, np.array([{}, {}], dtype=object)),
        1,
        "holds pickled objects, refused",
    ),
    Case(
        "predict-huge-header",
        "predict",
        "`predict` on a .npy whose header claims 10**9 images",
        predict_huge_npy,
        1,
        "header claims shape [1000000000, 784]",
    ),
    Case(
        "predict-directory",
        "predict",
        "`predict` with a directory as INPUTS",
        lambda ws: ["predict", str(saved_checkpoint(ws)), str(ws)],
        1,
        "is a directory, expected an image file",
    ),
    Case(
        "report-step-not-a-number",
        "report",
        '`report` on a history record with `"step": "x"`',
        lambda ws: report_on(ws, {**STEP, "step": "x"}),
        1,
        "'step' must be an integer, got 'x'",
    ),
    Case(
        "report-step-missing",
        "report",
        "`report` on a step record without its step",
        lambda ws: report_on(ws, {k: v for k, v in STEP.items() if k != "step"}),
        1,
        "step record lacks 'step'",
    ),
    Case(
        "report-record-list",
        "report",
        "`report` on a history line that is a JSON list",
        lambda ws: report_on(ws, "[1, 2]"),
        1,
        "history.jsonl:1 is a JSON list, not an object",
    ),
    Case(
        "report-loss-string",
        "report",
        '`report` on a step record with `"loss": "low"`',
        lambda ws: report_on(ws, {**STEP, "loss": "low"}),
        1,
        "'loss' must be a number, got 'low'",
    ),
    Case(
        "report-summary-wrong-type",
        "report",
        '`report` on a run whose summary.json has `"epochs": "five"`',
        report_bad_summary,
        1,
        "'epochs' must be an integer, got 'five'",
    ),
]
CASES += ISSUE14_CASES

# --- neighbours of issue 14's examples: the same classes, reached another way ------------------


def resume_from(ws: Path, ckpt: checkpoint.Checkpoint) -> list[str]:
    """`train --resume` of a run on a small prepared dataset whose only checkpoint is ``ckpt``."""
    data = prepared(ws)
    run = ws / "prev"
    (run / "checkpoints").mkdir(parents=True)
    config = {"data_dir": str(data), "run_dir": str(run), "model": {"hidden_sizes": [8]}}
    config |= {"batch_size": 4, "num_workers": 1}
    (run / "config.json").write_text(json.dumps(config))
    checkpoint.save(run / "checkpoints" / "step-00000005.npz", ckpt)
    return ["train", "--resume", str(run)]


def resume_nonfinite_velocity(ws: Path) -> list[str]:
    """A run whose only checkpoint has an inf velocity: refused on load, not after a step."""
    params = init_params(SPEC, 0)
    velocity = np.zeros_like(params)
    velocity[-1] = np.inf
    return resume_from(ws, checkpoint.Checkpoint(spec=SPEC, params=params, velocity=velocity))


def resume_on_other_data(ws: Path) -> list[str]:
    """A run whose checkpoint was trained on other rows than those its data dir holds now."""
    params = init_params(SPEC, 0)
    other = hashlib.sha256(b"another dataset's shards").hexdigest()
    ckpt = checkpoint.Checkpoint(
        spec=SPEC, params=params, velocity=np.zeros_like(params), meta={"train_data": other}
    )
    return resume_from(ws, ckpt)


def damaged_npz_source(ws: Path, **patch: int) -> list[str]:
    src = npz_source(ws)
    if patch:
        patch_zip_headers(src, **patch)
    else:  # one byte of a stored member flipped: only its CRC can tell
        raw = bytearray(src.read_bytes())
        raw[len(raw) // 3] ^= 0xFF
        src.write_bytes(bytes(raw))
    return prepare_args(src, ws)


def huge_header_npz_source(ws: Path) -> list[str]:
    src = npz_source(ws)
    with zipfile.ZipFile(src) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["x_train.npy"] = npy_claiming((10**9, 28, 28), b"\0" * 784, "|u1")
    with zipfile.ZipFile(src, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return prepare_args(src, ws)


def predict_npz(ws: Path, **patch: int) -> list[str]:
    path = ws / "images.npz"
    np.savez(path, x=np.zeros((2, 28, 28), np.uint8))
    patch_zip_headers(path, **patch)
    return ["predict", str(saved_checkpoint(ws)), str(path)]


NEIGHBOUR_CASES = [
    Case(
        "resume-nonfinite-velocity",
        "checkpoint",
        "`--resume` a run whose only checkpoint has an inf velocity",
        resume_nonfinite_velocity,
        1,
        "holds non-finite velocity",
    ),
    Case(
        "resume-other-data",
        "checkpoint",
        "`--resume` on training data other than the checkpoint's",
        resume_on_other_data,
        1,
        "is not the run's (its shards' sha256 differ",
    ),
    Case(
        "resume-config-null",
        "checkpoint",
        "`--resume` a run whose config.json is `null`",
        lambda ws: resume_with_config(ws, None),
        1,
        "config.json: the config must be a JSON object, got NoneType",
    ),
    Case(
        "resume-config-epochs-string",
        "checkpoint",
        '`--resume` a run whose config.json has `"epochs": "5"`',
        lambda ws: resume_with_config(ws, {"data_dir": "d", "run_dir": "r", "epochs": "5"}),
        1,
        "config.json: epochs must be an integer, got '5'",
    ),
    Case(
        "checkpoint-num-classes-null",
        "checkpoint",
        'a checkpoint header with `"num_classes": null`',
        lambda ws: ["evaluate", str(saved_checkpoint(ws, num_classes=None))],
        1,
        "header field num_classes must be an integer, got None",
    ),
    Case(
        "prepare-npz-bad-crc",
        "dataset",
        "`data prepare` from an `.npz` with one byte flipped (bad CRC)",
        damaged_npz_source,
        1,
        "member 'x_train': damaged data",
    ),
    Case(
        "prepare-npz-unknown-compression",
        "dataset",
        "`data prepare` from an `.npz` whose members claim compression method 99",
        lambda ws: damaged_npz_source(ws, method=99),
        1,
        "member 'x_train' uses unsupported compression method 99",
    ),
    Case(
        "prepare-npz-huge-header",
        "dataset",
        "`data prepare` from an `.npz` whose x_train header claims 10**9 images",
        huge_header_npz_source,
        1,
        "header claims shape [1000000000, 28, 28]",
    ),
    Case(
        "predict-npz-encrypted",
        "predict",
        "`predict` on an `.npz` whose members are flagged encrypted",
        lambda ws: predict_npz(ws, flags=0x1),
        1,
        "is encrypted",
    ),
    Case(
        "predict-bool-dtype",
        "predict",
        "`predict` on a .npy of booleans",
        lambda ws: predict_array(ws, np.zeros((2, 784), bool)),
        1,
        "images have dtype bool, expected uint8 pixels",
    ),
    Case(
        "evaluate-data-dir-unprepared",
        "dataset",
        "`evaluate --data-dir` a folder of other files (no --force suggested)",
        lambda ws: ["evaluate", str(saved_checkpoint(ws)), "--data-dir", str(users_folder(ws))],
        1,
        "not a prepared dataset (no manifest.json); prepare it with",
    ),
    Case(
        "job-file-cpus-nan",
        "job file",
        "a job file with `cpus-per-worker = nan`",
        lambda ws: job_file(ws, "[train]\ncpus-per-worker = nan\n"),
        2,
        "Invalid value for '--cpus-per-worker': nan is not a finite number",
    ),
    Case(
        "job-file-staleness-huge",
        "job file",
        "a job file with `staleness = 100000`",
        lambda ws: job_file(ws, "[train]\nstaleness = 100000\n"),
        2,
        "'--staleness': 100000 is not in the range 0<=x<=32",
    ),
    Case(
        "address-ray-bad-port",
        "cluster",
        "`--address ray://127.0.0.1:70000`",
        lambda ws: train_args(prepared(ws), ws, "--address", "ray://127.0.0.1:70000"),
        1,
        "port 70000 is not in 1..65535",
    ),
    Case(
        "submit-entrypoint-cpus-inf",
        "cli",
        "`submit --entrypoint-num-cpus inf`",
        lambda ws: ["submit", "--entrypoint-num-cpus", "inf"],
        2,
        "'--entrypoint-num-cpus': 'inf' is not a finite number",
    ),
]
CASES += NEIGHBOUR_CASES


# --- run directories (issue 13): refused before the data is read or Ray starts --------------

# What a case set up that must be undone after it ran (a held lock, a mounted filesystem).
UNDO: list[Callable[[], object]] = []


def run_dir_args(ws: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["train", "--data-dir", str(prepared(ws)), "--run-dir", str(run_dir), *extra]


def run_dir_is_a_file(ws: Path) -> list[str]:
    (ws / "notes.txt").write_text("the user's own file")
    return run_dir_args(ws, ws / "notes.txt")


def run_dir_under_a_file(ws: Path) -> list[str]:
    (ws / "notes.txt").write_text("the user's own file")
    return run_dir_args(ws, ws / "notes.txt" / "run")


def tmpfs(path: Path, options: str) -> Path:
    """A real read-only or tiny filesystem; the case is skipped where mounting is not allowed."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)])
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    UNDO.append(lambda: subprocess.run(["umount", str(path)], check=True))
    return path


def run_dir_read_only(ws: Path) -> list[str]:
    return run_dir_args(ws, tmpfs(ws / "ro", "ro") / "run")


def run_dir_full_disk(ws: Path) -> list[str]:
    full = tmpfs(ws / "full", "size=64k")
    with (full / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError:
            pass
    return run_dir_args(ws, full / "run")


def earlier_run(ws: Path) -> Path:
    run = ws / "earlier"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoint.npz").write_bytes(b"the earlier run's weights")
    (run / "config.json").write_text("{}")
    return run


def run_dir_in_use(ws: Path) -> list[str]:
    from dtrain.service.train.rundir import RunDirLock

    lock = RunDirLock(ws / "live").claim()  # a live run (this process) holds it
    UNDO.append(lock.release)
    return run_dir_args(ws, ws / "live")


RUN_DIR_CASES = [
    Case(
        "run-dir-is-a-file",
        "run dir",
        "`--run-dir` names a regular file",
        run_dir_is_a_file,
        2,
        "is a file",
    ),
    Case(
        "run-dir-under-a-file",
        "run dir",
        "`--run-dir FILE/run`, under a regular file",
        run_dir_under_a_file,
        1,
        "which is a file, not a directory",
    ),
    Case(
        "run-dir-read-only",
        "run dir",
        "`--run-dir` on a read-only filesystem",
        run_dir_read_only,
        1,
        "is on a read-only filesystem",
    ),
    Case(
        "run-dir-full-disk",
        "run dir",
        "`--run-dir` on a full filesystem",
        run_dir_full_disk,
        1,
        "no space left in run directory",
    ),
    Case(
        "run-dir-holds-a-run",
        "run dir",
        "`--run-dir` of a finished run, without `--resume` or `--overwrite`",
        lambda ws: run_dir_args(ws, earlier_run(ws)),
        1,
        "already holds a run",
    ),
    Case(
        "run-dir-in-use",
        "run dir",
        "`--run-dir` that a live run holds",
        run_dir_in_use,
        1,
        "is in use by a running dtrain (pid",
    ),
    Case(
        "resume-with-another-run-dir",
        "run dir",
        "`--resume RUN --run-dir OTHER`",
        lambda ws: ["train", "--resume", str(earlier_run(ws)), "--run-dir", str(ws / "other")],
        2,
        "but --run-dir names",
    ),
    Case(
        "resume-and-overwrite",
        "run dir",
        "`--resume RUN --overwrite`",
        lambda ws: ["train", "--resume", str(earlier_run(ws)), "--overwrite"],
        2,
        "--overwrite starts a new run, --resume continues one",
    ),
]
CASES += RUN_DIR_CASES


# --- audit: non-regular input files, a checkpoint's progress, output paths under a file -------


def fifo(ws: Path, name: str) -> Path:
    """A FIFO no one writes to: reading it would wait forever (the cases run as processes, so a
    hang is a timeout, not a stuck test run)."""
    path = ws / name
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def shard_replaced_by_fifo(ws: Path) -> list[str]:
    """A prepared dataset whose first training shard is now a FIFO (reading it would wait
    forever for a writer)."""
    data = prepared(ws)
    manifest = json.loads((data / "manifest.json").read_text())
    name = manifest["splits"]["train"]["shards"][0]["file"]
    (data / name).unlink()
    fifo(data, name)
    return train_args(data, ws)


def resume_fifo_config(ws: Path) -> list[str]:
    fifo(ws / "prev", "config.json")
    return ["train", "--resume", str(ws / "prev")]


def resume_with_progress(ws: Path, **meta: object) -> list[str]:
    """A run whose only checkpoint's meta (progress, saved config) is ``meta``."""
    data = prepared(ws)
    run = ws / "prev"
    (run / "checkpoints").mkdir(parents=True)
    config = {"data_dir": str(data), "run_dir": str(run), "model": {"hidden_sizes": [8]}}
    config |= {"batch_size": 4, "num_workers": 1}
    (run / "config.json").write_text(json.dumps(config))
    ckpt = checkpoint.Checkpoint(spec=SPEC, params=init_params(SPEC, 0), meta=meta)
    checkpoint.save(run / "checkpoints" / "step-00000005.npz", ckpt)
    return ["train", "--resume", str(run)]


def notes_file(ws: Path) -> Path:
    (ws / "notes.txt").write_text("the user's own file")
    return ws / "notes.txt"


def fetch_into(out: Path) -> list[str]:
    """`jobs fetch` into ``out`` from an address where nothing listens: a check of ``out``
    that came after the cluster's would say the address is unreachable instead."""
    return ["jobs", "fetch", "raysubmit_x", "--out", str(out), "--address", "http://127.0.0.1:9"]


def export_under_a_file(ws: Path) -> list[str]:
    ckpt = str(saved_checkpoint(ws))
    return ["export", ckpt, "--format", "safetensors", "--out", str(notes_file(ws) / "net.st")]


def report_under_a_file(ws: Path) -> list[str]:
    return [*report_on(ws, STEP), "--out", str(notes_file(ws) / "report.png")]


AUDIT_CASES = [
    Case(
        "job-file-fifo",
        "job file",
        "`--config` names a FIFO (reading it would wait for a writer forever)",
        lambda ws: ["train", "--config", str(fifo(ws, "job.toml"))],
        2,
        "job.toml: not a regular file (a FIFO)",
        process=True,
    ),
    Case(
        "job-file-huge",
        "job file",
        "a 2 MiB job file (`--config /dev/zero` is refused too: not a regular file)",
        lambda ws: job_file(ws, "#" * (2 << 20)),
        2,
        "larger than 1 MiB",
    ),
    Case(
        "resume-config-fifo",
        "checkpoint",
        "`--resume` a run whose config.json is a FIFO",
        resume_fifo_config,
        1,
        "config.json is unreadable: not a regular file (a FIFO)",
        process=True,
    ),
    Case(
        "shard-fifo",
        "dataset",
        "a prepared dataset whose training shard was replaced by a FIFO",
        shard_replaced_by_fifo,
        1,
        "is not a regular file",
    ),
    Case(
        "checkpoint-fifo",
        "checkpoint",
        "`evaluate` of a FIFO",
        lambda ws: ["evaluate", str(fifo(ws, "ckpt.npz"))],
        1,
        "is not a regular file",
        process=True,
    ),
    Case(
        "resume-progress-step-negative",
        "checkpoint",
        "`--resume` a run whose checkpoint records step -5 (it hung, never reaching the last)",
        lambda ws: resume_with_progress(ws, progress={"step": -5}),
        1,
        "header field meta: progress.step must be an integer in 0..",
    ),
    Case(
        "resume-progress-list",
        "checkpoint",
        "`--resume` a run whose checkpoint's progress is `[1, 2]`",
        lambda ws: resume_with_progress(ws, progress=[1, 2]),
        1,
        "progress must be a JSON object, got list",
    ),
    Case(
        "resume-progress-membership",
        "checkpoint",
        "`--resume` a run whose checkpoint's membership changes are `[1]`",
        lambda ws: resume_with_progress(ws, progress={"step": 5, "membership": [1]}),
        1,
        "progress.membership must be a list of JSON objects, got [1]",
    ),
    Case(
        "resume-progress-parts",
        "checkpoint",
        "`--resume` a run whose checkpoint's batch parts are `[1, 2]` (not all 64)",
        lambda ws: resume_with_progress(ws, progress={"step": 5, "parts": [1, 2]}),
        1,
        "progress.parts must sum to 64, got [1, 2]",
    ),
    Case(
        "resume-meta-config-int",
        "checkpoint",
        "`--resume` a run whose checkpoint's saved config is `5`",
        lambda ws: resume_with_progress(ws, config=5),
        1,
        "header field meta: config must be a JSON object, got 5",
    ),
    Case(
        "report-out-under-a-file",
        "report",
        "`report --out FILE/report.png`, under a regular file",
        report_under_a_file,
        1,
        "notes.txt is a file, not a directory",
    ),
    Case(
        "report-step-huge",
        "report",
        '`report` on a step record with `"step": 10**23` (beyond int64)',
        lambda ws: report_on(ws, {**STEP, "step": 10**23}),
        1,
        "'step' must be an integer in 0..2**63-1, got 100000000000000000000000",
    ),
    Case(
        "export-out-under-a-file",
        "export",
        "`export --out FILE/net.st`, under a regular file",
        export_under_a_file,
        1,
        "notes.txt is a file, not a directory",
    ),
    Case(
        "prepare-out-under-a-file",
        "prepare",
        "`data prepare --out FILE/data`, under a regular file",
        lambda ws: prepare_into(ws, notes_file(ws) / "data"),
        1,
        "notes.txt is a file, not a directory",
    ),
    Case(
        "fetch-out-under-a-file",
        "cluster",
        "`jobs fetch JOB --out FILE/run`, under a regular file (refused before any request)",
        lambda ws: fetch_into(notes_file(ws) / "run"),
        1,
        "notes.txt is a file, not a directory",
    ),
    Case(
        "fetch-out-exists",
        "cluster",
        "`jobs fetch JOB --out DIR`, a directory that exists (refused before any request)",
        lambda ws: fetch_into(ws),
        1,
        "already exists: give --out a new directory",
    ),
    Case(
        "tensorboard-under-a-file",
        "trackers",
        "`--tensorboard FILE/tb`, under a regular file (refused before Ray starts)",
        lambda ws: train_args(ws / "data", ws, "--tensorboard", str(notes_file(ws) / "tb")),
        1,
        "notes.txt is a file, not a directory",
    ),
]
CASES += AUDIT_CASES


def not_utf8(ws: Path, name: bytes) -> Path:
    """A path whose last name holds a byte that is not UTF-8 (Python keeps it as a surrogate)."""
    return ws / os.fsdecode(name)


def evaluate_not_utf8_data(ws: Path) -> list[str]:
    data = not_utf8(ws, b"data-\xff")
    prepared(ws).rename(data)
    return ["evaluate", str(saved_checkpoint(ws)), "--data-dir", str(data)]


UTF8_CASES = [
    Case(
        "prepare-out-not-utf8",
        "prepare",
        "`data prepare --out` a folder whose name holds the byte 0xff (a pyarrow traceback)",
        lambda ws: prepare_into(ws, not_utf8(ws, b"data-\xff")),
        1,
        "data-\\xff: the name is not valid UTF-8, which Arrow and Ray need; rename it",
    ),
    Case(
        "evaluate-data-dir-not-utf8",
        "dataset",
        "`evaluate --data-dir` a prepared dataset whose folder name holds the byte 0xff",
        evaluate_not_utf8_data,
        1,
        "data-\\xff: the name is not valid UTF-8",
    ),
    Case(
        "run-dir-not-utf8",
        "run dir",
        "`--run-dir` whose name holds the byte 0xff (Ray could not start)",
        lambda ws: run_dir_args(ws, not_utf8(ws, b"run-\xff")),
        2,
        "run-\\xff: the name is not valid UTF-8",
    ),
]
CASES += UTF8_CASES

URL_CASES = [
    Case(
        "jobs-address-ipv6-unclosed",
        "cluster",
        "`jobs list --address 'http://[::1'` (an IPv6 host's `[` never closed)",
        lambda ws: ["jobs", "list", "--address", "http://[::1"],
        1,
        "bad Jobs API address 'http://[::1' (from --address): Invalid IPv6 URL",
    ),
    Case(
        "pushgateway-ipv6-unclosed",
        "cli",
        "`--pushgateway 'http://[::1'`",
        lambda ws: train_args(ws / "data", ws, "--pushgateway", "http://[::1"),
        1,
        "bad --pushgateway URL 'http://[::1'",
    ),
    Case(
        "source-url-ipv6-unclosed",
        "dataset",
        "`data prepare --source 'http://[::1'`",
        lambda ws: ["data", "prepare", "--source", "http://[::1", "--out", str(ws / "out")],
        1,
        "bad --source URL 'http://[::1': Invalid IPv6 URL",
    ),
]
CASES += URL_CASES


def long_png(ws: Path) -> list[str]:
    from PIL import Image

    path = ws / "line.png"
    Image.new("L", (1_000_000, 1), 255).save(path)  # a few kB; its square would be 10**12 bytes
    return ["predict", str(saved_checkpoint(ws)), str(path)]


PICTURE_CASES = [
    Case(
        "predict-picture-long",
        "predict",
        "`predict` on a 1,000,000 x 1 PNG (padded to a square it was a MemoryError, or worse)",
        long_png,
        1,
        "picture is 1000000x1, a side longer than 16384 pixels",
    ),
]
CASES += PICTURE_CASES


def resume_with_job_file(ws: Path) -> list[str]:
    """A 5-epoch run's checkpoint, resumed with a job file that says 7 epochs."""
    run = ws / "prev"
    config = TrainConfig(data_dir=prepared(ws), run_dir=run, model=SPEC, batch_size=4).to_dict()
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    ckpt = checkpoint.Checkpoint(spec=SPEC, params=init_params(SPEC, 0), meta={"config": config})
    checkpoint.save(run / "checkpoints" / "step-00000005.npz", ckpt)
    return [*job_file(ws, "[train]\nepochs = 7\n"), "--resume", str(run)]


RESUME_JOB_FILE_CASES = [
    Case(
        "resume-job-file-epochs",
        "job file",
        "`--resume RUN --config` a job file whose `epochs` differs from the run's (was ignored)",
        resume_with_job_file,
        1,
        "cannot resume, the config differs from the checkpoint's: epochs: checkpoint 5, now 7",
    ),
    Case(
        "resume-job-file-run-dir",
        "job file",
        "`--resume RUN --config` a job file whose `run-dir` names another (was ignored)",
        lambda ws: [
            *job_file(ws, f'[train]\nrun-dir = "{ws / "other"}"\n'),
            "--resume",
            str(earlier_run(ws)),
        ],
        2,
        "but the job file's run-dir names",
    ),
]
CASES += RESUME_JOB_FILE_CASES

EMPTY_PATH_CASES = [
    Case(
        "run-dir-empty",
        "run dir",
        "`--run-dir ''` (an unset shell variable: the run went into the current directory)",
        lambda ws: ["train", "--data-dir", str(ws / "data"), "--run-dir", ""],
        2,
        "Invalid value for '--run-dir': an empty path",
    ),
    Case(
        "job-file-run-dir-empty",
        "job file",
        'a job file with `run-dir = ""`',
        lambda ws: job_file(ws, '[train]\nrun-dir = ""\n'),
        2,
        "Invalid value for '--run-dir': an empty path",
    ),
    Case(
        "report-out-empty",
        "report",
        "`report RUN --out ''` (a ValueError traceback)",
        lambda ws: [*report_on(ws, STEP), "--out", ""],
        2,
        "Invalid value for '--out': an empty path",
    ),
    Case(
        "evaluate-empty",
        "checkpoint",
        "`evaluate ''` (it evaluated the current directory's checkpoint.npz)",
        lambda ws: ["evaluate", ""],
        2,
        "Invalid value for 'CHECKPOINT': an empty path",
    ),
]
CASES += EMPTY_PATH_CASES


def users_png(ws: Path) -> Path:
    from PIL import Image

    Image.new("L", (4, 4), 0).save(ws / "photo.png")
    return ws / "photo.png"


CLOBBER_CASES = [
    Case(
        "report-out-users-file",
        "report",
        "`report RUN --out notes.txt`, the user's file (it was replaced by the picture)",
        lambda ws: [*report_on(ws, STEP), "--out", str(notes_file(ws))],
        1,
        "notes.txt exists and is not a PNG picture: give --out a new file",
    ),
    Case(
        "report-out-users-png",
        "report",
        "`report RUN --out photo.png`, a PNG that dtrain did not draw",
        lambda ws: [*report_on(ws, STEP), "--out", str(users_png(ws))],
        1,
        "photo.png exists and is not a report dtrain drew: give --out a new file",
    ),
]
CASES += CLOBBER_CASES


def resume_history_fifo(ws: Path) -> list[str]:
    args = resume_with_progress(ws)
    fifo(ws / "prev", "history.jsonl")
    return args


HISTORY_FIFO_CASES = [
    Case(
        "resume-history-fifo",
        "checkpoint",
        "`--resume` a run whose history.jsonl is a FIFO (the resume hung)",
        resume_history_fifo,
        1,
        "history.jsonl: not a regular file (a FIFO)",
        process=True,
    ),
]
CASES += HISTORY_FIFO_CASES


def with_env(**values: str) -> None:
    """Set environment variables for one case (a process case inherits them); undone after."""
    saved = {name: os.environ.get(name) for name in [*values, "RAY_AUTH_MODE"]}
    os.environ.pop("RAY_AUTH_MODE", None)  # token mode, Ray's default: the token is read
    os.environ.update(values)

    def restore() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    UNDO.append(restore)


def token_file(ws: Path, data: bytes) -> list[str]:
    path = ws / "token"
    path.write_bytes(data)
    with_env(RAY_AUTH_TOKEN_PATH=str(path))
    return ["jobs", "list", "--address", "http://127.0.0.1:1"]


def token_fifo(ws: Path) -> list[str]:
    with_env(RAY_AUTH_TOKEN_PATH=str(fifo(ws, "token")))
    return ["jobs", "list", "--address", "http://127.0.0.1:1"]


def train_with_token(ws: Path) -> list[str]:
    with_env(RAY_AUTH_TOKEN="abc\x01def")
    return train_args(prepared(ws), ws, "--batch-size", "4")


TOKEN_CASES = [
    Case(
        "token-file-not-text",
        "cluster",
        "`$RAY_AUTH_TOKEN_PATH` naming a file of bytes that are not UTF-8 (`jobs list`)",
        lambda ws: token_file(ws, b"\xff\xfe"),
        1,
        "/token) is not text",
    ),
    Case(
        "token-file-fifo",
        "cluster",
        "`$RAY_AUTH_TOKEN_PATH` naming a FIFO (`jobs list` hung)",
        token_fifo,
        1,
        "/token): not a regular file (a FIFO)",
        process=True,
    ),
    Case(
        "train-token-control-character",
        "cluster",
        "`train` with `$RAY_AUTH_TOKEN` holding a control character (Ray's gRPC aborted: 134)",
        train_with_token,
        1,
        "$RAY_AUTH_TOKEN holds a token with characters a header cannot carry",
    ),
]
CASES += TOKEN_CASES

BENCH_CASES = [
    Case(
        "bench-workers-65",
        "cli",
        "`bench --num-workers 65` (at most 64: it failed only when that variant's turn came)",
        lambda ws: ["bench", "--num-workers", "65"],
        2,
        "workers must all be <= 64, got [65]",
    ),
    Case(
        "bench-staleness-33",
        "cli",
        "`bench --staleness 33` (at most 32, as for train)",
        lambda ws: ["bench", "--staleness", "33"],
        2,
        "staleness must name values <= 32, got [33]",
    ),
]
CASES += BENCH_CASES

CONFLICT_CASES = [
    Case(
        "gpu-workers-without-gpu-device",
        "cli",
        "`--gpu-workers 1` without `--device gpu` (it was ignored in silence)",
        lambda ws: ["train", "--gpu-workers", "1"],
        2,
        "--gpu-workers: num_gpu_workers applies to device gpu only, not cpu",
    ),
    Case(
        "train-address-jobs-api",
        "cluster",
        "`train --address http://127.0.0.1:8265` (the Jobs API's address, not the cluster's)",
        lambda ws: train_args(prepared(ws), ws, "--address", "http://127.0.0.1:8265"),
        1,
        "that is a Jobs API address (use it with `dtrain submit`)",
    ),
]
CASES += CONFLICT_CASES


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def run_case(case: Case, args: list[str]) -> tuple[int, str]:
    if case.process:
        done = subprocess.run(
            [sys.executable, "-m", "dtrain.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.returncode, done.stdout + done.stderr
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    args = case.build(ws)
    before = snapshot(ws)
    try:
        code, output = run_case(case, args)
        after = snapshot(ws)  # before what the case set up is undone
    finally:
        for sock in HELD:
            sock.close()
        HELD.clear()
        while UNDO:
            UNDO.pop()()
    assert code == case.code, output
    assert case.says in output, output
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, output
    assert after == before, "a bad input changed files that were there before"
    assert not (ws / "run").exists() and not (ws / "out").exists()


def test_docs_table_matches_the_cases_row_for_row() -> None:
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in DOC.read_text().splitlines()
        if line.startswith("| `") and "|" in line[1:]
    ]
    assert [r[0].strip("`") for r in rows] == [c.id for c in CASES]
    for row, case in zip(rows, CASES, strict=True):
        assert row[1] == case.area and row[2] == case.what
        assert case.says in row[3] and row[4] == str(case.code), row


def render_docs_table() -> str:
    """The table docs/bad-inputs.md must hold: `python tests/unit/test_bad_inputs.py` prints it."""
    lines = ["| id | area | input | error says (fragment) | exit |", "|---|---|---|---|---|"]
    lines += [f"| `{c.id}` | {c.area} | {c.what} | {c.says} | {c.code} |" for c in CASES]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_docs_table())
