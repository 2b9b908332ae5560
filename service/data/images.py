"""Images for ``dtrain predict``: .npy, .npz or IDX (optionally gzipped), never unpickled."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from dtrain.service.data import dataset
from dtrain.service.errors import DtrainError

IMAGE_PIXELS = 28 * 28


def load_images(path: Path) -> np.ndarray:
    """Images as uint8 (N, 784); a single 28x28 image becomes N = 1."""
    if not path.is_file():
        raise DtrainError(f"{path}: file does not exist")
    if path.suffix == ".npy" or zipfile.is_zipfile(path):
        images = _load_numpy(path)
    else:
        data = dataset._read_maybe_gzip(path)
        images = dataset._parse_idx(data, path.name, dataset.IMAGES_MAGIC)
    if images.ndim == 2 and images.shape == (28, 28):
        images = images[None]
    images = images.reshape(images.shape[0], -1) if images.ndim >= 2 else images
    if images.ndim != 2 or images.shape[1] != IMAGE_PIXELS:
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


def _load_numpy(path: Path) -> np.ndarray:
    try:
        loaded: np.ndarray | np.lib.npyio.NpzFile = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DtrainError(f"{path}: holds pickled objects, refused") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DtrainError(f"{path}: not a readable NumPy file ({e})") from e
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = [k for k in ("x", "images", "x_test") if k in loaded.files] or loaded.files
            if not keys:
                raise DtrainError(f"{path}: the .npz file holds no arrays")
            try:
                return loaded[keys[0]]
            except ValueError as e:
                raise DtrainError(f"{path}: holds pickled objects, refused") from e
    return loaded
