"""The benchmark's entry point for CI: ``python benchmarks/run.py [--quick] [options]``.

The same command as ``dtrain bench`` (``make bench``); ``--quick`` is the smoke run CI affords.
"""

from __future__ import annotations

import sys

from dtrain.cli.bench_cmd import bench

if __name__ == "__main__":
    bench.main(args=sys.argv[1:], prog_name="benchmarks/run.py")
