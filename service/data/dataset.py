"""The dataset's public names in one import, for callers that want the whole of it.

The work lives in modules of one idea each: ``sources`` (reading and validating MNIST from the
embedded copy, IDX files, an ``.npz`` or a URL), ``prepare`` (writing the Arrow shards and the
manifest atomically; ``ensure_prepared``), ``outdir`` (what a prepare may replace), and
``manifest`` (reading it back, verifying shards, describing it).
"""

from __future__ import annotations

from dtrain.service.data.manifest import (
    FORMAT,
    MANIFEST_NAME,
    SPLITS,
    VERSION,
    describe,
    read_manifest,
    verify,
)
from dtrain.service.data.prepare import default_data_dir, ensure_prepared, prepare
from dtrain.service.data.sources import EMBEDDED_DIR, load_source
from dtrain.workers.shards import SCHEMA

__all__ = [
    "EMBEDDED_DIR",
    "FORMAT",
    "MANIFEST_NAME",
    "SCHEMA",
    "SPLITS",
    "VERSION",
    "default_data_dir",
    "describe",
    "ensure_prepared",
    "load_source",
    "prepare",
    "read_manifest",
    "verify",
]
