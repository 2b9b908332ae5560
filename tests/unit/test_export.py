"""dtrain export: onnxruntime running the exported ONNX predicts what `dtrain predict` predicts on
the whole test set; safetensors holds each layer's weight and bias under readable names."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.numpy import load_file

from dtrain.cli.main import cli
from dtrain.service.data import dataset
from dtrain.service.train import checkpoint
from dtrain.workers.model import Layout, ModelSpec, Network, init_params
from dtrain.workers.shards import read_rows, to_float


def export(ckpt: Path, fmt: str, *extra: str) -> Path:
    result = CliRunner().invoke(cli, ["export", str(ckpt), "--format", fmt, *extra])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip())


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {"input": x})[0])


def test_onnx_predicts_like_dtrain_predict_on_the_whole_test_set(
    mnist_trained: Path, prepared_mnist: Path, tmp_path: Path
) -> None:
    ckpt = Path(shutil.copy(mnist_trained / "checkpoint.npz", tmp_path / "checkpoint.npz"))
    shutil.copy(mnist_trained / "config.json", tmp_path / "config.json")
    path = export(ckpt, "onnx")
    assert path == tmp_path / "checkpoint.onnx" and path.is_file()

    manifest = dataset.read_manifest(prepared_mnist)
    n = manifest["splits"]["test"]["num_samples"]
    x, _ = read_rows(prepared_mnist, manifest, "test", 0, n)
    result = CliRunner().invoke(cli, ["predict", str(ckpt), "--test-samples", str(n), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == n == 10_000

    probs = run_onnx(path, to_float(x))
    assert probs.shape == (n, 10)
    assert probs.argmax(axis=1).tolist() == [r["prediction"] for r in rows]
    # predict prints 6 decimals; onnxruntime's sums run in another order than NumPy's BLAS.
    top = probs[np.arange(n), probs.argmax(axis=1)]
    assert np.abs(top - [r["probability"] for r in rows]).max() < 2e-6


@pytest.mark.parametrize("hidden", [(), (7,), (9, 5)], ids=["no-hidden", "one", "two"])
def test_onnx_graph_for_any_depth(tmp_path: Path, hidden: tuple[int, ...]) -> None:
    spec = ModelSpec(input_size=12, hidden_sizes=hidden, num_classes=4)
    ckpt = tmp_path / "c.npz"
    params = init_params(spec, seed=3)
    checkpoint.save(ckpt, checkpoint.Checkpoint(spec=spec, params=params))
    x = np.random.default_rng(1).random((33, 12), dtype=np.float32)
    got = run_onnx(export(ckpt, "onnx", "--out", str(tmp_path / "m.onnx")), x)
    np.testing.assert_allclose(got, Network(spec).predict_proba(params, x), rtol=0, atol=1e-6)


def test_safetensors_holds_each_layer_under_readable_names(
    mnist_trained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "weights.safetensors"
    assert export(mnist_trained / "checkpoint.npz", "safetensors", "--out", str(out)) == out
    tensors = load_file(str(out))
    assert sorted(tensors) == ["dense_0.bias", "dense_0.weight", "dense_1.bias", "dense_1.weight"]
    ckpt = checkpoint.load(mnist_trained / "checkpoint.npz")
    for i, (w, b) in enumerate(Layout(ckpt.spec).unflatten(ckpt.params)):
        assert tensors[f"dense_{i}.weight"].dtype == np.float32
        assert np.array_equal(tensors[f"dense_{i}.weight"], w)
        assert np.array_equal(tensors[f"dense_{i}.bias"], b)
    with safe_open(str(out), framework="numpy") as f:
        meta = f.metadata()
    assert meta["input_size"] == "784" and json.loads(meta["hidden_sizes"]) == [64]
    assert meta["num_classes"] == "10" and "relu" in meta["forward"]


def test_a_missing_package_is_one_line(
    mnist_trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import onnx` raise ImportError, as on an install without it.
    monkeypatch.setitem(sys.modules, "onnx", None)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        cli, ["export", str(mnist_trained / "checkpoint.npz"), "--format", "onnx", "--out", out]
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: --format onnx needs the onnx package: pip install 'dtrain[export]'"
    )
    assert not out.exists()


def test_bad_format_and_bad_checkpoint(tmp_path: Path) -> None:
    bad = CliRunner().invoke(cli, ["export", str(tmp_path / "x.npz"), "--format", "pt"])
    assert bad.exit_code == 2 and "'pt' is not one of" in bad.output
    missing = CliRunner().invoke(cli, ["export", str(tmp_path / "x.npz"), "--format", "onnx"])
    assert missing.exit_code == 1 and missing.output.strip().endswith("does not exist")


def test_an_existing_file_is_never_replaced(mnist_trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "thesis.tex"
    out.write_text("mine")
    result = CliRunner().invoke(
        cli, ["export", str(mnist_trained / "checkpoint.npz"), "--format", "onnx", "--out", out]
    )
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {out} already exists: give --out a new file"
    assert out.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        "thesis.tex"
    ]


def test_a_run_directory_stands_for_its_final_checkpoint(
    mnist_trained: Path, tmp_path: Path
) -> None:
    """As for evaluate and predict: `dtrain export RUN_DIR` exports RUN_DIR/checkpoint.npz."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(mnist_trained / "checkpoint.npz", run / "checkpoint.npz")
    path = export(run, "safetensors")
    assert path == run / "checkpoint.safetensors"
    ckpt = checkpoint.load(run / "checkpoint.npz")
    weights = load_file(str(path))
    np.testing.assert_array_equal(
        weights["dense_0.weight"].ravel(), ckpt.params[: weights["dense_0.weight"].size]
    )
    empty = CliRunner().invoke(cli, ["export", str(tmp_path), "--format", "onnx"])
    assert empty.exit_code == 1 and "is a directory without a checkpoint.npz" in empty.output
