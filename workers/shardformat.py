"""The on-disk contract of a prepared dataset's shards: what one row holds.

A shard is one Arrow IPC record batch of two columns: ``image``, a fixed-size list of
``input_size`` features (uint8 pixels, or float32 values used as they are), and ``label``, an
integer 0..K-1. The manifest records the numbers (``input_size``, ``feature_type``,
``num_classes``); a manifest written before it did is MNIST's (784 uint8 pixels, 10 classes).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa


class ShardError(ValueError):
    """A prepared shard or its manifest entry is missing, malformed or inconsistent."""


def is_count(value: object) -> bool:
    # bool is an int subclass, and JSON true must not pass for 1.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


IMAGE_SHAPE: tuple[int, int] = (28, 28)
IMAGE_SIZE: int = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
NUM_CLASSES: int = 10

# uint8 features are pixels, scaled into [0, 1] by ``to_float``; float32 ones are used as given.
FEATURE_TYPES: tuple[str, ...] = ("uint8", "float32")
# Labels are stored as uint8 up to 256 classes (MNIST's shards stay byte for byte as they were),
# as uint16 beyond; more classes than that is no dataset this service is for.
MAX_CLASSES = 1 << 16
# A row's width bounds one sample's memory; 2**24 values is a 4096x4096 image.
MAX_INPUT_SIZE = 1 << 24


@dataclass(frozen=True, slots=True)
class ShardFormat:
    """What every shard of a dataset holds: rows of ``input_size`` features and labels 0..K-1."""

    input_size: int = IMAGE_SIZE
    num_classes: int = NUM_CLASSES
    feature_type: str = "uint8"

    @property
    def schema(self) -> pa.Schema:
        return _schema(self.input_size, self.num_classes, self.feature_type)

    @property
    def label_dtype(self) -> np.dtype[Any]:
        return np.dtype(np.uint8 if self.num_classes <= 256 else np.uint16)


@functools.cache
def _schema(input_size: int, num_classes: int, feature_type: str) -> pa.Schema:
    label = pa.uint8() if num_classes <= 256 else pa.uint16()
    return pa.schema(
        [
            pa.field(
                "image", pa.list_(pa.from_numpy_dtype(np.dtype(feature_type)), input_size), False
            ),
            pa.field("label", label, nullable=False),
        ]
    )


MNIST_FORMAT = ShardFormat()
SCHEMA: pa.Schema = MNIST_FORMAT.schema


def shard_format(manifest: dict[str, Any]) -> ShardFormat:
    """The manifest's ``ShardFormat``; a manifest from before it recorded one is MNIST's."""
    try:
        fields = {
            "input_size": manifest.get("input_size", IMAGE_SIZE),
            "num_classes": manifest.get("num_classes", NUM_CLASSES),
            "feature_type": manifest.get("feature_type", "uint8"),
        }
    except AttributeError:
        raise ShardError("manifest is not a JSON object") from None
    for name, high in (("input_size", MAX_INPUT_SIZE), ("num_classes", MAX_CLASSES)):
        value = fields[name]
        low = 2 if name == "num_classes" else 1
        if not is_count(value) or not low <= value <= high:
            raise ShardError(f"manifest {name} {value!r} is not an integer in {low}..{high}")
    if fields["feature_type"] not in FEATURE_TYPES:
        raise ShardError(
            f"manifest feature_type {fields['feature_type']!r} is not one of "
            f"{', '.join(FEATURE_TYPES)}"
        )
    return ShardFormat(**fields)
