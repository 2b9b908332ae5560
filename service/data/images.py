"""Images for ``dtrain predict``: .npy, .npz or IDX (optionally gzipped), never unpickled."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from dtrain.service.data import npzsafe
from dtrain.service.data.sources import IMAGES_MAGIC, parse_idx, read_maybe_gzip
from dtrain.service.errors import DtrainError

IMAGE_PIXELS = 28 * 28


# Images a person hands to predict are at most this big (a million MNIST images is 784 MB).
MAX_INPUT_BYTES = 1 << 30


def load_images(path: Path) -> np.ndarray:
    """Images as uint8 (N, 784); a single 28x28 image becomes N = 1."""
    if path.is_dir():
        raise DtrainError(f"{path}: is a directory, expected an image file (.npy, .npz or IDX)")
    if not path.is_file():
        raise DtrainError(f"{path}: file does not exist")
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
    if images.ndim == 2 and images.shape == (28, 28):
        images = images[None]
    if images.ndim < 2 or images.size == 0:
        raise DtrainError(
            f"{path}: holds no images (shape {images.shape}); expected N x 28 x 28 or N x 784"
        )
    images = images.reshape(images.shape[0], -1)
    if images.shape[1] != IMAGE_PIXELS:
        raise DtrainError(f"{path}: images must be 28x28 (or 784 values), got {images.shape}")
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
