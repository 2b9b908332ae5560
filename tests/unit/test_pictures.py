"""predict on pictures people have: real PNG and JPEG files written with Pillow, and single flat
arrays, give the predictions of the same pixels as training-format arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dtrain.cli.main import cli
from dtrain.service.data import dataset
from dtrain.service.data.images import load_images
from dtrain.service.train import checkpoint
from dtrain.workers.model import ModelSpec, init_params
from dtrain.workers.shards import read_rows

NUM = 12


@pytest.fixture(scope="module")
def digits(prepared_mnist: Path) -> np.ndarray:
    """The first test images, (NUM, 28, 28) uint8: light strokes on black."""
    x, _ = read_rows(prepared_mnist, dataset.read_manifest(prepared_mnist), "test", 0, NUM)
    return x.reshape(NUM, 28, 28)


def predict(ckpt: Path, *inputs: Path, extra: tuple[str, ...] = ()) -> list[dict[str, float]]:
    result = CliRunner().invoke(cli, ["predict", str(ckpt), *map(str, inputs), *extra, "--json"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def reference(ckpt: Path, digits: np.ndarray, tmp_path: Path) -> list[dict[str, float]]:
    arrays = tmp_path / "digits.npy"
    np.save(arrays, digits)
    return predict(ckpt, arrays)


def outcome(rows: list[dict[str, float]]) -> list[tuple[float, float]]:
    return [(r["prediction"], r["probability"]) for r in rows]


def save_each(images: list[Image.Image], tmp_path: Path, suffix: str, **kw: object) -> list[Path]:
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"digit{i}{suffix}")
        img.save(paths[-1], **kw)
    return paths


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda a: Image.fromarray(a), id="gray-28x28"),
        pytest.param(lambda a: Image.fromarray(a).convert("RGB"), id="rgb"),
        pytest.param(
            lambda a: Image.fromarray(a).resize((112, 112), Image.Resampling.NEAREST),
            id="gray-112x112",
        ),
        pytest.param(lambda a: Image.fromarray(255 - a), id="dark-ink-on-white"),
    ],
)
def test_png_pictures_predict_like_their_pixels(
    mnist_trained: Path, digits: np.ndarray, tmp_path: Path, make: object
) -> None:
    ckpt = mnist_trained / "checkpoint.npz"
    expected = reference(ckpt, digits, tmp_path)
    paths = save_each([make(a) for a in digits], tmp_path, ".png")  # type: ignore[operator]
    got = predict(ckpt, *paths)
    assert [r["source"] for r in got] == [str(p) for p in paths]
    # Same pixels after the conversion (gray, size, ink), so the same probabilities, exactly.
    assert outcome(got) == outcome(expected)


def test_an_upscaled_picture_comes_back_to_the_same_pixels(
    digits: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(255 - digits[0]).convert("RGB").resize((84, 84), Image.Resampling.NEAREST).save(
        path
    )
    assert np.array_equal(load_images(path), digits[0].reshape(1, 784))


def test_a_resampled_picture_keeps_most_predictions(
    mnist_trained: Path, digits: np.ndarray, tmp_path: Path
) -> None:
    ckpt = mnist_trained / "checkpoint.npz"
    expected = [r["prediction"] for r in reference(ckpt, digits, tmp_path)]
    bilinear = [Image.fromarray(255 - a).convert("RGB").resize((84, 84)) for a in digits]
    got = [r["prediction"] for r in predict(ckpt, *save_each(bilinear, tmp_path, ".png"))]
    assert sum(g == e for g, e in zip(got, expected, strict=True)) >= NUM - 1


def test_jpeg_pictures_predict_like_their_pixels(
    mnist_trained: Path, digits: np.ndarray, tmp_path: Path
) -> None:
    ckpt = mnist_trained / "checkpoint.npz"
    expected = [r["prediction"] for r in reference(ckpt, digits, tmp_path)]
    paths = save_each([Image.fromarray(a) for a in digits], tmp_path, ".jpg", quality=95)
    assert all(p.read_bytes()[:3] == b"\xff\xd8\xff" for p in paths)
    got = [r["prediction"] for r in predict(ckpt, *paths)]
    # JPEG is lossy: a pixel may move by a few levels, a prediction seldom.
    assert sum(g == e for g, e in zip(got, expected, strict=True)) >= NUM - 1


def test_transparent_background_is_paper(digits: np.ndarray, tmp_path: Path) -> None:
    # Black ink whose opacity is the stroke: a drawing program's export with no background.
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digits[0]
    path = tmp_path / "ink.png"
    Image.fromarray(rgba, "RGBA").save(path)
    got = load_images(path).astype(int)
    assert np.abs(got - digits[0].reshape(1, 784)).max() <= 1


def test_a_wide_picture_is_padded_not_stretched(digits: np.ndarray, tmp_path: Path) -> None:
    wide = np.zeros((28, 56), np.uint8)
    wide[:, 14:42] = digits[1]
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    got = load_images(path).reshape(28, 28)
    # 56x56 after padding, then halved: the digit's 2x2 blocks averaged.
    square = np.zeros((56, 56), np.uint8)
    square[14:42] = wide
    halved = square.reshape(28, 2, 28, 2).astype(float).mean(axis=(1, 3))
    assert np.abs(got.astype(float) - halved).max() <= 1


def test_invert_option_overrides_the_guess(digits: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "white.png"
    Image.fromarray(255 - digits[2]).save(path)
    assert np.array_equal(load_images(path), digits[2].reshape(1, 784))
    assert np.array_equal(load_images(path, invert=False), 255 - digits[2].reshape(1, 784))


@pytest.mark.parametrize("shape", [(784,), (28, 28), (1, 784)])
def test_a_single_image_array_in_any_shape(
    mnist_trained: Path, digits: np.ndarray, tmp_path: Path, shape: tuple[int, ...]
) -> None:
    ckpt = mnist_trained / "checkpoint.npz"
    path = tmp_path / "one.npy"
    np.save(path, digits[3].reshape(shape))
    assert outcome(predict(ckpt, path)) == outcome(reference(ckpt, digits[3:4], tmp_path))


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_a_truncated_png_is_one_line(
    mnist_trained: Path, digits: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(digits[0]).save(path)
    path.write_bytes(path.read_bytes()[:60])
    line = one_line_error(["predict", str(mnist_trained / "checkpoint.npz"), str(path)])
    assert str(path) in line and "unreadable picture" in line


def test_pictures_for_a_model_of_non_square_input_is_one_line(tmp_path: Path) -> None:
    spec = ModelSpec(input_size=30, hidden_sizes=(4,))
    ckpt = tmp_path / "odd.npz"
    checkpoint.save(ckpt, checkpoint.Checkpoint(spec=spec, params=init_params(spec, 0)))
    path = tmp_path / "p.png"
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(path)
    assert "not a square image" in one_line_error(["predict", str(ckpt), str(path)])


def test_an_8x8_model_takes_pictures_resized_to_8x8(digits: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    Image.fromarray(digits[0]).save(path)
    got = load_images(path, input_size=64)
    # 28 -> 8 is no integer factor: BOX still averages the pixels each output covers.
    expected = np.asarray(Image.fromarray(digits[0]).resize((8, 8), Image.Resampling.BOX))
    assert got.shape == (1, 64) and np.array_equal(got, expected.reshape(1, 64))
