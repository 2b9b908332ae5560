"""The benchmark's entry point for CI: ``python benchmarks/run.py [--quick] [options]``.

The same command as ``dtrain bench`` (``make bench``); ``--quick`` is the smoke run CI affords.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without the editable install: the repository root holds the packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.bench_cmd import bench

if __name__ == "__main__":
    bench.main(args=sys.argv[1:], prog_name="benchmarks/run.py")
