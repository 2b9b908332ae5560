"""The working directory a submitted job gets: dtrain's packages and the embedded MNIST."""

from __future__ import annotations

import shutil
from pathlib import Path

# What a submitted job needs: the three packages and the embedded MNIST. Nothing else of the
# checkout (.venv, .git, runs/, tests/, docs/, caches) is uploaded.
PACKAGES = ("dtrain.service", "dtrain.workers", "dtrain.cli")


def stage_working_dir(dest: Path) -> Path:
    """Copy what a job needs into ``dest``: the packages and the embedded MNIST.

    Copied from wherever they are imported from, so a pip-installed dtrain submits the same
    way as a checkout, and nothing else of the checkout travels (Ray caps uploads at 500 MiB).
    """
    import importlib

    from dtrain.service.data.sources import EMBEDDED_DIR

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGES:
        src = Path(importlib.import_module(name).__file__ or "").parent
        # dtrain.service -> dest/dtrain/service: the entrypoint imports them from the job's cwd.
        shutil.copytree(src, dest.joinpath(*name.split(".")), ignore=ignore)
    if EMBEDDED_DIR.is_dir():
        # Where EMBEDDED_DIR resolves from the staged dtrain/service/data/sources.py.
        shutil.copytree(EMBEDDED_DIR, dest / "dtrain" / "data" / "mnist", ignore=ignore)
    return dest
