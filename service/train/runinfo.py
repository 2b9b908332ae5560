"""The run a checkpoint came from, so evaluate and predict score it on that run's own data.

A run directory holds ``config.json`` (the whole TrainConfig, data dir and model included) next
to ``checkpoint.npz`` and above ``checkpoints/step-*.npz``. Without it the only honest choices
are an explicit ``--data-dir`` or the default dataset, and the user is told which one it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtrain.service.data import dataset
from dtrain.service.errors import DtrainError
from dtrain.service.train.config import TrainConfig
from dtrain.workers.model import ModelSpec
from dtrain.workers.shards import is_uri

CONFIG_NAME = "config.json"


@dataclass(frozen=True, kw_only=True)
class ScoringData:
    """Where a checkpoint's test split is read from, and why there."""

    data_dir: Path | str
    manifest: dict[str, Any]
    # For the user: "--data-dir", "the run's config.json (runs/x/config.json)", "the default".
    origin: str


def run_config_path(checkpoint_path: Path) -> Path | None:
    """``config.json`` of the run holding ``checkpoint_path``, if there is one."""
    parent = Path(checkpoint_path).parent
    # R/checkpoint.npz, or R/checkpoints/step-N.npz.
    for run_dir in (parent, parent.parent) if parent.name == "checkpoints" else (parent,):
        if (run_dir / CONFIG_NAME).is_file():
            return run_dir / CONFIG_NAME
    return None


def config_record(config: TrainConfig) -> dict[str, Any]:
    """What a run's ``config.json`` holds: the config, its local data dir made absolute.

    ``evaluate``, ``predict`` and ``--resume`` read the data dir back from whatever directory
    they run in; a relative ``--data-dir data/digits`` meant the one ``train`` ran in, and
    recorded as given it named nothing (or another dataset) from anywhere else.
    """
    record = config.to_dict()
    if not is_uri(config.data_dir):
        record["data_dir"] = str(Path(config.data_dir).expanduser().absolute())
    return record


def read_run_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DtrainError(f"{path}: unreadable run config ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("data_dir"), str):
        raise DtrainError(f"{path}: not a dtrain run config (no data_dir)")
    return config


def check_model(spec: ModelSpec, config: dict[str, Any], path: Path) -> None:
    """A checkpoint whose layers differ from its run's is not that run's: refuse to guess."""
    model = config.get("model") or {}
    input_size = model.get("input_size", spec.input_size)
    if input_size != spec.input_size:
        raise DtrainError(
            f"the checkpoint takes {spec.input_size} inputs but its run ({path}) was trained "
            f"on {input_size}: the checkpoint does not belong to that run"
        )


def scoring_data(checkpoint_path: Path, spec: ModelSpec, data_dir: Path | None) -> ScoringData:
    """The test split to score the checkpoint on: ``--data-dir``, else its run's, else the
    default; the data's input size must match the checkpoint's (refused in one line).
    """
    config_path = run_config_path(checkpoint_path)
    if data_dir is not None:
        location: Path | str = data_dir
        origin = "--data-dir"
    elif config_path is not None:
        config = read_run_config(config_path)
        check_model(spec, config, config_path)
        text = config["data_dir"]
        location = text if is_uri(text) else Path(text).expanduser()
        origin = f"the run's {config_path}"
    else:
        location = dataset.default_data_dir()
        origin = "the default: no config.json beside the checkpoint"
    manifest = _manifest(location, origin)
    check_input_size(spec, _input_size(manifest), location, origin)
    return ScoringData(data_dir=location, manifest=manifest, origin=origin)


def _manifest(location: Path | str, origin: str) -> dict[str, Any]:
    """The manifest, with the test shards' checksums verified as ``train`` verifies them."""
    from dtrain.service.data import transport

    if is_uri(location):
        return transport.load_manifest(location)
    assert isinstance(location, Path)
    # Only the default directory is filled with the embedded MNIST: a data dir the user named,
    # or a run's own that has gone missing, must not quietly become MNIST.
    try:
        manifest = dataset.ensure_prepared(location, create=location == dataset.default_data_dir())
    except DtrainError as e:
        if origin == "--data-dir":
            raise
        raise DtrainError(f"{e} (the data dir of {origin}; --data-dir names another)") from None
    dataset.verify(location, manifest, splits=("test",))
    return manifest


def _input_size(manifest: dict[str, Any]) -> int | None:
    """The values per sample the manifest records, if it records them."""
    size = manifest.get("input_size")
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def check_input_size(
    spec: ModelSpec, got: int | None, location: Path | str = "", origin: str = ""
) -> None:
    """Refuse data whose samples do not have the checkpoint's input size (``None``: unknown
    until the rows are read, then checked again with the rows' width).
    """
    if got is None or got == spec.input_size:
        return
    where = f" in {location} (from {origin})" if location else ""
    raise DtrainError(
        f"the checkpoint takes {spec.input_size} inputs per sample, the data{where} has {got}: "
        "give the --data-dir it was trained on"
    )
