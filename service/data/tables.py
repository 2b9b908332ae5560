"""Parquet and Arrow tables as a source: a directory holding ``train`` and ``test`` tables.

Each table has a feature column (a fixed-size list, or a list of the same length in every row,
of numbers) and a label column (integers). The files are read with pyarrow, never unpickled;
the columns come back as NumPy arrays for the checks every source gets (service/data/validate.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dtrain.service.data.manifest import SPLITS
from dtrain.service.errors import DtrainError
from dtrain.workers.shards import one_line

# Feather v2 is the Arrow IPC file format; ``.arrow`` may also be an IPC stream.
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")
ARROW_SUFFIXES: tuple[str, ...] = (".arrow", ".feather", ".ipc")
DEFAULT_LABEL_COLUMN = "label"


@dataclass(frozen=True, kw_only=True)
class Columns:
    """A table's column names; ``feature`` None means the one column besides the label."""

    feature: str | None = None
    label: str = DEFAULT_LABEL_COLUMN


def table_files(directory: Path) -> dict[str, Path]:
    """The ``train`` and ``test`` tables in ``directory``; {} when it holds neither."""
    found: dict[str, Path] = {}
    for split in SPLITS:
        hits = [
            directory / f"{split}{suffix}"
            for suffix in PARQUET_SUFFIXES + ARROW_SUFFIXES
            if (directory / f"{split}{suffix}").is_file()
        ]
        if len(hits) > 1:
            names = " and ".join(p.name for p in hits)
            raise DtrainError(f"{directory}: holds {names}; keep one {split} table")
        if hits:
            found[split] = hits[0]
    if found and len(found) < len(SPLITS):
        have = next(iter(found.values())).name
        missing = next(s for s in SPLITS if s not in found)
        raise DtrainError(
            f"{directory}: holds {have} but no {missing} table "
            f"({missing}.parquet, {missing}.arrow or {missing}.feather)"
        )
    return found


def load_table(
    path: Path, columns: Columns, max_bytes: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """(features (N, width), labels (N,), their names for messages) of one table file."""
    table = _read(path, max_bytes)
    names = table.column_names
    if columns.label not in names:
        raise DtrainError(
            f"{path.name}: no label column {columns.label!r} (columns: {_listed(names)}); "
            "name it with --label-column"
        )
    feature = columns.feature
    if feature is None:
        others = [n for n in names if n != columns.label]
        if len(others) != 1:
            raise DtrainError(
                f"{path.name}: cannot tell the feature column among {_listed(others)}; "
                "name it with --feature-column"
            )
        feature = others[0]
    elif feature not in names:
        raise DtrainError(f"{path.name}: no feature column {feature!r} (columns: {_listed(names)})")
    if feature == columns.label:
        raise DtrainError(f"{path.name}: the feature and label columns are both {feature!r}")
    feature_name, label_name = f"{path.name}[{feature}]", f"{path.name}[{columns.label}]"
    if table.num_rows == 0:
        raise DtrainError(f"{path.name}: holds no rows")
    features = _feature_matrix(table.column(feature), feature_name)
    labels = _label_vector(table.column(columns.label), label_name)
    return features, labels, (feature_name, label_name)


def _read(path: Path, max_bytes: int) -> pa.Table:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DtrainError(f"{path.name}: cannot read ({one_line(e.strerror or e)})") from None
    if size > max_bytes:
        raise DtrainError(f"{path.name}: larger than {max_bytes} bytes, refused")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            return pq.read_table(path)
        # Read into memory, not mapped: the table must outlive the open file.
        with pa.OSFile(str(path), "rb") as source:
            try:
                return pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_stream(source).read_all()
    except (OSError, pa.ArrowException, ValueError) as e:
        kind = "Parquet" if path.suffix.lower() in PARQUET_SUFFIXES else "Arrow IPC"
        raise DtrainError(f"{path.name}: not a readable {kind} file ({one_line(e)})") from None


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:6])
    return (shown + f" and {len(names) - 6} more") if len(names) > 6 else (shown or "none")


def _feature_matrix(column: pa.ChunkedArray, name: str) -> np.ndarray:
    array = column.combine_chunks()
    kind = array.type
    is_list = (
        pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)
    )
    if not is_list or not _is_number(kind.value_type):
        raise DtrainError(
            f"{name}: holds {kind}, expected a list of numbers per row "
            "(fixed-size list, or lists of one length)"
        )
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise DtrainError(f"{name}: row {row} is null")
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    ragged = np.flatnonzero(lengths != lengths[0])
    if ragged.size:
        row = int(ragged[0])
        raise DtrainError(
            f"{name}: ragged rows: row 0 has {int(lengths[0])} values, row {row} has "
            f"{int(lengths[row])}; every row needs the same number"
        )
    values = array.flatten()
    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise DtrainError(f"{name}: row {row // int(lengths[0])} holds a null value")
    flat: np.ndarray = values.to_numpy(zero_copy_only=False)
    return flat.reshape(len(array), int(lengths[0]))


def _label_vector(column: pa.ChunkedArray, name: str) -> np.ndarray:
    array = column.combine_chunks()
    if not pa.types.is_integer(array.type):
        raise DtrainError(f"{name}: holds {array.type}, expected integer labels")
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise DtrainError(f"{name}: row {row} has no label (null)")
    labels: np.ndarray = array.to_numpy(zero_copy_only=False)
    return labels


def _is_number(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))
