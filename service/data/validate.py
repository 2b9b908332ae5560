"""What every source must satisfy before anything is written, whatever its container.

A split is (features (N, ...), labels (N,)): N rows of one fixed shape (an image of any size, or
a vector of any width), uint8 pixels or finite numbers, labels 0..K-1, and both splits alike.
K is stated (``--num-classes``) or the largest label + 1.
"""

from __future__ import annotations

import math

import numpy as np

from dtrain.service.errors import DtrainError
from dtrain.workers.shardformat import MAX_CLASSES, MAX_INPUT_SIZE, ShardFormat

Split = tuple[np.ndarray, np.ndarray]


def validated(
    images: np.ndarray,
    labels: np.ndarray,
    images_name: str,
    labels_name: str,
    num_classes: int | None,
) -> Split:
    """Checks shared by every source; features arrive as (N, ...) of any fixed row shape."""
    if images.ndim < 2:
        raise DtrainError(
            f"{images_name}: shape {list(images.shape)}, expected N rows of features "
            "(N x width, or N images of any shape)"
        )
    width = math.prod(images.shape[1:])
    if width == 0 or width > MAX_INPUT_SIZE:
        raise DtrainError(
            f"{images_name}: rows of {shape_text(images)} hold {width} values; "
            f"expected 1..{MAX_INPUT_SIZE}"
        )
    images = features(images, images_name)
    if labels.ndim != 1:
        raise DtrainError(f"{labels_name}: labels have shape {list(labels.shape)}, expected (N,)")
    if len(images) != len(labels):
        raise DtrainError(
            f"{images_name}: {len(images)} images but {labels_name} has {len(labels)} labels"
        )
    if len(images) == 0:
        raise DtrainError(f"{images_name}: holds no images")
    if labels.dtype.kind not in "iu":
        raise DtrainError(f"{labels_name}: dtype {labels.dtype}, expected integer labels")
    high = num_classes if num_classes is not None else MAX_CLASSES
    bad = np.flatnonzero((labels < 0) | (labels >= high))
    if bad.size:
        i = int(bad[0])
        value = int(labels[i])
        if num_classes is not None:
            why = f"is out of range 0..{num_classes - 1} for {num_classes} classes"
        elif value < 0:
            why = "is negative; labels must be 0..K-1"
        else:
            why = f"is beyond the {MAX_CLASSES} classes supported"
        raise DtrainError(f"{labels_name}: label {value} at index {i} {why}")
    return images, labels.astype(np.int64, copy=False)


def features(images: np.ndarray, name: str) -> np.ndarray:
    """uint8 stays (pixels); other numbers become float32, used as they are, and must be finite."""
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "iuf":
        raise DtrainError(
            f"{name}: dtype {images.dtype}, expected numbers (uint8 pixels 0..255, or any "
            "integer or float features)"
        )
    # Past float32's range a value becomes inf: caught below with the NaNs it resembles.
    with np.errstate(over="ignore"):
        features = np.ascontiguousarray(images, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(features.reshape(-1)))
    if bad.size:
        row = int(bad[0]) // math.prod(images.shape[1:])
        raise DtrainError(
            f"{name}: row {row} holds NaN or infinite values (or values beyond float32)"
        )
    return features


def consistent(raw: dict[str, Split], num_classes: int | None) -> dict[str, Split]:
    """Both splits alike (row shape, feature type), and K classes known: labels cast to fit."""
    raw = _same_image_shape(raw)
    (train_x, _), (test_x, _) = raw["train"], raw["test"]
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DtrainError(
            f"train rows are {shape_text(train_x)} but test rows are {shape_text(test_x)}; "
            "both splits need the same size"
        )
    if train_x.dtype != test_x.dtype:
        raise DtrainError(
            f"train features are {train_x.dtype} but test features are {test_x.dtype}; "
            "give both splits the same type (uint8 pixels, or numbers)"
        )
    k = num_classes if num_classes is not None else infer_num_classes(raw)
    if k < 2:
        raise DtrainError("every label is 0: a classifier needs at least 2 classes")
    if k > MAX_CLASSES:
        raise DtrainError(f"labels go up to {k - 1}: at most {MAX_CLASSES} classes are supported")
    dtype = ShardFormat(input_size=1, num_classes=k).label_dtype
    return {split: (x, y.astype(dtype, copy=False)) for split, (x, y) in raw.items()}


def _same_image_shape(raw: dict[str, Split]) -> dict[str, Split]:
    """A split of flat rows takes the other split's image shape when the widths agree, so a
    keras-style (N, 784) beside (N, 28, 28) is one dataset of 28x28 images, as before."""
    shapes = [x.shape[1:] for x, _ in raw.values()]
    images = [s for s in shapes if len(s) >= 2]
    if not images or len(set(shapes)) == 1 or len(set(images)) != 1:
        return raw
    shape = images[0]
    width = math.prod(shape)
    return {
        split: (x.reshape(len(x), *shape) if x.ndim == 2 and x.shape[1] == width else x, y)
        for split, (x, y) in raw.items()
    }


def infer_num_classes(data: dict[str, Split]) -> int:
    """K when none is stated: the largest label of either split + 1."""
    return max(int(labels.max()) for _, labels in data.values()) + 1


def source_format(
    data: dict[str, Split], num_classes: int | None = None
) -> tuple[ShardFormat, tuple[int, ...] | None]:
    """The shards' format for loaded data, and its image shape (None for flat feature rows)."""
    features = data["train"][0]
    row_shape = tuple(int(d) for d in features.shape[1:])
    fmt = ShardFormat(
        input_size=math.prod(row_shape),
        num_classes=num_classes if num_classes is not None else infer_num_classes(data),
        feature_type=str(features.dtype),
    )
    return fmt, (row_shape if len(row_shape) >= 2 else None)


def shape_text(features: np.ndarray) -> str:
    return "x".join(str(d) for d in features.shape[1:])
