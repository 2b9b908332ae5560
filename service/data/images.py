"""Images for ``dtrain predict``: PNG or JPEG pictures, or .npy, .npz or IDX (optionally gzipped)
arrays, never unpickled."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from dtrain.service.data import npzsafe, pictures
from dtrain.service.data.sources import IMAGES_MAGIC, parse_idx, read_maybe_gzip
from dtrain.service.errors import DtrainError

IMAGE_PIXELS = 28 * 28


# Images a person hands to predict are at most this big (a million MNIST images is 784 MB).
MAX_INPUT_BYTES = 1 << 30


def load_images(
    path: Path, input_size: int = IMAGE_PIXELS, invert: bool | None = None
) -> np.ndarray:
    """Images as uint8 (N, input_size): a PNG or JPEG picture, or arrays of images. A single
    image (side x side, or a flat row of input_size values) becomes N = 1.
    """
    if path.is_dir():
        raise DtrainError(
            f"{path}: is a directory, expected an image file (PNG, JPEG, .npy, .npz or IDX)"
        )
    if not path.is_file():
        # A FIFO or a device exists but is no image file: "does not exist" would puzzle.
        what = "not a regular file" if path.exists() else "file does not exist"
        raise DtrainError(f"{path}: {what}")
    if pictures.picture_format(path) is not None:
        return pictures.load_picture(path, input_size, invert)
    if path.suffix == ".npy" or npzsafe.is_npy(path):
        images = _load_numpy(path, npy=True)
    elif zipfile.is_zipfile(path):
        images = _load_numpy(path, npy=False)
    else:
        images = parse_idx(read_maybe_gzip(path), path.name, IMAGES_MAGIC)
    # Strings, dates, complex numbers, records or booleans are no pixels: say so, by dtype.
    if images.dtype.kind not in "uif":
        raise DtrainError(
            f"{path}: images have dtype {images.dtype}, expected uint8 pixels "
            "(or numbers in 0..255 or 0..1)"
        )
    side = math.isqrt(input_size)
    shape = f"{side} x {side}" if side * side == input_size else f"{input_size}"
    if images.shape == (input_size,) or (side * side == input_size and images.shape == (side,) * 2):
        images = images[None]
    if images.ndim < 2 or images.size == 0:
        raise DtrainError(
            f"{path}: holds no images (shape {images.shape}); expected N x {shape} or "
            f"N x {input_size}"
        )
    images = images.reshape(images.shape[0], -1)
    if images.shape[1] != input_size:
        square = (
            shape.replace(" ", "") + f" (or {input_size} values)"
            if "x" in shape
            else (f"{input_size} values")
        )
        raise DtrainError(f"{path}: images must be {square}, got {images.shape}")
    if images.dtype != np.uint8:
        if not np.isfinite(images).all():
            raise DtrainError(f"{path}: images contain NaN or infinite values")
        # Floats in [0, 1] (already scaled) are accepted as well as raw 0..255 pixels.
        scale = 255.0 if images.max(initial=0) <= 1.0 else 1.0
        if images.min(initial=0) < 0 or images.max(initial=0) * scale > 255:
            raise DtrainError(f"{path}: pixel values must lie in 0..255 (or 0..1)")
        images = np.rint(images * scale).astype(np.uint8)
    return images


def _load_numpy(path: Path, *, npy: bool) -> np.ndarray:
    try:
        if npy:
            return npzsafe.read_npy(path, MAX_INPUT_BYTES)
        with npzsafe.open_npz(path, MAX_INPUT_BYTES) as npz:
            keys = [k for k in ("x", "images", "x_test") if k in npz.files] or npz.files
            if not keys:
                raise DtrainError(f"{path}: the .npz file holds no arrays")
            return npz.read(keys[0])
    except npzsafe.NpzProblem as e:
        if e.pickled:
            raise DtrainError(f"{path}: holds pickled objects, refused ({e})") from None
        raise DtrainError(f"{path}: not a readable NumPy file ({e})") from None
