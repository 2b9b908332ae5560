"""The catalogue of bad inputs: each gets a one-line error, a non-zero exit, no traceback, and
leaves every file that existed before exactly as it was.

docs/bad-inputs.md lists the same cases, row for row; a test below keeps the two in step.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import subprocess
import sys
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
        "a label of 10",
        lambda ws: prepare_args(
            idx_source(ws, **{"train-labels-idx1-ubyte": idx_bytes(np.full(30, 10), LABELS)}), ws
        ),
        1,
        "label 10",
    ),
    Case(
        "nan-pixels",
        "dataset",
        "an `.npz` whose images are floats with NaN",
        lambda ws: prepare_args(npz_source(ws, x_train=np.full((30, 28, 28), np.nan)), ws),
        1,
        "uint8",
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
